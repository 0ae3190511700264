"""Latching decisions (sans-IO) and the video leg's sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from media.rtp_leg import Latch, LatchMode, RtpLeg

SDP = ("127.0.0.1", 20000)


def test_latch_sends_to_sdp_address_until_a_packet_arrives() -> None:
    latch = Latch(LatchMode.LATCH, SDP)
    assert latch.target == SDP
    assert latch.accept(("127.0.0.9", 4000))
    assert latch.target == ("127.0.0.9", 4000) and latch.relatches == 0
    assert latch.accept(("127.0.0.9", 4002))  # the endpoint moved: follow it
    assert latch.target == ("127.0.0.9", 4002) and latch.relatches == 1


def test_strict_latch_accepts_only_the_sdp_host_and_then_only_that_source() -> None:
    latch = Latch(LatchMode.STRICT, SDP)
    assert not latch.accept(("127.0.0.9", 20000))
    assert latch.latched is None and latch.target == SDP
    assert latch.accept(("127.0.0.1", 31000))  # NAT'd port on the same host
    assert not latch.accept(("127.0.0.1", 31002))
    assert latch.target == ("127.0.0.1", 31000)


def test_strict_latch_without_sdp_accepts_nothing() -> None:
    latch = Latch(LatchMode.STRICT)
    assert not latch.accept(SDP) and latch.target is None


def test_new_sdp_address_starts_over_and_same_address_keeps_latch() -> None:
    latch = Latch(LatchMode.LATCH, SDP)
    latch.accept(("127.0.0.9", 4000))
    latch.update_sdp(SDP)
    assert latch.latched == ("127.0.0.9", 4000)
    latch.update_sdp(("127.0.0.1", 20002))
    assert latch.latched is None and latch.target == ("127.0.0.1", 20002)


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
    leg.on_packet(b"\x80x", ("127.0.0.3", 5), 1)
    leg.on_packet(b"\x80y", ("127.0.0.3", 5), 1)
    assert got.qsize() == 2 and latched == [(1, ("127.0.0.3", 5))]
    assert not leg.send(b"x", 2)  # no sockets: nowhere to send
