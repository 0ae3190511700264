"""The sans-IO part of a stream: flow from the SDP directions, counters with explicit time,
and the forwarding plan (SRTP, SSRC mapping, hold) as both relay implementations run it."""

from __future__ import annotations

import base64
import os

import pylibsrtp
import pytest

from media.counters import LegCounters
from media.ms_dialect import SsrcRange
from media.relay import Latching, Relay, Side, Verdict, make_relay, native_available
from media.rtp_leg import LatchMode, LatchSettings
from media.sdp import Attribute, Media
from media.stream import Flow, StreamState, flow_of
from tests.media.peers import rtp, ssrc_of

KEY_MS, KEY_GW = os.urandom(30), os.urandom(30)


def m(direction: str = "sendrecv", port: int = 5000, key: bytes | None = None) -> Media:
    attrs = [Attribute(direction)]
    if key is not None:
        attrs.append(Attribute("crypto", "1 AES_CM_128_HMAC_SHA1_80 inline:"
                               + base64.b64encode(key).decode()))
    return Media("audio", port, "RTP/AVP", ("0",), attributes=tuple(attrs))


@pytest.mark.parametrize("ms_remote, video_remote, expected", [
    ("sendrecv", "sendrecv", Flow(True, True)),
    ("sendonly", "recvonly", Flow(True, False)),   # Microsoft holds
    ("recvonly", "sendonly", Flow(False, True)),   # the endpoint holds
    ("inactive", "inactive", Flow(False, False)),
    ("sendrecv", "inactive", Flow(False, False)),
])
def test_flow_from_directions(ms_remote: str, video_remote: str, expected: Flow) -> None:
    assert flow_of(m(), m(ms_remote), m(), m(video_remote)) == expected


def test_rejected_stream_has_no_flow() -> None:
    assert flow_of(m(), m(port=0), m(), m()) == Flow(False, False)


def test_counters_take_time_from_the_caller() -> None:
    c = LegCounters()
    c.received(100, now=10.0)
    c.sent(50, now=10.5)
    assert (c.packets_in, c.bytes_in, c.packets_out, c.bytes_out) == (1, 100, 1, 50)
    assert c.idle_for(12.0) == 2.0 and LegCounters().idle_for(1.0) is None


IMPLS = ["python"] + (["native"] if native_available() else [])
LATCH = LatchSettings(LatchMode.STRICT)
ICE_PEER, ENDPOINT = ("127.0.0.7", 4000), ("127.0.0.1", 5000)


def relay_for(state: StreamState, impl: str) -> Relay:
    relay = make_relay(impl=impl)
    relay.publish(state.plan(ICE_PEER, ENDPOINT, LATCH))
    return relay


@pytest.mark.parametrize("impl", IMPLS)
def test_state_plans_srtp_mapping_and_hold(impl: str) -> None:
    state = StreamState()
    ms_local, ms_remote = m(key=KEY_GW), m(key=KEY_MS)
    state.apply(ms_local, ms_remote, m(), m(), SsrcRange(10, 19))
    plan = state.plan(ICE_PEER, ENDPOINT, LATCH)
    assert plan.a.latching is Latching.FIXED and plan.a.address == ICE_PEER
    assert plan.b.latching is Latching.STRICT and plan.b.address == ENDPOINT
    assert plan.a.rx_key == KEY_MS and plan.a.tx_key == KEY_GW and plan.b.rx_key is None
    relay = relay_for(state, impl)
    ms_tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_MS,
                                               ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    ms_rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_GW,
                                               ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    plain = rtp(1000, 1, b"a")
    assert relay.feed(Side.A, ms_tx.protect(plain), ICE_PEER, 1) == (Verdict.FORWARD, plain,
                                                                      ENDPOINT)
    verdict, out, dest = relay.feed(Side.B, rtp(0xABCDEF, 1, b"b"), ENDPOINT, 2)
    assert verdict is Verdict.FORWARD and out is not None and dest == ICE_PEER
    back = ms_rx.unprotect(out)
    assert ssrc_of(back) == 10 and back[12:] == b"b"
    assert relay.feed(Side.A, b"\x80" * 40, ICE_PEER, 3)[0] is Verdict.SRTP  # garbage

    state.apply(ms_local, m("sendonly", key=KEY_MS), m(), m("recvonly"), SsrcRange(10, 19))
    relay.publish(state.plan(ICE_PEER, ENDPOINT, LATCH))  # same keys: SRTP state kept
    assert relay.feed(Side.B, rtp(0xABCDEF, 2, b"c"), ENDPOINT, 4)[0] is Verdict.DIRECTION
    rr = bytes([0x81, 201, 0, 7]) + bytes(28)
    assert relay.feed(Side.B, rr, ENDPOINT, 5)[0] is Verdict.FORWARD  # RTCP on hold too
    plain = rtp(1000, 2, b"d")
    assert relay.feed(Side.A, ms_tx.protect(plain), ICE_PEER, 6)[1] == plain  # no replay


