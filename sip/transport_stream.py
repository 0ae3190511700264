"""One SIP stream connection (TCP or TLS) as an asyncio protocol.

Byte-level duties live here: Content-Length framing across partial reads
(:class:`sip.framing.StreamFramer`), RFC 5626 CRLF keep-alive (answer a ping, optionally
send pings and expect pongs), idle close, the deadline for a complete message once its
first byte came (a peer trickling bytes cannot hold a connection), and the cap on bytes
queued for a peer that does not read. TLS is already up when a connection
reaches us: the owner runs the handshake and logs its failures. Message parsing and
dispatch belong to the owner
(:class:`sip.transport.TransportManager`) through the :class:`StreamOwner` interface.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from sip.errors import ParseError
from sip.framing import KeepAlive, Oversized, StreamFramer
from sip.tls import peer_names
from sip.transport_types import format_address

__all__ = ["PING", "PONG", "DropReason", "StreamConnection", "StreamOwner"]

logger = logging.getLogger(__name__)

PING = b"\r\n\r\n"
"""RFC 5626 §3.5.1 keep-alive ping on a stream: a double CRLF."""
PONG = b"\r\n"
"""RFC 5626 §3.5.1 keep-alive pong: a single CRLF."""


class DropReason(enum.Enum):
    """Why the transport itself closed a stream (counted by the owner)."""

    IDLE = "idle"
    """No complete message or keep-alive for the idle timeout."""
    MESSAGE_DEADLINE = "message_deadline"
    """A message was started but not completed in time (slowloris)."""
    SLOW_READER = "slow_reader"
    """The peer does not read: the bytes queued for it passed the cap."""
    KEEPALIVE = "keepalive"
    """An RFC 5626 pong did not come in time."""


class StreamOwner(Protocol):
    """What a :class:`StreamConnection` reports to (the transport manager)."""

    def stream_ready(self, stream: StreamConnection) -> None:
        """The connection is usable (after the TLS handshake, if any)."""

    def stream_frame(self, stream: StreamConnection, data: bytes) -> None:
        """One complete SIP message (headers + body) was framed."""

    def stream_unframeable(self, stream: StreamConnection, error: ParseError, data: bytes) -> None:
        """The stream cannot be framed any more; ``data`` is what was left unframed.

        The connection closes right after this returns (so a reply written here still goes).
        """

    def stream_oversized(self, stream: StreamConnection, item: Oversized) -> None:
        """A message over the size limit arrived; its body is being skipped and the
        connection stays up (answer the head with 413/513)."""

    def stream_dropped(self, stream: StreamConnection, reason: DropReason) -> None:
        """The connection closes itself for ``reason`` (called before it closes)."""

    def stream_closed(self, stream: StreamConnection, exc: BaseException | None) -> None:
        """The connection is gone (called once, also after a failed handshake)."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background coroutine owned by the manager (cancelled on close)."""


