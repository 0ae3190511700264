"""SSRC mapping into the ``a=x-ssrc-range`` we advertise to Microsoft (sans-IO).

[MS-SDPEXT] 3.1.5.31: a Lync/SfB receiver expects the sender's SSRCs inside the range the
sender advertised. A video endpoint picks its SSRC freely (RFC 3550 §8), so toward Microsoft
the relay rewrites each endpoint SSRC to one of ours, and maps it back where Microsoft's RTCP
talks about it (report blocks, feedback media SSRC) on the way to the endpoint.

RTCP layout (RFC 3550 §6.4, RFC 4585 §6.1): every packet of a compound starts with
V/P/count, type, length in 32-bit words minus one, then the sender SSRC, except SDES (chunks
of SSRC + items) and BYE (a list of SSRCs, all "senders").
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable

from media.ms_dialect import SsrcRange

__all__ = ["SsrcMapper", "rewrite_rtcp", "rewrite_rtp_ssrc", "rtp_ssrc"]

_U32 = struct.Struct("!I")

RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE, RTCP_APP, RTCP_RTPFB, RTCP_PSFB = range(200, 207)


class SsrcMapper:
    """Stable mapping endpoint SSRC -> SSRC in ``range``; the least recently new is reused
    when the range is full, or when ``cap`` SSRCs are mapped (the native relay's table size,
    ``media.relay.MAP_CAP``) if that comes first."""

    def __init__(self, ssrc_range: SsrcRange, cap: int | None = None) -> None:
        self.range = ssrc_range
        self._size = ssrc_range.last - ssrc_range.first + 1
        self._cap = self._size if cap is None else min(self._size, cap)
        self._forward: OrderedDict[int, int] = OrderedDict()
        self._reverse: dict[int, int] = {}
        self._next = ssrc_range.first

    def map(self, original: int) -> int:
        mapped = self._forward.get(original)
        if mapped is not None:
            return mapped
        if len(self._forward) >= self._cap:
            _, mapped = self._forward.popitem(last=False)
            del self._reverse[mapped]
        else:
            mapped = self._next
            self._next = self.range.first + (self._next - self.range.first + 1) % self._size
        self._forward[original] = mapped
        self._reverse[mapped] = original
        return mapped

    def unmap(self, mapped: int) -> int:
        """The endpoint SSRC behind ``mapped`` (unknown values pass through unchanged)."""
        return self._reverse.get(mapped, mapped)


def rtp_ssrc(packet: bytes) -> int:
    return int(_U32.unpack_from(packet, 8)[0])


def rewrite_rtp_ssrc(packet: bytes, mapper: SsrcMapper) -> bytes:
    """The RTP packet with its SSRC mapped (unchanged when it is too short to be RTP)."""
    if len(packet) < 12:
        return packet
    original = _U32.unpack_from(packet, 8)[0]
    mapped = mapper.map(original)
    if mapped == original:
        return packet
    return packet[:8] + _U32.pack(mapped) + packet[12:]


def rewrite_rtcp(packet: bytes, sender: Callable[[int], int],
                 about: Callable[[int], int]) -> bytes:
    """A compound RTCP packet with sender SSRCs passed through ``sender`` and the SSRCs it
    reports on (report blocks, feedback media SSRC) through ``about``.

    Stops at the first malformed packet of the compound and leaves the rest as it is (SRTCP
    will still authenticate it; the receiver judges it)."""
    out = bytearray(packet)
    offset = 0
    end = len(out)

    def swap(at: int, fn: Callable[[int], int]) -> None:
        _U32.pack_into(out, at, fn(_U32.unpack_from(out, at)[0]))

    while offset + 8 <= end:
        first, ptype, words = struct.unpack_from("!BBH", out, offset)
        size = (words + 1) * 4
        if first >> 6 != 2 or offset + size > end:
            break
        count = first & 0x1F
        if ptype in (RTCP_SR, RTCP_RR):
            swap(offset + 4, sender)
            blocks = offset + (28 if ptype == RTCP_SR else 8)
            for i in range(count):
                at = blocks + 24 * i
                if at + 24 > offset + size:
                    break
                swap(at, about)
        elif ptype == RTCP_BYE:
            for i in range(count):
                at = offset + 4 + 4 * i
                if at + 4 > offset + size:
                    break
                swap(at, sender)
        elif ptype == RTCP_SDES:
            if count:
                swap(offset + 4, sender)  # the first chunk's SSRC (endpoints send one chunk)
        elif ptype in (RTCP_APP, RTCP_RTPFB, RTCP_PSFB):
            swap(offset + 4, sender)
            if ptype != RTCP_APP and size >= 12:
                swap(offset + 8, about)
        offset += size
    return bytes(out)