def test_no_ice_pair_yet_means_no_route_toward_microsoft() -> None:
    state = StreamState()
    state.apply(m(), m(), m(), m(), None)
    relay = make_relay(impl="python")
    relay.publish(state.plan(None, ENDPOINT, LATCH))
    assert relay.feed(Side.B, rtp(1, 1, b"x"), ENDPOINT, 1)[0] is Verdict.NO_ROUTE
    assert relay.feed(Side.A, rtp(1, 1, b"x"), ICE_PEER, 1)[0] is Verdict.FORWARD


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", [1480, 1500, 4000, 65000])
@pytest.mark.parametrize("component", [1, 2])
def test_oversized_packets_are_dropped_and_counted_never_raised(impl: str, size: int,
                                                               component: int) -> None:
    """Issue 12: a packet over ~1,480 bytes made pylibsrtp raise ValueError out of the
    datagram callback (one traceback per packet). Both ways, RTP and RTCP: dropped."""
    state = StreamState()
    state.apply(m(key=KEY_GW), m(key=KEY_MS), m(key=KEY_GW), m(key=KEY_MS), None)
    relay = relay_for(state, impl)
    big = rtp(1000, 1, b"x" * size) if component == 1 else bytes([0x80, 201, 0, 1]) + bytes(size)
    for side, source in ((Side.B, ENDPOINT), (Side.A, ICE_PEER)):
        assert relay.feed(side, big, source, 1)[0] in (Verdict.SRTP, Verdict.MALFORMED)
        counts = relay.counters(side)
        assert counts["packets_in"] == 1 and counts["forwarded"] == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("srtp", [True, False])
def test_any_bytes_either_way_are_forwarded_or_dropped_never_raised(impl: str, srtp: bool
                                                                    ) -> None:
    """Issue 12: no traceback per packet for any input (random sizes 0-3000, random bytes,
    RTP-looking headers, both ways, with and without SRTP and mapping)."""
    import random

    rng = random.Random(12)
    state = StreamState()
    keys = (KEY_GW, KEY_MS) if srtp else (None, None)
    state.apply(m(key=keys[0]), m(key=keys[1]), m(), m(), SsrcRange(10, 19))
    relay = relay_for(state, impl)
    for n in range(600):
        size = rng.choice([0, 1, 4, 8, 11, 12, 13, 20, 200, 1400, 1480, 1490, 1500, 3000])
        data = bytearray(rng.randbytes(size))
        if data and n % 2:
            data[0] = 0x80 | (data[0] & 0x3F)  # version 2: looks like RTP/RTCP
        for side, source in ((Side.B, ENDPOINT), (Side.A, ICE_PEER)):
            verdict, out, _ = relay.feed(side, bytes(data), source, n + 1)
            assert out is None or isinstance(out, bytes)
            assert isinstance(verdict, Verdict)


@pytest.mark.parametrize("impl", IMPLS)
def test_packets_without_a_route_never_reach_the_srtp_sender(impl: str) -> None:
    """Issue 13: toward Microsoft the relay is the SRTP sender, and SRTP's rollover counter
    is implicit (RFC 3711 §3.3.1): the receiver starts at 0 with the first packet it gets.
    An endpoint whose sequence numbers wrap while the ICE pair is not chosen yet (its RTP
    dropped as NO_ROUTE) must not leave our sender a rollover ahead of the receiver."""
    state = StreamState()
    state.apply(m(key=KEY_GW), m(key=KEY_MS), m(), m(), None)
    relay = make_relay(impl=impl)
    relay.publish(state.plan(None, ENDPOINT, LATCH))   # answered, ICE still checking
    for seq in (65534, 65535, 0):
        assert relay.feed(Side.B, rtp(7, seq, b"early"), ENDPOINT, seq)[0] is Verdict.NO_ROUTE
    relay.publish(state.plan(ICE_PEER, ENDPOINT, LATCH))  # the pair is nominated
    lync = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_GW,
                                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    for seq in (1, 2, 3):
        verdict, out, dest = relay.feed(Side.B, rtp(7, seq, b"media"), ENDPOINT, 10 + seq)
        assert verdict is Verdict.FORWARD and out is not None and dest == ICE_PEER
        assert lync.unprotect(out) == rtp(7, seq, b"media")  # the receiver's ROC 0 fits
