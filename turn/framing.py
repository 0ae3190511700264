"""Framing of STUN messages and ChannelData on stream transports (RFC 8656 §12.5)."""

from __future__ import annotations

from .errors import DecodeError

MAX_BUFFER = 1 << 17


class StreamFramer:
    """Splits a TCP byte stream into STUN messages and (4-byte padded) ChannelData frames.

    ``next_frame`` raises ``DecodeError`` when the stream holds neither: it cannot be
    resynchronised, so the connection must close.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        if len(self._buf) > MAX_BUFFER:
            raise DecodeError("stream buffer overflow")

    def next_frame(self) -> bytes | None:
        """The next whole frame (ChannelData without its padding), or None for more data."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        first = buf[pos]
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        if first < 0x40:
            total = 20 + length
            if length % 4:
                raise DecodeError("STUN message length not a multiple of 4")
            end = pos + total
            frame_end = end
        elif first < 0x80:  # channels 0x4000-0x7FFF (RFC 5766 range included)
            frame_end = pos + 4 + length
            end = frame_end + (-length % 4)
        else:
            raise DecodeError(f"neither STUN nor ChannelData (first byte 0x{first:02x})")
        if len(buf) < end:
            return None
        frame = bytes(buf[pos:frame_end])
        self._pos = end
        return frame

    def take_remaining(self) -> bytes:
        """Bytes not yet framed (after an RFC 6062 ConnectionBind they are peer data)."""
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest
