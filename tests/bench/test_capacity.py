"""Smoke test of bench/capacity.py: a whole lab with 2 then 3 full-media calls for 2 s each,
run as `make bench` runs it; loss is counted after the drain, so a lightly loaded lab loses
nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ROW = re.compile(r"^ +(\d+) +(\d+) +(\d+) +([\d.]+) +[\d.]+ +[\d.]+ +[\d.]+ +\S+ +(\d+)/(\d+)"
                 r" +(\d+) +[\d.]+ +(\d+) +(>?)([\d.]+) +([\d.]+) +(\d+) +\d+  (.+)$", re.M)


@pytest.mark.timeout(240)
def test_capacity_bench_counts_every_packet_delivered() -> None:
    run = subprocess.run([sys.executable, "bench/capacity.py", "--steps", "2,3", "--window",
                          "2", "--drain", "5"], cwd=ROOT, capture_output=True, text=True,
                         timeout=230)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert re.search(r"^relay: (native|python) .*, loop uvloop$", out, re.M), out
    assert "late drain s pace % rejected udp err  result" in out, out
    rows = ROW.findall(out)
    assert [int(row[0]) for row in rows] == [2, 3], out
    for (calls, sent, received, loss, _, _, relay, late, bound, drain, pace, rejected,
         result) in rows:
        # audio 50/s + video 30/s each way per call: the senders ran the whole window
        assert int(sent) >= int(calls) * 160 * 2 * 0.8, out
        assert 80.0 <= float(pace) <= 101.0, out
        assert int(received) == int(sent) and float(loss) == 0.0, out
        assert int(relay) == 0 and int(rejected) == 0 and int(late) <= int(received), out
        assert bound == "" and 0.0 <= float(drain) <= 5.0, out
        assert result == "ok", out
    assert "maximum: 3 concurrent full-media calls" in out, out
