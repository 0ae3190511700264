"""Smoke test of bench/media_relay.py: 2 calls for 2 s through the gateway's media path (ICE
RTP + RTCP components, SRTP toward the Lync peers), run as `make bench` runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_media_relay_bench_runs_without_loss() -> None:
    run = subprocess.run([sys.executable, "bench/media_relay.py", "--calls", "2", "--seconds",
                          "2"], cwd=ROOT, capture_output=True, text=True, timeout=170)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert re.search(r"relay path +(native|python), fast path on 8 of 8 components", out), out
    assert "Lync peers' ICE components 2" in out
    ways = re.findall(r"RTP sent (\d+), received (\d+), loss ([\d.]+)%, latency p50 ([\d,]+) us, "
                      r"p99 ([\d,]+) us; RTCP sent (\d+), received (\d+)", out)
    assert len(ways) == 2, out
    for sent, got, loss, _, _, rtcp_sent, rtcp_got in ways:
        assert int(sent) == int(got) > 0 and float(loss) == 0.0
        assert int(rtcp_sent) == int(rtcp_got) > 0
    for figure in ("gateway CPU", "load generator CPU", "gateway memory", "load average"):
        assert re.search(rf"^{figure} +\S", out, re.M), figure
