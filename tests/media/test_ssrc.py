"""SSRC mapping into x-ssrc-range and RTCP rewriting ([MS-SDPEXT] 3.1.5.31, RFC 3550 §6.4)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from media.ms_dialect import SsrcRange
from media.ssrc import SsrcMapper, rewrite_rtcp, rewrite_rtp_ssrc
from tests.media.peers import rtcp_rr, rtp, ssrc_of


def test_mapping_is_stable_inside_the_range_and_reversible() -> None:
    mapper = SsrcMapper(SsrcRange(100, 102))
    assert [mapper.map(s) for s in (7, 8, 7, 9)] == [100, 101, 100, 102]
    assert mapper.unmap(101) == 8 and mapper.unmap(555) == 555
    assert mapper.map(10) == 100  # full: the oldest mapping is reused
    assert mapper.unmap(100) == 10 and mapper.map(8) == 101


def test_a_cap_below_the_range_reuses_the_oldest_mapping_first() -> None:
    mapper = SsrcMapper(SsrcRange(100, 199), cap=2)
    assert [mapper.map(s) for s in (7, 8, 9)] == [100, 101, 100]
    assert mapper.unmap(100) == 9 and mapper.map(10) == 101 and mapper.map(9) == 100


def test_rtp_ssrc_rewrite_keeps_everything_else() -> None:
    mapper = SsrcMapper(SsrcRange(500, 599))
    packet = rtp(0xDEADBEEF, 3, b"payload")
    out = rewrite_rtp_ssrc(packet, mapper)
    assert ssrc_of(out) == 500 and out[:8] == packet[:8] and out[12:] == packet[12:]
    assert rewrite_rtp_ssrc(b"\x80\x00", mapper) == b"\x80\x00"


def test_rtcp_sender_and_report_blocks_and_feedback() -> None:
    sr = struct.pack("!BBHI", 0x81, 200, 12, 1) + bytes(20) + struct.pack("!I", 2) + bytes(20)
    pli = struct.pack("!BBHII", 0x81, 206, 2, 1, 2)
    bye = struct.pack("!BBHI", 0x81, 203, 1, 1)
    out = rewrite_rtcp(sr + pli + bye, lambda s: s + 10, lambda s: s + 20)
    assert struct.unpack_from("!I", out, 4)[0] == 11
    assert struct.unpack_from("!I", out, 28)[0] == 22
    assert struct.unpack_from("!II", out, len(sr) + 4) == (11, 22)
    assert struct.unpack_from("!I", out, len(sr) + len(pli) + 4)[0] == 11
    rr = rewrite_rtcp(rtcp_rr(5, 6), lambda s: 50, lambda s: 60)
    assert rr == rtcp_rr(50, 60)


@given(st.binary(max_size=200))
def test_rtcp_rewrite_never_raises_and_keeps_length(data: bytes) -> None:
    out = rewrite_rtcp(data, lambda s: s ^ 1, lambda s: s ^ 2)
    assert len(out) == len(data)
