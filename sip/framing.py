"""Message framing on stream transports (RFC 3261 §18.3) with RFC 5626 keep-alives."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import ParseError
from .message import DEFAULT_MAX_SIZE

__all__ = ["KeepAlive", "Oversized", "StreamFramer"]


class KeepAlive(enum.Enum):
    """RFC 5626 §3.5.1 keep-alives seen between messages."""

    PING = b"\r\n\r\n"
    """Double CRLF: the peer asks for a pong (answer with a single CRLF)."""
    PONG = b"\r\n"
    """Single CRLF: the answer to our ping."""


@dataclass(frozen=True, slots=True)
class Oversized:
    """A message whose Content-Length makes it larger than the limit.

    Its header section is kept (to answer it: RFC 3261 §21.4.11 413, §21.5.11 513) and its
    body is skipped as it arrives, so the stream stays framed and the connection usable.
    """

    head: bytes
    """The start line and headers, up to and including the blank line."""
    size: int
    """The whole message's declared size (headers + Content-Length)."""


# Content-Length or its compact form "l", at the start of a header line.
# The value may be folded onto continuation lines.
_CONTENT_LENGTH = re.compile(
    rb"\n(?:content-length|l)[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", re.IGNORECASE
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class StreamFramer:
    """Cuts a byte stream into whole messages by Content-Length, across partial reads."""

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_SIZE,
        *,
        awaiting_pong: bool = False,
        max_skip: int | None = None,
    ) -> None:
        self.max_size = max_size
        self.max_skip = 16 * max_size if max_skip is None else max_skip
        """Largest body skipped to keep the stream after an oversized message; a larger
        declared body makes the stream unframeable (reading it is not worth the bytes)."""
        self.awaiting_pong = awaiting_pong
        """Set by the owner after sending a ping: a lone CRLF is then the pong. Otherwise a
        lone CRLF may be the first half of a ping split across reads, so it waits."""
        self._buffer = bytearray()
        self._skip = 0
        self._error: ParseError | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes received from the stream (the body of an oversized one is dropped)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a message."""
        return len(self._buffer)

    @property
    def in_message(self) -> bool:
        """True between a message's first byte and its end (also while a body is skipped):
        the owner's deadline for a complete message runs."""
        return bool(self._skip) or bool(self._buffer)

    def next_message(self) -> bytes | KeepAlive | Oversized | None:
        """The next whole message or keep-alive, or None until more bytes arrive.

        Raises ParseError (and keeps raising it) once the stream cannot be framed: the
        connection must then be closed.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ParseError as exc:
            self._error = exc
            raise

    def _next(self) -> bytes | KeepAlive | Oversized | None:
        if self._skip:
            return None
        buf = self._buffer
        if buf[:1] == b"\r" or buf[:1] == b"\n":
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                return KeepAlive.PING
            if buf[:2] == b"\r\n" and (
                (len(buf) == 2 and self.awaiting_pong) or (len(buf) > 2 and buf[2:3] != b"\r")
            ):
                del buf[:2]
                self.awaiting_pong = False
                return KeepAlive.PONG
            if buf[:1] == b"\n":  # bare LFs between messages: skip them
                del buf[: len(buf) - len(buf.lstrip(b"\n"))]
                return self._next() if buf[:1] != b"\n" else None
            return None  # "\r" or "\r\n\r": wait for the rest
        m = _HEADER_END.search(buf)
        if m is None:
            if len(buf) > self.max_size:
                raise ParseError(f"headers longer than {self.max_size} bytes", 413)
            return None
        head_end = m.end()
        lengths = _CONTENT_LENGTH.findall(buf, 0, m.start() + 1)
        if not lengths:
            raise ParseError("missing Content-Length on a stream transport")
        values = {re.sub(rb"\s+", b"", v) for v in lengths}
        if len(values) != 1:
            raise ParseError("conflicting Content-Length headers")
        text = values.pop()
        if not text.isdigit() or len(text) > 10:
            raise ParseError(f"invalid Content-Length {text[:20]!r}")
        body = int(text)
        total = head_end + body
        if total > self.max_size:
            if body > self.max_skip:
                raise ParseError(f"message larger than {self.max_size} bytes", 413)
            # RFC 3261 §18.3: the length is known, so the body can be passed over and the
            # connection kept; the owner answers the head (413 / 513).
            head = bytes(buf[:head_end])
            present = min(body, len(buf) - head_end)
            del buf[: head_end + present]
            self._skip = body - present
            return Oversized(head, total)
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return message
