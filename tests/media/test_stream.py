"""The sans-IO part of a stream: flow from the SDP directions, counters with explicit time,
SRTP and SSRC mapping on the two ways."""

from __future__ import annotations

import base64
import os

import pylibsrtp
import pytest

from media.counters import LegCounters
from media.ms_dialect import SsrcRange
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


def test_state_relays_with_srtp_mapping_and_hold() -> None:
    state = StreamState()
    ms_local, ms_remote = m(key=KEY_GW), m(key=KEY_MS)
    state.apply(ms_local, ms_remote, m(), m(), SsrcRange(10, 19))
    ms_tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_MS,
                                               ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    ms_rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_GW,
                                               ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    plain = rtp(1000, 1, b"a")
    assert state.from_microsoft(ms_tx.protect(plain), 1, now=1.0) == plain
    out = state.from_video(rtp(0xABCDEF, 1, b"b"), 1, now=2.0)
    assert out is not None
    back = ms_rx.unprotect(out)
    assert ssrc_of(back) == 10 and back[12:] == b"b"
    assert state.from_microsoft(b"\x80" * 40, 1, now=3.0) is None  # garbage: SRTP refuses
    assert state.ms_counters.dropped_srtp == 1 and state.ms_counters.last_in == 3.0

    srtp_before = state.ms_srtp
    state.apply(ms_local, m("sendonly", key=KEY_MS), m(), m("recvonly"), SsrcRange(10, 19))
    assert state.ms_srtp is srtp_before  # same keys: contexts (replay, ROC) kept
    assert state.from_video(rtp(0xABCDEF, 2, b"c"), 1, now=4.0) is None
    assert state.video_counters.dropped_direction == 1
    assert state.from_video(rtp(0xABCDEF, 3, b"c")[:8] + bytes(20), 2, now=4.0) is not None


@pytest.mark.parametrize("size", [1480, 1500, 4000, 65000])
@pytest.mark.parametrize("component", [1, 2])
def test_oversized_packets_are_dropped_and_counted_never_raised(size: int, component: int
                                                               ) -> None:
    """Issue 12: a packet over ~1,480 bytes made pylibsrtp raise ValueError out of the
    datagram callback (one traceback per packet). Both ways, RTP and RTCP: dropped as SRTP."""
    state = StreamState()
    state.apply(m(key=KEY_GW), m(key=KEY_MS), m(key=KEY_GW), m(key=KEY_MS), None)
    big = rtp(1000, 1, b"x" * size) if component == 1 else bytes([0x80, 201, 0, 1]) + bytes(size)
    for way, counters in ((state.from_video, state.video_counters),
                          (state.from_microsoft, state.ms_counters)):
        assert way(big, component, 1.0) is None
        assert counters.packets_in == 1 and counters.dropped_srtp == 1


@pytest.mark.parametrize("srtp", [True, False])
def test_any_bytes_either_way_are_forwarded_or_dropped_never_raised(srtp: bool) -> None:
    """Issue 12: no traceback per packet for any input (random sizes 0-3000, random bytes,
    RTP-looking headers, both components, both ways, with and without SRTP and mapping)."""
    import random

    rng = random.Random(12)
    state = StreamState()
    keys = (KEY_GW, KEY_MS) if srtp else (None, None)
    state.apply(m(key=keys[0]), m(key=keys[1]), m(), m(), SsrcRange(10, 19))
    for n in range(600):
        size = rng.choice([0, 1, 4, 8, 11, 12, 13, 20, 200, 1400, 1480, 1490, 1500, 3000])
        data = bytearray(rng.randbytes(size))
        if data and n % 2:
            data[0] = 0x80 | (data[0] & 0x3F)  # version 2: looks like RTP/RTCP
        for way in (state.from_video, state.from_microsoft):
            out = way(bytes(data), 1 + n % 2, float(n))
            assert out is None or isinstance(out, bytes)
