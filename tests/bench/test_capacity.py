"""Smoke test of bench/capacity.py: a whole lab with 2 then 3 full-media calls for 2 s each,
run as `make bench` runs it; loss is counted after the drain, so a lightly loaded lab loses
nothing. And its set-up check, per direction, against a lab with one direction broken."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pylibsrtp
import pytest

from certs.pki import LabPKI
from lab.lync.client_media import MediaStream
from lab.topology import Lab
from media.ms_dialect import Crypto
from tests.media.peers import until

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


def _capacity() -> ModuleType:
    """bench/capacity.py as a module (bench/ is a directory of scripts, not a package)."""
    name = "bench_capacity"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "capacity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


async def test_setup_fails_naming_a_dead_direction_and_its_receivers_reason(
        lab_pki: LabPKI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: the set-up check looks at each way of each stream, not at the call's sum. A
    Lync client given a wrong key for the gateway's video (the fault this test injects)
    refuses that one direction while the three others flow: the set-up fails and names the
    call, the stream, the direction and the receiver's reason."""
    capacity = _capacity()
    real = MediaStream.set_keys

    def wrong_video_key(self: MediaStream, send: Crypto, receive: Crypto) -> None:
        if self.kind == "video":
            receive = replace(receive, key_salt=bytes(len(receive.key_salt)))
        real(self, send, receive)

    monkeypatch.setattr(MediaStream, "set_keys", wrong_video_key)
    async with Lab(lab_pki, any_port=True, management=False, broker=False) as lab:
        bench = capacity.Bench(lab)
        try:
            with pytest.raises(capacity.DeadDirection) as failed:
                await bench.add_calls(1, timeout=5.0, min_packets=10)
            dead = failed.value.directions
            assert [(d.kind, d.way) for d in dead] == [("video", "endpoint -> Lync")], dead
            assert dead[0].accepted == 0 and dead[0].sent >= 10, dead
            assert dead[0].refused[0][0] == "SRTP on component 1: authentication failure"
            assert dead[0].refused[0][1] >= 10, dead
            message = str(failed.value)
            assert dead[0].call_id in message and "video endpoint -> Lync" in message
            assert "authentication failure" in message, message
        finally:
            for client in lab.clients.values():
                for call in list(client.calls.values()):
                    await call.hangup()


async def test_a_direction_that_dies_after_set_up_fails_the_window(lab_pki: LabPKI) -> None:
    """A direction that delivered at set-up and then accepts nothing while its sender goes
    on (here: the Lync client's video receive context swapped for one with another key) is
    named by ``Bench.dead``, with its receiver's reason; the three other ways are not."""
    capacity = _capacity()
    async with Lab(lab_pki, any_port=True, management=False, broker=False) as lab:
        bench = capacity.Bench(lab)
        try:
            await bench.add_calls(1, timeout=10.0)
            (near, _), = bench.pairs
            video = next(s for s in near.streams if s.kind == "video")
            before = bench.accepted()
            video._rx = pylibsrtp.Session(pylibsrtp.Policy(
                key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
            refused = video.counters.bad
            await until(lambda: video.counters.bad >= refused + 10, "10 refused", 10.0)
            dead = bench.dead(before)
            assert len(dead) == 1, dead
            assert dead[0].startswith(f"call {near.call_id} video endpoint -> Lync: "), dead
            assert "0 accepted" in dead[0] and "authentication failure" in dead[0], dead
        finally:
            await bench.hangup()
