"""Takes the README's screenshots of the operator's page: a live lab (in this process, on
free ports), one completed call, one refused call and one active call, photographed by
headless chromium. ``python docs/operator_screenshots.py`` writes ``docs/operator-page.png``
and ``docs/operator-call-page.png``."""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from certs.pki import init_pki
from gateway.status import LegSide
from lab.topology import Lab

DOCS = Path(__file__).resolve().parent


def browser(profile: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 "--window-size=1500,1250", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def shoot(driver: webdriver.Chrome, url: str, path: Path, click: str | None = None) -> None:
    driver.get(url)
    time.sleep(2.5)  # a screenshot, not a test: let a couple of live updates arrive
    if click:
        driver.find_element(By.CSS_SELECTOR, click).click()
        time.sleep(0.5)
    driver.save_screenshot(str(path))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = (await asyncio.to_thread(init_pki, Path(tmp) / "pki"))[0]
        async with Lab(pki, any_port=True, management=True) as lab:
            assert lab.gateway is not None and lab.gateway.management is not None
            url = lab.gateway.management.url
            alice = await lab.add_client("alice")
            done = await alice.call("3001@video.example.com")
            await done.wait_connected()
            await done.wait_media(both_ways=True)
            await done.hangup()
            video = next(a for a in lab.gateway.stacks[LegSide.VIDEO].listeners
                         if a.transport.value.lower() == "udp")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.sendto(
                    b"INVITE sip:9999@video.example.com SIP/2.0\r\n"
                    b"Via: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK-shot\r\n"
                    b"Max-Forwards: 70\r\nFrom: \"Mallory\" <sip:mallory@video.example.com>;"
                    b"tag=1\r\nTo: <sip:9999@video.example.com>\r\nCall-ID: shot@127.0.0.1\r\n"
                    b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", (video.host, video.port))
                sock.settimeout(5)
                await asyncio.to_thread(sock.recv, 65535)
            live = await alice.call("3001@video.example.com")
            await live.wait_connected()
            await live.wait_media(both_ways=True)
            driver = await asyncio.to_thread(browser, str(Path(tmp) / "profile"))
            try:
                await asyncio.to_thread(shoot, driver, url, DOCS / "operator-page.png")
                await asyncio.to_thread(
                    shoot, driver, f"{url}call/{done.call_id}", DOCS / "operator-call-page.png",
                    '#ladder g.arrow[data-side="video"][data-label="INVITE"] text.label')
            finally:
                await asyncio.to_thread(driver.quit)
            await live.hangup()
    sys.stdout.write(f"wrote {DOCS / 'operator-page.png'} and operator-call-page.png\n")


if __name__ == "__main__":
    asyncio.run(main())
