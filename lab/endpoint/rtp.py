"""RTP packets the endpoint sends (RFC 3550 §5.1), sans-IO: header codec and one source.

A :class:`RtpSource` is one outgoing stream (one SSRC): it numbers packets, advances the
media clock and builds payloads the size real codecs produce. Time is passed in, so the
packet pacing is the adapter's business (``lab.endpoint.media``).

- Audio (RFC 3551 §4.5): PCMU / PCMA 8 kHz, 20 ms = 160 samples = 160 bytes; G.722 is
  sampled at 16 kHz but its RTP clock is 8 kHz (§4.5.2), so it also advances 160 per 20 ms
  and carries 160 bytes. 50 packets a second.
- Video (RFC 6184): H.264 at 90 kHz, ~30 frames a second; each frame is a small single
  NAL unit packet (IDR every ``keyframe_every`` frames, else a non-IDR slice) with the
  marker bit set, since it is the last packet of its access unit (§5.1).
"""

from __future__ import annotations

import enum
import secrets
import struct
from dataclasses import dataclass

__all__ = [
    "RTP_VERSION",
    "MediaKind",
    "RtpError",
    "RtpHeader",
    "RtpSource",
    "parse_header",
]

RTP_VERSION = 2
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """Bytes that are not an RTP packet."""


class MediaKind(enum.Enum):
    """What a stream carries."""

    AUDIO = "audio"
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The fixed RTP header (no CSRC list kept)."""

    payload_type: int
    """7-bit payload type."""
    sequence: int
    """16-bit sequence number."""
    timestamp: int
    """32-bit media timestamp."""
    ssrc: int
    """Synchronisation source."""
    marker: bool = False
    """M bit (last packet of a video frame)."""

    def encode(self) -> bytes:
        """The 12-byte header (V=2, no padding, extension or CSRC)."""
        return _HEADER.pack(
            RTP_VERSION << 6,
            (int(self.marker) << 7) | (self.payload_type & 0x7F),
            self.sequence & 0xFFFF,
            self.timestamp & 0xFFFFFFFF,
            self.ssrc,
        )


def parse_header(packet: bytes) -> RtpHeader:
    """The header of an RTP packet; RtpError when it is not RTP version 2 (or is RTCP)."""
    if len(packet) < _HEADER.size:
        raise RtpError(f"{len(packet)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}, not 2")
    payload_type = second & 0x7F
    if 72 <= payload_type <= 76:
        # RFC 5761 §4: these values are RTCP packet types (SR, RR...) seen as RTP.
        raise RtpError("an RTCP packet, not RTP")
    csrc = first & 0x0F
    if len(packet) < _HEADER.size + 4 * csrc:
        raise RtpError("packet shorter than its CSRC list")
    return RtpHeader(payload_type, sequence, timestamp, ssrc, bool(second & 0x80))


# Clock ticks per packet and packets per second, per codec name (lower case).
_AUDIO_FRAME = 160  # 20 ms at 8 kHz (G.722 included, RFC 3551 §4.5.2)
_VIDEO_CLOCK = 90000
_VIDEO_FPS = 30
_PCMU_SILENCE = 0xFF
_PCMA_SILENCE = 0xD5


class RtpSource:
    """One outgoing RTP stream: a random SSRC, sequence and timestamp origin (§5.1)."""

    def __init__(
        self,
        kind: MediaKind,
        payload_type: int,
        codec: str,
        *,
        ssrc: int | None = None,
        keyframe_every: int = 60,
        video_payload: int = 400,
    ) -> None:
        self.kind = kind
        self.payload_type = payload_type
        self.codec = codec.lower()
        self.ssrc = ssrc if ssrc is not None else secrets.randbits(32)
        self.sequence = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.sent = 0
        """Packets built so far."""
        self._keyframe_every = max(1, keyframe_every)
        self._video_payload = max(16, video_payload)

    @property
    def interval(self) -> float:
        """Seconds between packets: 20 ms audio, 1/30 s video."""
        return 0.020 if self.kind is MediaKind.AUDIO else 1.0 / _VIDEO_FPS

    @property
    def ticks(self) -> int:
        """Timestamp advance per packet."""
        return _AUDIO_FRAME if self.kind is MediaKind.AUDIO else _VIDEO_CLOCK // _VIDEO_FPS

    def next_packet(self) -> bytes:
        """The next packet; advances sequence and timestamp."""
        if self.kind is MediaKind.AUDIO:
            payload, marker = self._audio_payload(), self.sent == 0  # §5.1: talkspurt start
        else:
            payload, marker = self._h264_payload(), True
        header = RtpHeader(self.payload_type, self.sequence, self.timestamp, self.ssrc, marker)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.ticks) & 0xFFFFFFFF
        self.sent += 1
        return header.encode() + payload

    def _audio_payload(self) -> bytes:
        if self.codec == "pcmu":
            return bytes([_PCMU_SILENCE]) * _AUDIO_FRAME
        if self.codec == "pcma":
            return bytes([_PCMA_SILENCE]) * _AUDIO_FRAME
        # G.722 (and anything else): 64 kbit/s -> 160 bytes per 20 ms.
        return bytes(_AUDIO_FRAME)

    def _h264_payload(self) -> bytes:
        # NAL header (RFC 6184 §1.3): F=0, NRI=3, type 5 (IDR slice) or 1 (non-IDR slice).
        idr = self.sent % self._keyframe_every == 0
        nal = 0x65 if idr else 0x61
        size = self._video_payload * (3 if idr else 1)
        return bytes([nal]) + bytes(size - 1)
