"""The operator's page in a real headless browser (Debian's chromium + chromedriver via
selenium), against a live lab call; the call's pcap decoded by tshark.

Selenium is synchronous and the lab runs on this test's event loop, so every browser call
goes through ``asyncio.to_thread`` (a blocking call on the loop would starve the server the
browser is talking to).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab.topology import Lab

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30.0
"""Seconds the browser gets for each thing to show (the 2 shared cores are slow)."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="chromium and chromium-driver are not installed "
                              "(scripts/install-peers.sh)"),
]

T = TypeVar("T")


def chromium_options(profile: Path, downloads: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--window-size=1600,1200", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
    })
    return options


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def browser(tmp_path: Path, downloads: Path) -> Iterator[WebDriver]:
    # The driver named explicitly: selenium-manager must not try to download one.
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service,
                              options=chromium_options(tmp_path / "profile", downloads))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T],
                   timeout: float = WAIT) -> T:
    # The dashboard re-renders its tables on every event: an element found a moment ago
    # may be gone; try again rather than fail.
    wait = WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,))
    return await off_loop(wait.until, condition)


def text_of(driver: WebDriver, selector: str) -> str | None:
    """The rendered text of the first match, read in one step (no stale element)."""
    text: str | None = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
        selector)
    return text


def click(driver: WebDriver, selector: str) -> bool:
    driver.find_element(By.CSS_SELECTOR, selector).click()
    return True


def base_url(lab: Lab) -> str:
    assert lab.gateway is not None and lab.gateway.management is not None
    return lab.gateway.management.url.rstrip("/")