class StreamConnection(asyncio.Protocol):
    """A TCP or TLS connection carrying SIP; created by the owner for each socket."""

    def __init__(
        self,
        owner: StreamOwner,
        *,
        connection_id: int,
        outbound: bool,
        max_message_size: int,
        idle_timeout: float | None,
        keepalive_interval: float | None = None,
        keepalive_timeout: float = 10.0,
        server_hostname: str | None = None,
        message_timeout: float | None = None,
        max_unsent: int | None = None,
    ) -> None:
        self.owner = owner
        self.id = connection_id
        self.outbound = outbound
        self.server_hostname = server_hostname
        """Name the server certificate was checked against (outbound TLS)."""
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[str, int] | None = None
        self.sockname: tuple[str, int] | None = None
        self.peer_names: tuple[str, ...] = ()
        """Peer certificate subject CN + SAN DNS names (empty without a verified cert)."""
        self.ready = False
        self.closed = False
        self.closed_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._framer = StreamFramer(max_size=max_message_size)
        self._unframed = bytearray()
        self._max_size = max_message_size
        self._idle_timeout = idle_timeout
        self._message_timeout = message_timeout
        self._max_unsent = max_unsent
        self._keepalive_interval = keepalive_interval if outbound else None
        self._keepalive_timeout = keepalive_timeout
        self._last_activity = self._loop.time()
        self.last_message_at = self._last_activity
        """Loop time of the last complete message or keep-alive (or of the connection)."""
        self.messages = 0
        """Complete SIP messages received (0: the peer has not proven it speaks SIP)."""
        self._message_started: float | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self.pongs_received = 0
        self.pings_answered = 0

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's classes: cast, do not isinstance.
        transport = cast(asyncio.Transport, base)
        self.transport = transport
        self.peername = _address(transport.get_extra_info("peername"))
        self.sockname = _address(transport.get_extra_info("sockname"))
        # TLS arrives here after the handshake, with the peer's certificate.
        self.peer_names = peer_names(transport.get_extra_info("peercert"))
        self._become_ready()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._consume(data)
        except Exception:
            # A bug here must cost this connection only, never reach the event loop.
            logger.exception("connection %d from %s: receive failed", self.id, self.peername)
            self.abort()

    def eof_received(self) -> bool | None:
        logger.debug("connection %d: peer %s closed its side", self.id, self.peername)
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.ready = False
        for handle in (self._idle_handle, self._ping_handle, self._pong_handle):
            if handle is not None:
                handle.cancel()
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        self.owner.stream_closed(self, exc)

    # -- use by the owner ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes on the connection."""
        if self.transport is None or self.closed or self.transport.is_closing():
            raise ConnectionError(f"connection {self.id} to {self.peername} is closed")
        self.transport.write(data)
        self._check_unsent()

    @property
    def unsent(self) -> int:
        """Bytes queued for the peer and not yet taken by the kernel."""
        if self.transport is None:
            return 0
        return int(self.transport.get_write_buffer_size())

    def close(self) -> None:
        """Close gracefully (pending writes are flushed)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()

    # -- internals -------------------------------------------------------------------

    def _check_unsent(self) -> None:
        # The kernel's send buffer is full and asyncio queues the rest in memory: a peer
        # that never reads would make that queue grow without end. Past the cap, close.
        if self._max_unsent is None or self.transport is None:
            return
        unsent = self.unsent
        if unsent > self._max_unsent and not self.closed:
            logger.warning(
                "connection %d to %s does not read: %d bytes unsent (cap %d): closing",
                self.id,
                format_address(self.peername),
                unsent,
                self._max_unsent,
            )
            self._drop(DropReason.SLOW_READER)

    def _drop(self, reason: DropReason) -> None:
        try:
            self.owner.stream_dropped(self, reason)
        finally:
            self.abort()

    def _become_ready(self) -> None:
        self.ready = True
        self._last_activity = self.last_message_at = self._loop.time()
        self.owner.stream_ready(self)
        self._arm_idle()
        if self._keepalive_interval is not None:
            self._ping_handle = self._loop.call_later(self._keepalive_interval, self._send_ping)

    def _consume(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_activity = now
        if self._message_started is None:
            self._message_started = now  # the first byte of a message: its deadline runs
        self._framer.feed(data)
        self._unframed += data
        try:
            self._drain(now)
        finally:
            if not self._framer.in_message:
                self._message_started = None

    def _drain(self, now: float) -> None:
        while not self.closed:
            try:
                item = self._framer.next_message()
            except ParseError as error:
                leftover = bytes(self._unframed.lstrip(b"\r\n"))
                self._unframed.clear()
                try:
                    self.owner.stream_unframeable(self, error, leftover)
                finally:
                    self.close()
                return
            if item is None:
                return
            # A whole item: the connection is in use, and the next message's clock starts.
            self.last_message_at = now
            self._message_started = now
            if isinstance(item, KeepAlive):
                self._on_keepalive(item)
                continue
            if isinstance(item, Oversized):
                self._unframed.clear()
                self.owner.stream_oversized(self, item)
                continue
            self.messages += 1
            self._forget_framed(item)
            self.owner.stream_frame(self, item)

    def _forget_framed(self, frame: bytes) -> None:
        # Keep only the unframed tail, so a later framing error can be answered from
        # the headers of the message that broke the stream.
        index = self._unframed.find(frame)
        if index >= 0:
            del self._unframed[: index + len(frame)]
        elif len(self._unframed) > 2 * self._max_size:
            del self._unframed[: -self._max_size]

    def _on_keepalive(self, item: KeepAlive) -> None:
        # The framer consumed the CRLFs of the keep-alive: drop them from our copy too.
        del self._unframed[: len(self._unframed) - len(self._unframed.lstrip(b"\r\n"))]
        if item is KeepAlive.PING:
            self.pings_answered += 1
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(PONG)
                self._check_unsent()
        else:
            self.pongs_received += 1
            if self._pong_handle is not None:
                self._pong_handle.cancel()
                self._pong_handle = None

    def _arm_idle(self) -> None:
        if self.closed:
            return
        # One timer per connection, re-armed lazily at expiry rather than on every read:
        # it wakes at the idle deadline or the message deadline, whichever is first.
        deadline = self._next_deadline()
        if deadline is not None:
            self._idle_handle = self._loop.call_at(deadline, self._on_idle_timer)

    def _next_deadline(self) -> float | None:
        deadlines = []
        if self._idle_timeout is not None:
            deadlines.append(self.last_message_at + self._idle_timeout)
        if self._message_timeout is not None:
            # Checked every message_timeout even between messages: a message may start.
            started = self._message_started
            deadlines.append(
                (started if started is not None else self._loop.time()) + self._message_timeout
            )
        return min(deadlines) if deadlines else None

    def _on_idle_timer(self) -> None:
        self._idle_handle = None
        if self.closed:
            return
        now = self._loop.time()
        started = self._message_started
        if (
            self._message_timeout is not None
            and started is not None
            and now >= started + self._message_timeout
        ):
            logger.warning(
                "connection %d from %s: no complete message %.1f s after its first byte"
                " (%d bytes held): closing",
                self.id,
                format_address(self.peername),
                self._message_timeout,
                self._framer.buffered,
            )
            self._drop(DropReason.MESSAGE_DEADLINE)
            return
        if self._idle_timeout is not None and now >= self.last_message_at + self._idle_timeout:
            logger.info(
                "connection %d to %s idle for %.1f s: closing",
                self.id,
                format_address(self.peername),
                self._idle_timeout,
            )
            try:
                self.owner.stream_dropped(self, DropReason.IDLE)
            finally:
                self.close()
            return
        self._arm_idle()

    def _send_ping(self) -> None:
        self._ping_handle = None
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(PING)
        # A lone CRLF is only taken as a pong while one is awaited (else it may be half a ping).
        self._framer.awaiting_pong = True
        if self._pong_handle is None:
            self._pong_handle = self._loop.call_later(self._keepalive_timeout, self._pong_missed)
        assert self._keepalive_interval is not None
        self._ping_handle = self._loop.call_later(self._keepalive_interval, self._send_ping)

    def _pong_missed(self) -> None:
        self._pong_handle = None
        logger.warning(
            "connection %d to %s: no keep-alive pong within %.1f s: closing",
            self.id,
            format_address(self.peername),
            self._keepalive_timeout,
        )
        self._drop(DropReason.KEEPALIVE)


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None
