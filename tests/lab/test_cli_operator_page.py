"""``gateway lab --keep-running`` prints the operator's page address, and the page is there."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest


@pytest.mark.slow
def test_keep_running_prints_the_operator_page(tmp_path) -> None:  # type: ignore[no-untyped-def]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "lab", "--any-port", "--keep-running", "--calls", "1",
         "--certs", str(tmp_path / "pki")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:  # the lab ends the stream only by exiting
            found = re.search(r"operator's page (http://\S+/) ", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "no operator's page line before the lab exited"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert "Gateway operator page" in response.read().decode()
        # The demo call has hung up; the gateway may still be clearing it (active until
        # its BYE is answered and its ports are back): wait until it is a recent call.
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(url + "api/dashboard", timeout=30) as response:
                recent = json.loads(response.read())["recent"]
            if recent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    # The demo call's result table (stdout) and the page agree.
    assert [call["result"] for call in recent] == ["completed"], out
    assert process.returncode == 0, out
