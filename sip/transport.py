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

Works on the default asyncio loop and on uvloop (only public loop APIs are used).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol

from sip.errors import ParseError
from sip.framing import Oversized
from sip.port_range import PortCursor
from sip.tls import describe_tls_error
from sip.transport_dispatch import Dispatcher
from sip.transport_dispatch import MessageHandler as MessageHandler
from sip.transport_dispatch import OversizedHandler as OversizedHandler
from sip.transport_dispatch import stamp_received as stamp_received
from sip.transport_settings import TransportCounters, TransportSettings, source_host_of
from sip.transport_stream import DropReason, StreamConnection
from sip.transport_types import (
    ConnectionInfo,
    ReceivedMessage,
    Transport,
    TransportAddress,
    TransportError,
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
        self._ports = (
            PortCursor(self.settings.outbound_ports)
            if self.settings.outbound_ports is not None
            else None
        )
        self._servers: list[tuple[asyncio.AbstractServer, TransportAddress]] = []
        self._tls_listeners: list[tuple[socket.socket, TransportAddress]] = []
        self._udp: dict[int, tuple[DatagramEndpoint, ConnectionInfo]] = {}
        self._streams: dict[int, tuple[StreamConnection, ConnectionInfo]] = {}
        self._by_remote: dict[TransportAddress, list[int]] = {}
        self._connecting: dict[tuple[TransportAddress, str | None], asyncio.Future[int]] = {}
        self._stream_transport: dict[int, Transport] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.counters = TransportCounters()
        """What the transport limits did (refused, evicted, deadline, slow reader...)."""
        self._max_connections = _capped_by_fd_limit(self.settings.max_connections)
        self._inbound: dict[str, dict[int, None]] = {}
        """Inbound streams (ready or in TLS handshake) per source host, oldest first."""
        self._handshakes: dict[int, tuple[str, asyncio.Task[None]]] = {}
        """Inbound TLS handshakes in progress: source host and task, oldest first."""
        self.on_oversized_response: OversizedHandler | None = None
        """Hears of a response passed over for its size (headers only, body dropped),
        with the connection and the declared size: the stack fails its transaction."""
        self._closed_info: dict[int, ConnectionInfo] = {}
        """Streams taken out of the tables whose close is not yet reported."""
        self._dispatch = Dispatcher(
            self.settings.max_message_size, self.counters, on_message=on_message, queue=self._queue
        )

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
        for server, _ in self._servers:
            server.close()
        for sock, _ in self._tls_listeners:
            sock.close()
        self._tls_listeners.clear()
        waits: list[asyncio.Future[None]] = []
        for stream, _ in list(self._streams.values()):
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
        # TLS sockets are accepted by hand and handed to connect_accepted_socket(ssl=...):
        # the handshake then fails with its reason (logged below) on asyncio and uvloop
        # alike. start_tls() over an accepted transport loses the ClientHello on uvloop,
        # and create_server(ssl=...) hides handshake failures inside the loop.
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(256)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        name = sock.getsockname()
        address = TransportAddress(Transport.TLS, str(name[0]), int(name[1]))
        self._tls_listeners.append((sock, address))
        self.spawn(self._accept_tls(sock, context))
        logger.info("listening on %s", address)
        return address

    async def _accept_tls(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as error:
                if self._closing or sock.fileno() < 0:
                    return
                logger.warning("TLS listener %s: accept failed: %s", sock.getsockname(), error)
                await asyncio.sleep(0.1)  # EMFILE and the like: back off, keep listening
                continue
            host = str(peer[0])
            if not self._admit(host, f"{host}:{peer[1]}", Transport.TLS):
                conn.close()
                continue
            stream = self._new_stream(Transport.TLS, outbound=False, server_hostname=None)
            task = self.spawn(self._tls_handshake(stream, conn, peer, context))
            self._handshakes[stream.id] = (host, task)
            self._inbound.setdefault(host, {})[stream.id] = None

    async def _tls_handshake(
        self,
        stream: StreamConnection,
        conn: socket.socket,
        peer: tuple[Any, ...],
        context: ssl.SSLContext,
    ) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: stream,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.settings.tls_handshake_timeout,
            )
        except OSError as error:  # ssl.SSLError, TimeoutError, ConnectionError included
            self.counters.tls_failed += 1
            logger.warning(
                "TLS handshake with %s:%s failed: %s", peer[0], peer[1], describe_tls_error(error)
            )
            self._forget_inbound(stream.id, str(peer[0]))
            conn.close()
            # python/cpython#109534 (fixed in 3.12.2, not in 3.11): the stdlib loop's
            # handshake waiter keeps this exception, whose traceback frames hold the
            # SSLProtocol and its 256 KiB buffers in a cycle that only a full collection
            # frees; between collections a handshake flood piles them up and the heap's
            # high-water mark never comes back (measured +10 MB per 1,000 failures).
            # Dropping the traceback breaks the cycle: reference counting frees it now.
            error.__traceback__ = None
            error.__context__ = None
        except asyncio.CancelledError:
            # Evicted (or the manager closes) while still shaking hands.
            self._forget_inbound(stream.id, str(peer[0]))
            conn.close()
            raise
        finally:
            self._handshakes.pop(stream.id, None)

    @property
    def listeners(self) -> tuple[TransportAddress, ...]:
        """Every listening address (UDP sockets included)."""
        streams = tuple(address for _, address in self._servers)
        streams += tuple(address for _, address in self._tls_listeners)
        return streams + tuple(info.local for _, info in self._udp.values())

    # -- receiving -------------------------------------------------------------------

    async def receive(self) -> ReceivedMessage:
        """The next received message (only when no ``on_message`` callback was given)."""
        return await self._queue.get()

    # -- connections -----------------------------------------------------------------

    def connections(self) -> list[ConnectionInfo]:
        """Every open stream connection."""
        return [info for _, info in self._streams.values()]

    def connection(self, connection_id: int) -> ConnectionInfo | None:
        """The stream connection or UDP socket with this id, if still open."""
        if connection_id in self._streams:
            return self._streams[connection_id][1]
        if connection_id in self._udp:
            return self._udp[connection_id][1]
        return None

    def find_connection(
        self, target: TransportAddress, server_hostname: str | None = None
    ) -> ConnectionInfo | None:
        """An open stream connection to ``target`` that :meth:`send` would reuse."""
        found = self._reusable(target, server_hostname)
        return None if found is None else found[1]

    def close_connection(self, connection_id: int) -> None:
        """Close one stream connection (flushing what is queued)."""
        entry = self._streams.get(connection_id)
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
        stream, info = await self._stream_for(target, server_hostname, connection_id, ssl)
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
            family = _family(target.host)
            entry = next(
                (e for e in self._udp.values() if _family(e[1].local.host) == family), None
            )
        if entry is None:
            # No UDP listener: an ephemeral socket, which also receives the replies.
            wildcard = "::" if _family(target.host) == socket.AF_INET6 else "0.0.0.0"
            entry = await self._open_udp(self.settings.source_host or wildcard, 0)
        endpoint, info = entry
        try:
            endpoint.sendto(data, (target.host, target.port))
        except (OSError, ConnectionError) as error:
            raise TransportError(f"cannot send to {target}: {error}") from error
        return info

    async def _stream_for(
        self,
        target: TransportAddress,
        server_hostname: str | None,
        connection_id: int | None,
        context: ssl.SSLContext | None,
    ) -> tuple[StreamConnection, ConnectionInfo]:
        if connection_id is not None:
            entry = self._streams.get(connection_id)
            if entry is not None and not entry[0].closed:
                return entry
        found = self._reusable(target, server_hostname)
        if found is not None:
            return found
        key = (target, server_hostname)
        pending = self._connecting.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._connecting[key] = pending
            try:
                new_id = await self._connect(target, server_hostname, context)
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except BaseException as error:
                pending.set_exception(error)
                pending.exception()  # mark retrieved: there may be no concurrent sender
                raise
            else:
                pending.set_result(new_id)
            finally:
                del self._connecting[key]
        else:
            new_id = await asyncio.shield(pending)
        entry = self._streams.get(new_id)
        if entry is None:
            raise TransportError(f"connection to {target} closed before use")
        return entry

    def _reusable(
        self, target: TransportAddress, server_hostname: str | None
    ) -> tuple[StreamConnection, ConnectionInfo] | None:
        wanted = server_hostname.lower() if server_hostname else None
        for connection_id in reversed(self._by_remote.get(target, [])):
            stream, info = self._streams[connection_id]
            if stream.closed or stream.transport is None or stream.transport.is_closing():
                continue
            if wanted is not None and info.transport is Transport.TLS:
                names = {name.lower() for name in info.peer_names}
                if info.server_hostname is not None:
                    names.add(info.server_hostname.lower())
                if wanted not in names:
                    continue
            return stream, info
        return None

    async def _connect(
        self,
        target: TransportAddress,
        server_hostname: str | None,
        context: ssl.SSLContext | None,
    ) -> int:
        if self._closing:
            raise TransportError("transport manager is closed")
        loop = asyncio.get_running_loop()
        tls = target.transport is Transport.TLS
        if tls:
            context = context or self.tls_client
            if context is None:
                raise TransportError(f"no TLS client context to reach {target}")
            server_hostname = server_hostname or target.host
        sock = await self._connected_socket(target)
        stream = self._new_stream(
            target.transport,
            outbound=True,
            server_hostname=server_hostname if tls else None,
        )
        try:
            await loop.create_connection(
                lambda: stream,
                sock=sock,
                ssl=context if tls else None,
                server_hostname=server_hostname if tls else None,
                ssl_handshake_timeout=self.settings.tls_handshake_timeout if tls else None,
            )
        except OSError as error:  # ssl.SSLError and TimeoutError included
            sock.close()
            reason = describe_tls_error(error) if tls else _describe_os_error(error)
            logger.warning("connection to %s failed: %s", target, reason)
            # python/cpython#109534, our side: see _tls_handshake (the cause is kept, its
            # traceback, which holds the SSLProtocol and its buffers, is not).
            error.__traceback__ = None
            error.__context__ = None
            raise TransportError(f"cannot connect to {target}: {reason}") from error
        if stream.id not in self._streams:
            raise TransportError(f"connection to {target} closed during setup")
        return stream.id

    async def _connected_socket(self, target: TransportAddress) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as error:
            raise TransportError(f"cannot resolve {target}: {error}") from error
        family, _, _, _, address = infos[0]
        local_host = self.settings.source_host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        ports = self._ports.candidates() if self._ports is not None else iter((0,))
        last_error: OSError | None = None
        for port in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((local_host, port))
            except OSError as error:
                sock.close()
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    last_error = error
                    continue  # busy or reserved: next port of the range
                raise TransportError(f"cannot bind {local_host}:{port}: {error}") from error
            try:
                await asyncio.wait_for(
                    loop.sock_connect(sock, address), self.settings.connect_timeout
                )
            except TimeoutError as error:
                sock.close()
                raise TransportError(f"connecting to {target} timed out") from error
            except OSError as error:
                sock.close()
                if error.errno == errno.EADDRNOTAVAIL and port != 0:
                    # Same 4-tuple still in TIME_WAIT: try another source port.
                    last_error = error
                    continue
                reason = _describe_os_error(error)
                logger.warning("connection to %s failed: %s", target, reason)
                raise TransportError(f"cannot connect to {target}: {reason}") from error
            except BaseException:
                sock.close()
                raise
            return sock
        raise TransportError(
            f"no free source port in {self.settings.outbound_ports} to reach {target}"
            f" (last error: {last_error})"
        )

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
        self._stream_transport[stream.id] = transport
        return stream

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background coroutine, cancelled by :meth:`close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    # -- internals: connection limits ------------------------------------------------

    @property
    def stream_count(self) -> int:
        """Stream connections held: open ones and inbound TLS handshakes in progress."""
        return len(self._streams) + len(self._handshakes)

    def _admit(self, host: str, peer: str, transport: Transport) -> bool:
        """Make room for a new inbound connection from ``host``, or say no.

        At a cap the victim is the oldest idle inbound connection (of that source for the
        per-source cap): first one that never carried a SIP message (a handshake still
        running, a connection that sent nothing or only junk), then the one whose last
        message is oldest.
        """
        per_source = self.settings.max_connections_per_source
        if per_source is not None and len(self._inbound.get(host, ())) >= per_source:
            ids = list(self._inbound.get(host, ()))
            if not self._evict(ids, f"{per_source} from {host}", ordered=True):
                return self._refuse(peer, transport, f"{per_source} connections from {host}")
        total = self._max_connections
        if total is not None and self.stream_count >= total:
            candidates = (i for ids in list(self._inbound.values()) for i in ids)
            if not self._evict(candidates, f"{total} in all", ordered=False):
                return self._refuse(peer, transport, f"{total} connections in all")
        return True

    def _evict(self, candidates: Any, cap: str, *, ordered: bool) -> bool:
        # ``ordered``: ids come oldest first (one source's table), so the first that never
        # carried a message is the victim; otherwise every candidate is ranked.
        victim: int | None = None
        best: tuple[int, float, int] | None = None
        for connection_id in candidates:
            if connection_id in self._handshakes:
                rank = (0, 0.0, connection_id)
            else:
                entry = self._streams.get(connection_id)
                if entry is None or entry[0].closed:
                    continue
                stream = entry[0]
                rank = (min(stream.messages, 1), stream.last_message_at, connection_id)
            if best is None or rank < best:
                best, victim = rank, connection_id
                if ordered and rank[0] == 0:
                    break
        if victim is None:
            return False
        self.counters.evicted += 1
        if victim in self._handshakes:
            host, task = self._handshakes.pop(victim)
            logger.info("connection cap (%s): dropping a TLS handshake from %s", cap, host)
            self._forget_inbound(victim, host)
            task.cancel()
            return True
        stream, info = self._streams[victim]
        logger.info(
            "connection cap (%s): closing the oldest idle connection %d from %s",
            cap,
            victim,
            info.remote,
        )
        self._forget_stream(stream)
        stream.abort()
        return True

    def _refuse(self, peer: str, transport: Transport, cap: str) -> bool:
        self.counters.refused += 1
        logger.warning(
            "connection cap reached (%s), none idle: %s connection from %s refused",
            cap,
            transport.value,
            peer,
        )
        return False

    def _forget_inbound(self, connection_id: int, host: str) -> None:
        self._stream_transport.pop(connection_id, None)
        ids = self._inbound.get(host)
        if ids is not None:
            ids.pop(connection_id, None)
            if not ids:
                del self._inbound[host]

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("transport task failed", exc_info=task.exception())

    # -- StreamOwner -----------------------------------------------------------------

    def stream_ready(self, stream: StreamConnection) -> None:
        transport = self._stream_transport[stream.id]
        if self._closing or stream.peername is None or stream.sockname is None:
            self._handshakes.pop(stream.id, None)
            for ids in self._inbound.values():
                ids.pop(stream.id, None)
            stream.abort()
            return
        host = stream.peername[0]
        self._handshakes.pop(stream.id, None)  # a TLS handshake that just succeeded
        if not stream.outbound and transport is Transport.TCP:
            # TCP is accepted by asyncio's server: the caps are applied as it arrives.
            if not self._admit(host, format_address(stream.peername), transport):
                self._stream_transport.pop(stream.id, None)
                stream.abort()
                return
            self._inbound.setdefault(host, {})[stream.id] = None
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
        self._streams[stream.id] = (stream, info)
        self._by_remote.setdefault(remote, []).append(stream.id)
        logger.debug(
            "connection %d %s %s%s",
            stream.id,
            "to" if stream.outbound else "from",
            remote,
            f" (certificate names: {', '.join(info.peer_names)})" if info.peer_names else "",
        )

    def stream_frame(self, stream: StreamConnection, data: bytes) -> None:
        entry = self._streams.get(stream.id)
        if entry is None:
            return
        info = entry[1]
        assert info.remote is not None
        self._dispatch.deliver(data, info.remote, info, lambda reply: stream.write(reply))

    def stream_unframeable(self, stream: StreamConnection, error: ParseError, data: bytes) -> None:
        entry = self._streams.get(stream.id)
        peer = entry[1].remote if entry is not None else stream.peername
        logger.warning(
            "connection %d from %s cannot be framed (%s): closing", stream.id, peer, error.message
        )
        self._dispatch.answer_malformed(data, error, peer, stream.write)

    def stream_oversized(self, stream: StreamConnection, item: Oversized) -> None:
        entry = self._streams.get(stream.id)
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
        self._forget_stream(stream)
        info = self._closed_info.pop(stream.id, None)
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

    def _forget_stream(self, stream: StreamConnection) -> None:
        """Take a stream out of every table (when it closes, or when it is evicted: the
        slot is free at once, before asyncio reports the close)."""
        self._stream_transport.pop(stream.id, None)
        entry = self._streams.pop(stream.id, None)
        if entry is None:
            return
        info = entry[1]
        self._closed_info[stream.id] = info
        assert info.remote is not None
        if not stream.outbound:
            self._forget_inbound(stream.id, info.remote.host)
        ids = self._by_remote.get(info.remote)
        if ids is not None:
            if stream.id in ids:
                ids.remove(stream.id)
            if not ids:
                del self._by_remote[info.remote]

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


def _describe_os_error(error: OSError) -> str:
    """The errno's own words ("Connection refused"), which asyncio's "Connect call failed"
    leaves out; zone status shows them."""
    if error.errno is not None and not isinstance(error, TimeoutError):
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def _capped_by_fd_limit(wanted: int | None) -> int | None:
    """``wanted`` connections, at most half the open-file limit: past it accept() fails
    with EMFILE for every listener (and media sockets cannot be bound)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    ceiling = max(16, soft // 2)
    if wanted is None or wanted > ceiling:
        logger.info(
            "stream connections capped at %d: half the open-file limit of %d", ceiling, soft
        )
        return ceiling
    return wanted


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET
