"""SIP transports over asyncio: UDP, TCP and TLS listeners and connections (RFC 3261 §18).

One :class:`TransportManager` owns every socket and connection. It parses what arrives
and hands each message up with its source address and connection; it answers malformed
requests itself (400 naming the problem, 413 when too large: on a stream the oversized
body is skipped and the connection kept) and keeps serving. Hostile or careless peers are
bounded (:class:`TransportSettings`): a cap on connections in total and per source
address (the oldest idle inbound one is closed to make room), a deadline for a message
once its first byte came, a cap on bytes queued for a peer that does not read, and a
failed TLS handshake frees its buffers at once. Responses
sent to the source of a request go back on the connection the request came on, and open
connections to a peer are reused. Outbound TCP/TLS connections take their source port
from a configured range (Gateway Expressway default 25000-29999).

The manager is the façade; the work is in the modules it composes: the value types
(:mod:`sip.transport_types`), configuration and counters (:mod:`sip.transport_settings`),
the connection table with its caps (:mod:`sip.transport_connections`), outbound
connections (:mod:`sip.transport_outbound`), the TLS listener (:mod:`sip.transport_tls`),
parsing and answering what arrives (:mod:`sip.transport_dispatch`), and the sockets
themselves (:mod:`sip.transport_stream`, :mod:`sip.transport_udp`). Their names are
importable from here as before.

Works on the default asyncio loop and on uvloop (only public loop APIs are used).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol

from sip.errors import ParseError
from sip.framing import Oversized
from sip.transport_connections import ConnectionTable
from sip.transport_dispatch import Dispatcher
from sip.transport_dispatch import MessageHandler as MessageHandler
from sip.transport_dispatch import OversizedHandler as OversizedHandler
from sip.transport_dispatch import stamp_received as stamp_received
from sip.transport_outbound import Dialer
from sip.transport_settings import TransportCounters, TransportSettings, source_host_of
from sip.transport_stream import DropReason, StreamConnection
from sip.transport_tls import TlsListener
from sip.transport_types import (
    ConnectionInfo,
    ReceivedMessage,
    Transport,
    TransportAddress,
    TransportError,
    address_family,
    format_address,
)
from sip.transport_udp import DatagramEndpoint

__all__ = [
    "ConnectionInfo",
    "ReceivedMessage",
    "Transport",
    "TransportAddress",
    "TransportError",
    "TransportManager",
    "TransportCounters",
    "TransportSettings",
    "source_host_of",
]

logger = logging.getLogger(__name__)


class _Encodable(Protocol):
    def encode(self) -> bytes: ...


ClosedHandler = Callable[[ConnectionInfo], None]


class TransportManager:
    """The single owner of SIP sockets and connections.

    Received messages go to ``on_message`` when given, else to an internal queue read
    with :meth:`receive`. ``on_connection_closed`` hears about every stream that closes.
    Use as ``async with TransportManager(...) as manager:`` or call :meth:`close`.
    """

    def __init__(
        self,
        settings: TransportSettings | None = None,
        *,
        on_message: MessageHandler | None = None,
        on_connection_closed: ClosedHandler | None = None,
        tls_client: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings or TransportSettings()
        self.tls_client = tls_client
        """Default context for outbound TLS (CA file, and client cert for mutual TLS)."""
        self._on_closed = on_connection_closed
        self._queue: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
        self._next_id = 1
        self._servers: list[tuple[asyncio.AbstractServer, TransportAddress]] = []
        self._tls_listeners: list[TlsListener] = []
        self._udp: dict[int, tuple[DatagramEndpoint, ConnectionInfo]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.counters = TransportCounters()
        """What the transport limits did (refused, evicted, deadline, slow reader...)."""
        self._table = ConnectionTable(self.settings, self.counters)
        self._dialer = Dialer(self.settings, self._table, self._new_stream)
        self._dispatch = Dispatcher(
            self.settings.max_message_size, self.counters, on_message=on_message, queue=self._queue
        )
        self.on_oversized_response: OversizedHandler | None = None
        """Hears of a response passed over for its size (headers only, body dropped),
        with the connection and the declared size: the stack fails its transaction."""

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> TransportManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, close every connection and socket, cancel background work."""
        self._closing = True
        self._dialer.closed = True
        for server, _ in self._servers:
            server.close()
        for listener in self._tls_listeners:
            listener.close()
        self._tls_listeners.clear()
        waits: list[asyncio.Future[None]] = []
        for stream, _ in list(self._table.streams.values()):
            stream.abort()
            waits.append(stream.closed_future)
        for endpoint, _ in list(self._udp.values()):
            endpoint.close()
            waits.append(endpoint.closed_future)
        for task in list(self._tasks):
            task.cancel()
        pending: list[asyncio.Future[Any]] = [*waits, *self._tasks]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        for server, _ in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # -- listening -------------------------------------------------------------------

    async def listen(
        self,
        transport: Transport,
        host: str,
        port: int = 0,
        *,
        ssl: ssl.SSLContext | None = None,
    ) -> TransportAddress:
        """Listen on ``host:port`` (0: any free port); returns the bound address.

        TLS needs a server context (see :func:`sip.tls.server_context`).
        """
        loop = asyncio.get_running_loop()
        if transport is Transport.UDP:
            endpoint, info = await self._open_udp(host, port)
            return info.local
        if transport is Transport.TLS:
            if ssl is None:
                raise ValueError("a TLS listener needs an ssl server context")
            return self._listen_tls(host, port, ssl)

        def factory() -> StreamConnection:
            return self._new_stream(transport, outbound=False, server_hostname=None)

        server = await loop.create_server(factory, host, port)
        name = server.sockets[0].getsockname()
        address = TransportAddress(transport, str(name[0]), int(name[1]))
        self._servers.append((server, address))
        logger.info("listening on %s", address)
        return address

    def _listen_tls(self, host: str, port: int, context: ssl.SSLContext) -> TransportAddress:
        listener = TlsListener.open(
            host, port, context, table=self._table, new_stream=self._new_stream, spawn=self.spawn
        )
        self._tls_listeners.append(listener)
        return listener.address

    @property
    def listeners(self) -> tuple[TransportAddress, ...]:
        """Every listening address (UDP sockets included)."""
        streams = tuple(address for _, address in self._servers)
        streams += tuple(listener.address for listener in self._tls_listeners)
        return streams + tuple(info.local for _, info in self._udp.values())

    # -- receiving -------------------------------------------------------------------

    async def receive(self) -> ReceivedMessage:
        """The next received message (only when no ``on_message`` callback was given)."""
        return await self._queue.get()

    # -- connections -----------------------------------------------------------------

    def connections(self) -> list[ConnectionInfo]:
        """Every open stream connection."""
        return [info for _, info in self._table.streams.values()]

    def connection(self, connection_id: int) -> ConnectionInfo | None:
        """The stream connection or UDP socket with this id, if still open."""
        if connection_id in self._table.streams:
            return self._table.streams[connection_id][1]
        if connection_id in self._udp:
            return self._udp[connection_id][1]
        return None

    def find_connection(
        self, target: TransportAddress, server_hostname: str | None = None
    ) -> ConnectionInfo | None:
        """An open stream connection to ``target`` that :meth:`send` would reuse."""
        found = self._table.reusable(target, server_hostname)
        return None if found is None else found[1]

    def close_connection(self, connection_id: int) -> None:
        """Close one stream connection (flushing what is queued)."""
        entry = self._table.streams.get(connection_id)
        if entry is not None:
            entry[0].close()

    # -- sending ---------------------------------------------------------------------

    async def send(
        self,
        message: _Encodable | bytes,
        target: TransportAddress,
        *,
        server_hostname: str | None = None,
        connection_id: int | None = None,
        ssl: ssl.SSLContext | None = None,
    ) -> ConnectionInfo:
        """Send a message to ``target``; returns the connection (or UDP socket) used.

        On streams an open connection is reused: ``connection_id`` when given and still
        open, else a connection whose remote address is ``target`` (inbound ones too, so
        a response follows its request). Otherwise a new connection is opened from the
        outbound port range; TLS checks the server certificate against
        ``server_hostname`` (default: ``target.host``) with ``ssl`` or the manager's
        client context. Raises :class:`TransportError` when nothing can be sent.
        """
        data = message if isinstance(message, bytes | bytearray) else message.encode()
        data = bytes(data)
        if target.transport is Transport.UDP:
            return await self._send_udp(data, target, connection_id)
        stream, info = await self._dialer.stream_for(
            target, server_hostname, connection_id, ssl or self.tls_client
        )
        try:
            stream.write(data)
        except ConnectionError as error:
            raise TransportError(f"cannot send to {target}: {error}") from error
        return info

    async def _send_udp(
        self, data: bytes, target: TransportAddress, connection_id: int | None
    ) -> ConnectionInfo:
        entry = self._udp.get(connection_id) if connection_id is not None else None
        if entry is None:
            family = address_family(target.host)
            entry = next(
                (e for e in self._udp.values() if address_family(e[1].local.host) == family), None
            )
        if entry is None:
            # No UDP listener: an ephemeral socket, which also receives the replies.
            wildcard = "::" if address_family(target.host) == socket.AF_INET6 else "0.0.0.0"
            entry = await self._open_udp(self.settings.source_host or wildcard, 0)
        endpoint, info = entry
        try:
            endpoint.sendto(data, (target.host, target.port))
        except (OSError, ConnectionError) as error:
            raise TransportError(f"cannot send to {target}: {error}") from error
        return info

    # -- internals: sockets ----------------------------------------------------------

    def _take_id(self) -> int:
        connection_id = self._next_id
        self._next_id += 1
        return connection_id

    async def _open_udp(self, host: str, port: int) -> tuple[DatagramEndpoint, ConnectionInfo]:
        loop = asyncio.get_running_loop()
        endpoint = DatagramEndpoint(self, connection_id=self._take_id())
        transport, _ = await loop.create_datagram_endpoint(
            lambda: endpoint, local_addr=(host, port)
        )
        # asyncio may not have run connection_made yet; a send may follow at once.
        endpoint.attach(transport)
        name = transport.get_extra_info("sockname")
        local = TransportAddress(Transport.UDP, str(name[0]), int(name[1]))
        info = ConnectionInfo(endpoint.id, Transport.UDP, local, None, outbound=False)
        self._udp[endpoint.id] = (endpoint, info)
        logger.info("listening on %s", local)
        return endpoint, info

    def _new_stream(
        self,
        transport: Transport,
        *,
        outbound: bool,
        server_hostname: str | None,
    ) -> StreamConnection:
        stream = StreamConnection(
            self,
            connection_id=self._take_id(),
            outbound=outbound,
            max_message_size=self.settings.max_message_size,
            idle_timeout=self.settings.idle_timeout,
            keepalive_interval=self.settings.keepalive_interval,
            keepalive_timeout=self.settings.keepalive_timeout,
            server_hostname=server_hostname,
            message_timeout=self.settings.message_timeout,
            max_unsent=self.settings.max_unsent_bytes,
        )
        self._table.transports[stream.id] = transport
        return stream

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background coroutine, cancelled by :meth:`close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    @property
    def stream_count(self) -> int:
        """Stream connections held: open ones and inbound TLS handshakes in progress."""
        return self._table.count

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("transport task failed", exc_info=task.exception())

    # -- StreamOwner -----------------------------------------------------------------

    def stream_ready(self, stream: StreamConnection) -> None:
        table = self._table
        transport = table.transports[stream.id]
        if self._closing or stream.peername is None or stream.sockname is None:
            table.handshakes.pop(stream.id, None)
            for ids in table.inbound.values():
                ids.pop(stream.id, None)
            stream.abort()
            return
        host = stream.peername[0]
        table.handshakes.pop(stream.id, None)  # a TLS handshake that just succeeded
        if not stream.outbound and transport is Transport.TCP:
            # TCP is accepted by asyncio's server: the caps are applied as it arrives.
            if not table.admit(host, format_address(stream.peername), transport):
                table.transports.pop(stream.id, None)
                stream.abort()
                return
            table.inbound.setdefault(host, {})[stream.id] = None
        remote = TransportAddress(transport, *stream.peername)
        info = ConnectionInfo(
            id=stream.id,
            transport=transport,
            local=TransportAddress(transport, *stream.sockname),
            remote=remote,
            outbound=stream.outbound,
            peer_names=stream.peer_names,
            server_hostname=stream.server_hostname,
        )
        table.add(stream, info)
        logger.debug(
            "connection %d %s %s%s",
            stream.id,
            "to" if stream.outbound else "from",
            remote,
            f" (certificate names: {', '.join(info.peer_names)})" if info.peer_names else "",
        )

    def stream_frame(self, stream: StreamConnection, data: bytes) -> None:
        entry = self._table.streams.get(stream.id)
        if entry is None:
            return
        info = entry[1]
        assert info.remote is not None
        self._dispatch.deliver(data, info.remote, info, lambda reply: stream.write(reply))

    def stream_unframeable(self, stream: StreamConnection, error: ParseError, data: bytes) -> None:
        entry = self._table.streams.get(stream.id)
        peer = entry[1].remote if entry is not None else stream.peername
        logger.warning(
            "connection %d from %s cannot be framed (%s): closing", stream.id, peer, error.message
        )
        self._dispatch.answer_malformed(data, error, peer, stream.write)

    def stream_oversized(self, stream: StreamConnection, item: Oversized) -> None:
        entry = self._table.streams.get(stream.id)
        info = entry[1] if entry is not None else None
        self._dispatch.oversized(stream, item, info, self.on_oversized_response)

    def stream_dropped(self, stream: StreamConnection, reason: DropReason) -> None:
        if reason is DropReason.MESSAGE_DEADLINE:
            self.counters.message_deadline += 1
        elif reason is DropReason.SLOW_READER:
            self.counters.slow_reader += 1
        elif reason is DropReason.IDLE:
            self.counters.idle += 1

    def stream_closed(self, stream: StreamConnection, exc: BaseException | None) -> None:
        self._table.forget(stream)
        info = self._table.closed_info.pop(stream.id, None)
        if info is None:
            return
        assert info.remote is not None
        logger.debug(
            "connection %d with %s closed%s", stream.id, info.remote, f": {exc}" if exc else ""
        )
        if self._on_closed is not None:
            try:
                self._on_closed(info)
            except Exception:
                logger.exception("connection-closed handler failed for %s", info.remote)

    # -- DatagramOwner ---------------------------------------------------------------

    def datagram(self, endpoint: DatagramEndpoint, data: bytes, source: tuple[str, int]) -> None:
        entry = self._udp.get(endpoint.id)
        if entry is None:
            return
        address = TransportAddress(Transport.UDP, *source)
        self._dispatch.deliver(
            data, address, entry[1], lambda reply: endpoint.sendto(reply, source)
        )

    def datagram_closed(self, endpoint: DatagramEndpoint) -> None:
        self._udp.pop(endpoint.id, None)