def packets_shown(driver: WebDriver, call_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    cells = driver.execute_script(
        "const row = document.querySelector(`#active-calls tr[data-call-id=\"${arguments[0]}\"]`);"
        "return row ? Array.from(row.querySelectorAll('.pkts')).map("
        "c => [c.dataset.side, c.dataset.kind, +c.dataset.in, +c.dataset.out]) : [];", call_id)
    return {(side, kind): (packets_in, packets_out)
            for side, kind, packets_in, packets_out in cells}


def arrows(driver: WebDriver) -> list[dict[str, str]]:
    return [{"label": a.get_attribute("data-label") or "", "side": a.get_attribute("data-side")
             or "", "sent": a.get_attribute("data-sent") or "", "seq": a.get_attribute("data-seq")
             or ""} for a in driver.find_elements(By.CSS_SELECTOR, "#ladder g.arrow")]


def in_order(labels: list[str], expected: list[str]) -> bool:
    """``expected`` is a subsequence of ``labels`` (other messages may come between)."""
    it = iter(labels)
    return all(any(label == want for label in it) for want in expected)


LADDER = ["INVITE", "180 Ringing", "200 OK", "ACK", "BYE"]


async def test_dashboard_call_page_and_pcap_of_a_live_call(
        lab: Lab, lync_client: Any, sip_endpoint: Any, browser: WebDriver,
        downloads: Path) -> None:
    base = base_url(lab)
    alice = await lync_client("alice")
    call = await alice.call("3001@video.example.com")
    await call.wait_connected()
    await call.wait_media(both_ways=True)

    # The dashboard lists the call; its counters move without a reload (server-sent events).
    await off_loop(browser.get, base + "/")
    selector = f'#active-calls tr[data-call-id="{call.call_id}"]'
    await wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, selector))
    first = await off_loop(packets_shown, browser, call.call_id)
    assert first, "no packet counters shown for the call"
    page_id = await off_loop(browser.execute_script, "return window.performance.timeOrigin")
    await wait_for(browser, lambda d: any(
        v[0] > first[k][0] for k, v in packets_shown(d, call.call_id).items() if k in first))
    assert await off_loop(browser.execute_script,
                          "return window.performance.timeOrigin") == page_id  # no reload
    identity = await off_loop(text_of, browser, "#identity") or ""
    assert lab.gateway is not None
    assert lab.gateway.config.system.host_name in identity
    zones = await off_loop(text_of, browser, "#zones") or ""
    assert "CUCM" in zones or "Active" in zones

    await call.hold()
    await call.resume()
    await call.hangup()
    await wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, selector))
    recent = f'#recent-calls tr[data-call-id="{call.call_id}"]'
    await wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, recent))
    row_text = await off_loop(text_of, browser, recent) or ""
    assert "completed" in row_text and "BYE from the microsoft side" in row_text

    # The call page: both legs' ladders in order.
    await wait_for(browser, lambda d: click(d, recent + " a"))
    await wait_for(browser, lambda d: len(arrows(d)) >= 10)
    shown = await off_loop(arrows, browser)
    for side in ("microsoft", "video"):
        labels = [a["label"] for a in shown if a["side"] == side]
        assert in_order(labels, LADDER), (side, labels)
    timeline = await off_loop(text_of, browser, "#timeline") or ""
    assert "first packet from the Microsoft side" in timeline
    assert "first packet from the video side" in timeline
    assert "ICE pair host" in timeline
    hold, resume = timeline.find(": hold"), timeline.find(": resume")
    assert 0 < hold < resume, timeline
    ms_first = next(a for a in shown if a["side"] == "microsoft")
    assert (ms_first["label"], ms_first["sent"]) == ("INVITE", "false")  # alice called in
    video_invite = next(a for a in shown if a["side"] == "video" and a["label"] == "INVITE")
    assert video_invite["sent"] == "true"

    # Clicking the video-side INVITE shows the rewritten SDP beside the Microsoft original.
    target = await off_loop(browser.find_element, By.CSS_SELECTOR,
                            f'#ladder g.arrow[data-seq="{video_invite["seq"]}"] text.label')
    await off_loop(target.click)
    await wait_for(browser, lambda d: d.find_element(By.ID, "sdp").text.strip())
    title = await off_loop(lambda: browser.find_element(By.ID, "sdp-title").text)
    sdp = await off_loop(lambda: browser.find_element(By.ID, "sdp").get_attribute("textContent"))
    before = await off_loop(
        lambda: browser.find_element(By.ID, "sdp-other").get_attribute("textContent"))
    message = await off_loop(
        lambda: browser.find_element(By.ID, "message-text").get_attribute("textContent"))
    assert "after rewriting" in title
    assert message.startswith("INVITE sip:")
    assert sdp and sdp in message  # the SDP part of the whole message shown above it
    assert "m=audio" in sdp and "m=audio" in before
    assert "a=candidate" in before and "a=candidate" not in sdp  # ICE stays on Microsoft's side
    detail = json.loads(await off_loop(_get, f"{base}/api/call/{call.call_id}"))
    sent = next(m for m in detail["messages"] if str(m["seq"]) == video_invite["seq"])
    assert sent["sdp"] is not None and sent["sdp"].replace("\r\n", "\n").strip() == \
        sdp.replace("\r\n", "\n").strip()

    # The pcap downloads through the browser and tshark decodes its SIP and RTP cleanly.
    pcap_link = await off_loop(browser.find_element, By.ID, "pcap")
    await off_loop(pcap_link.click)
    files = await wait_for(browser, lambda d: [p for p in downloads.glob("*.pcap")
                                               if p.stat().st_size > 24])
    check_pcap(files[0], call.call_id)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def tshark(*args: str) -> str:
    # The lab endpoint's video payload is filler bytes after a NAL header, not a real H.264
    # stream: the H.264 payload dissector is off so that "malformed" judges the capture
    # (IP/UDP/SIP/SDP/RTP/RTCP), not the simulator's picture.
    result = subprocess.run(["tshark", "-n", "--enable-heuristic", "rtp_udp",
                             "--enable-heuristic", "rtcp_udp", "--disable-protocol", "h264",
                             *args],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def check_pcap(path: Path, call_id: str) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    malformed = tshark("-r", str(path), "-Y", "_ws.malformed || _ws.expert.severity >= error")
    assert malformed.strip() == "", malformed
    sip = tshark("-r", str(path), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID",
                 "-e", "sip.Method", "-e", "sip.Status-Code").splitlines()
    methods = [line.split("\t") for line in sip]
    assert any(m[0] == call_id and m[1] == "INVITE" for m in methods), sip[:5]
    assert {m[1] for m in methods} >= {"INVITE", "ACK", "BYE"}
    # Only this call's SIP: its two legs' Call-IDs, nothing else (no OPTIONS pings).
    assert len({m[0] for m in methods}) == 2
    rtp = tshark("-r", str(path), "-Y", "rtp", "-T", "fields", "-e", "rtp.ssrc").split()
    assert len(rtp) >= 20, f"only {len(rtp)} RTP packets decoded"


async def test_values_from_sip_are_shown_as_text(lab: Lab, browser: WebDriver) -> None:
    """A From display name with markup in it renders as text (and runs nothing)."""
    assert lab.gateway is not None
    video = next(a for a in lab.gateway.stacks[_video()].listeners
                 if a.transport.value.lower() == "udp")
    evil = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
    invite = (
        f"INVITE sip:9999@video.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK-evil1\r\n"
        f"Max-Forwards: 70\r\n"
        f'From: "{evil}" <sip:mallory@video.example.com>;tag=ev1\r\n'
        f"To: <sip:9999@video.example.com>\r\n"
        f"Call-ID: evil-display-name@127.0.0.1\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:mallory@127.0.0.1:5999>\r\n"
        f"Content-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(invite, (video.host, video.port))
        sock.settimeout(10)
        while True:  # until the final answer (the refusal), past 100 Trying
            answer = await asyncio.to_thread(sock.recv, 65535)
            if not answer.startswith(b"SIP/2.0 1"):
                break
    await off_loop(browser.get, base_url(lab) + "/")
    recent = '#recent-calls tr[data-call-id="evil-display-name@127.0.0.1"]'
    await wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, recent))
    shown = await off_loop(text_of, browser, recent + " td.from") or ""
    assert evil in shown
    assert await off_loop(lambda: browser.title) == "Gateway operator page"
    assert not await off_loop(browser.find_elements, By.CSS_SELECTOR, "#recent-calls img")
    outcome = await off_loop(text_of, browser, recent) or ""
    assert "refused" in outcome
    # The call page too: summary, ladder and the message text.
    await wait_for(browser, lambda d: click(d, recent + " a"))
    await wait_for(browser, lambda d: len(arrows(d)) >= 2)
    summary = await off_loop(text_of, browser, "#summary") or ""
    assert evil in summary and "404 Not Found" in summary
    await wait_for(browser, lambda d: click(d, '#ladder g.arrow[data-label="INVITE"] text.label'))
    text = await off_loop(text_of, browser, "#message-text") or ""
    assert evil in text
    assert await off_loop(lambda: browser.title) == "Call"
    assert not await off_loop(browser.find_elements, By.CSS_SELECTOR, "main img, main script")


def _video() -> Any:
    from gateway.status import LegSide

    return LegSide.VIDEO
