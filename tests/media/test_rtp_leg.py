"""Latching decisions (sans-IO) and the video leg's sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from media.rtp_leg import Latch, LatchMode, LatchSettings, RtpLeg, looks_like_rtp

SDP = ("127.0.0.1", 20000)


STRICT = LatchSettings(LatchMode.STRICT, relatch_after=5.0)
NAT = LatchSettings(LatchMode.NAT, relatch_after=5.0)


def test_strict_latches_to_the_sdp_host_then_keeps_it() -> None:
    latch = Latch(STRICT, SDP)
    assert latch.target == SDP
    assert not latch.accept(("127.0.0.9", 20000), 0.0)  # another host: never
    assert latch.latched is None and latch.target == SDP
    assert latch.accept(("127.0.0.1", 31000), 0.1)  # NAT'd port on the same host
    assert not latch.accept(("127.0.0.1", 31002), 0.2)
    assert latch.target == ("127.0.0.1", 31000) and latch.relatches == 0


def test_strict_the_exact_sdp_address_takes_over_from_another_port_at_once() -> None:
    latch = Latch(STRICT, SDP)
    assert latch.accept(("127.0.0.1", 31000), 0.0)
    assert latch.accept(SDP, 0.1)
    assert latch.target == SDP and latch.relatches == 1
    assert not latch.accept(("127.0.0.1", 31000), 0.2)


def test_strict_without_sdp_accepts_nothing() -> None:
    latch = Latch(STRICT)
    assert not latch.accept(SDP, 0.0) and latch.target is None


def test_nat_latches_to_the_first_source_and_a_stranger_cannot_steal_it() -> None:
    latch = Latch(NAT)  # before the endpoint's SDP is known, too
    endpoint, stranger = ("192.0.2.7", 4000), ("127.0.0.9", 4000)
    assert latch.accept(endpoint, 0.0)
    for t in (0.02, 1.0, 4.9):
        assert latch.accept(endpoint, t)
        assert not latch.accept(stranger, t + 0.01)
    assert latch.target == endpoint and latch.relatches == 0


def test_another_source_takes_over_only_after_the_latched_one_is_silent() -> None:
    latch = Latch(NAT, SDP)
    moved = ("127.0.0.9", 4002)
    assert latch.accept(("127.0.0.9", 4000), 10.0)
    assert not latch.accept(moved, 14.9)  # 4.9 s of silence: not yet
    assert latch.accept(moved, 15.0)
    assert latch.target == moved and latch.relatches == 1
    strict = Latch(STRICT, SDP)
    assert strict.accept(("127.0.0.1", 31000), 0.0)
    assert not strict.accept(("127.0.0.9", 31000), 60.0)  # silence does not open STRICT up


def test_new_sdp_address_starts_over_and_same_address_keeps_latch() -> None:
    latch = Latch(NAT, SDP)
    latch.accept(("127.0.0.9", 4000), 0.0)
    latch.update_sdp(SDP)
    assert latch.latched == ("127.0.0.9", 4000)
    latch.update_sdp(("127.0.0.1", 20002))
    assert latch.latched is None and latch.target == ("127.0.0.1", 20002)


@pytest.mark.parametrize("data, component, ok", [
    (b"\x80\x00" + bytes(10), 1, True),
    (b"\x80\xc8" + bytes(6), 2, True),
    (b"\x80\x00" + bytes(9), 1, False),   # shorter than the RTP header
    (b"\x00\x00" + bytes(10), 1, False),  # version 0: not RTP (e.g. STUN)
    (b"\xc0" + bytes(20), 1, False),        # version 3
    (b"GET / HTTP/1.1\r\n", 1, False),
    (b"", 2, False),
])
def test_garbage_is_not_rtp(data: bytes, component: int, ok: bool) -> None:
    assert looks_like_rtp(data, component) is ok


async def test_leg_binds_even_odd_pair_and_releases_it_on_bind_failure() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    base = port - port % 2
    squat = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        squat.bind(("127.0.0.1", base + 1))
    except OSError:
        pytest.skip("port raced away")
    leg = RtpLeg("127.0.0.1", base)
    with pytest.raises(OSError):
        await leg.open()
    assert not leg.is_open
    squat.close()
    # The RTP port is free again: we can bind it ourselves.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", base))


async def test_leg_forwards_accepted_packets_and_reports_latch() -> None:
    leg = RtpLeg("127.0.0.1", 0)
    leg.ports = (0, 0)
    got: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    latched: list[tuple[int, tuple[str, int]]] = []
    leg.on_media = lambda data, c: got.put_nowait((data, c))
    leg.on_latch = lambda c, src: latched.append((c, src))
    leg.set_remote(("127.0.0.3", 5), ("127.0.0.3", 6))
    leg.on_packet(b"\x80x" + bytes(10), ("127.0.0.3", 5), 1)
    leg.on_packet(b"\x80y" + bytes(10), ("127.0.0.3", 5), 1)
    leg.on_packet(b"junk", ("127.0.0.3", 5), 1)  # garbage from the latched source: dropped
    assert got.qsize() == 2 and latched == [(1, ("127.0.0.3", 5))]
    assert not leg.send(b"x", 2)  # no sockets: nowhere to send
