"""SIP transports over asyncio: UDP, TCP and TLS listeners and connections (RFC 3261 §18).

One :class:`TransportManager` owns every socket and connection. It parses what arrives
and hands each message up with its source address and connection; it answers malformed
requests itself (400 naming the problem, 413 when too large) and keeps serving. Responses
sent to the source of a request go back on the connection the request came on, and open
connections to a peer are reused. Outbound TCP/TLS connections take their source port
from a configured range (Gateway Expressway default 25000-29999).

Works on the default asyncio loop and on uvloop (only public loop APIs are used).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from sip.errors import ParseError, ProtocolError
from sip.message import Request, Response, error_response, parse_message
from sip.port_range import DEFAULT_OUTBOUND_PORTS, PortCursor, PortRange
from sip.tls import describe_tls_error
from sip.transport_stream import StreamConnection
from sip.transport_udp import DatagramEndpoint

__all__ = [
    "ConnectionInfo",
    "ReceivedMessage",
    "Transport",
    "TransportAddress",
    "TransportError",
    "TransportManager",
    "TransportSettings",
    "source_host_of",
]

logger = logging.getLogger(__name__)


class Transport(enum.Enum):
    """A SIP transport, named as in the Via header's sent-protocol."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"

    @property
    def reliable(self) -> bool:
        """True for stream transports (RFC 3261 §17: no retransmission timers)."""
        return self is not Transport.UDP

    @property
    def default_port(self) -> int:
        """5061 for TLS, 5060 otherwise (RFC 3261 §19.1.2)."""
        return 5061 if self is Transport.TLS else 5060

    @classmethod
    def parse(cls, text: str) -> Transport:
        """Case-insensitive lookup (``"tls"`` -> ``Transport.TLS``)."""
        try:
            return cls(text.strip().upper())
        except ValueError:
            raise ValueError(f"unknown SIP transport {text!r}") from None


@dataclass(frozen=True, slots=True)
class TransportAddress:
    """Where a SIP message comes from or goes to."""

    transport: Transport
    """UDP, TCP or TLS."""
    host: str
    """IP address (or host name to resolve when sending)."""
    port: int
    """Port number."""

    @property
    def reliable(self) -> bool:
        """True when the transport is a stream (TCP or TLS)."""
        return self.transport.reliable

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.value}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A connection (stream) or a socket (UDP) known to the manager."""

    id: int
    """Unique id within the manager; pass it to ``send(connection_id=...)``."""
    transport: Transport
    """Transport of the connection."""
    local: TransportAddress
    """Our side."""
    remote: TransportAddress | None
    """The peer of a stream connection; None for a UDP socket."""
    outbound: bool
    """True when we opened it."""
    peer_names: tuple[str, ...] = ()
    """TLS: the peer certificate's subject CN then SAN DNS names (empty if none verified)."""
    server_hostname: str | None = None
    """Outbound TLS: the name the server certificate was checked against."""


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A parsed SIP message and where it came from."""

    message: Request | Response
    """The message."""
    source: TransportAddress
    """The address it came from (for streams, the connection's remote address)."""
    connection: ConnectionInfo
    """The connection (or UDP socket) it arrived on; responses go back there."""
    data: bytes = field(repr=False)
    """The message as received, for traces."""


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Transport configuration."""

    outbound_ports: PortRange | None = DEFAULT_OUTBOUND_PORTS
    """Source ports for outbound TCP/TLS; None lets the kernel choose."""
    source_host: str | None = None
    """Local address outbound TCP/TLS connections bind to; None for any. A host that
    listens on one address should send from it too (see :func:`source_host_of`): peers
    (and the gateway's zone match) know it by that address."""
    max_message_size: int = 65536
    """Largest accepted message (headers + body); larger gets 413."""
    idle_timeout: float | None = 600.0
    """Close a stream connection after this many seconds without traffic; None never."""
    keepalive_interval: float | None = None
    """RFC 5626 CRLF ping interval on outbound streams; None sends no pings."""
    keepalive_timeout: float = 10.0
    """Close an outbound stream when a pong is this late (RFC 5626 §4.4.1: 10 s)."""
    connect_timeout: float = 10.0
    """Seconds to establish a TCP connection."""
    tls_handshake_timeout: float = 10.0
    """Seconds for a TLS handshake (both directions)."""


class TransportError(ConnectionError):
    """A message could not be sent (no route, connection refused, handshake failed...)."""


class _Encodable(Protocol):
    def encode(self) -> bytes: ...


MessageHandler = Callable[[ReceivedMessage], None]
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
        self._on_message = on_message
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
            self.spawn(self._tls_handshake(conn, peer, context))

    async def _tls_handshake(
        self, conn: socket.socket, peer: tuple[Any, ...], context: ssl.SSLContext
    ) -> None:
        stream = self._new_stream(Transport.TLS, outbound=False, server_hostname=None)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: stream,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.settings.tls_handshake_timeout,
            )
        except OSError as error:  # ssl.SSLError, TimeoutError, ConnectionError included
            logger.warning(
                "TLS handshake with %s:%s failed: %s", peer[0], peer[1], describe_tls_error(error)
            )
            self._stream_transport.pop(stream.id, None)
            conn.close()

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
        )
        self._stream_transport[stream.id] = transport
        return stream

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background coroutine, cancelled by :meth:`close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("transport task failed", exc_info=task.exception())

    # -- StreamOwner -----------------------------------------------------------------

    def stream_ready(self, stream: StreamConnection) -> None:
        transport = self._stream_transport[stream.id]
        if self._closing or stream.peername is None or stream.sockname is None:
            stream.abort()
            return
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
        self._deliver(data, info.remote, info, lambda reply: stream.write(reply))

    def stream_unframeable(self, stream: StreamConnection, error: ParseError, data: bytes) -> None:
        entry = self._streams.get(stream.id)
        peer = entry[1].remote if entry is not None else stream.peername
        logger.warning(
            "connection %d from %s cannot be framed (%s): closing", stream.id, peer, error.message
        )
        self._answer_malformed(data, error, peer, stream.write)

    def stream_closed(self, stream: StreamConnection, exc: BaseException | None) -> None:
        self._stream_transport.pop(stream.id, None)
        entry = self._streams.pop(stream.id, None)
        if entry is None:
            return
        info = entry[1]
        assert info.remote is not None
        ids = self._by_remote.get(info.remote)
        if ids is not None:
            if stream.id in ids:
                ids.remove(stream.id)
            if not ids:
                del self._by_remote[info.remote]
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
        self._deliver(data, address, entry[1], lambda reply: endpoint.sendto(reply, source))

    def datagram_closed(self, endpoint: DatagramEndpoint) -> None:
        self._udp.pop(endpoint.id, None)

    # -- internals: dispatch ---------------------------------------------------------

    def _deliver(
        self,
        data: bytes,
        source: TransportAddress,
        info: ConnectionInfo,
        reply: Callable[[bytes], None],
    ) -> None:
        try:
            message = parse_message(data, max_size=self.settings.max_message_size)
        except ProtocolError as error:
            self._answer_malformed(data, error, source, reply)
            return
        except Exception:
            # A parser bug must not take the listener down; the contract says ParseError only.
            logger.exception("parser failed on a message from %s", source)
            return
        if isinstance(message, Request):
            try:
                stamp_received(message, source.host, source.port)
            except ProtocolError as error:
                self._answer_malformed(data, error, source, reply)
                return
        received = ReceivedMessage(message, source, info, data)
        if self._on_message is None:
            self._queue.put_nowait(received)
            return
        try:
            self._on_message(received)
        except Exception:
            logger.exception("message handler failed for a message from %s", source)

    def _answer_malformed(
        self,
        data: bytes,
        error: ProtocolError,
        source: object,
        reply: Callable[[bytes], None],
    ) -> None:
        try:
            answer = error_response(data, error)
        except Exception:
            logger.exception("could not build an error response for %s", source)
            answer = None
        if answer is None:
            logger.warning("dropped malformed message from %s: %s", source, error.message)
            return
        logger.warning(
            "malformed request from %s answered %d: %s", source, error.status_hint, error.message
        )
        try:
            reply(answer)
        except (OSError, ConnectionError) as send_error:
            logger.info("could not answer %s: %s", source, send_error)


def stamp_received(request: Request, host: str, port: int) -> None:
    """RFC 3261 §18.2.1 and RFC 3581 §4: the server transport records where a request
    really came from on its top Via (received when sent-by differs, rport when asked for),
    so that responses and proxies behind NAT reach the sender."""
    via = request.top_via
    params: dict[str, str | None] = {}
    if via.host.strip("[]") != host:
        params["received"] = host
    if via.has_rport:
        params["rport"] = str(port)
        params.setdefault("received", host)
    if params:
        request.headers.pop_first("Via")
        request.headers.prepend("Via", str(via.with_params(**params)))


def source_host_of(listen_host: str) -> str | None:
    """The ``source_host`` for a role listening on ``listen_host`` (None for a wildcard)."""
    try:
        if ipaddress.ip_address(listen_host.strip("[]")).is_unspecified:
            return None
    except ValueError:
        return None  # a name: let the kernel pick the route's address
    return listen_host.strip("[]")


def _describe_os_error(error: OSError) -> str:
    """The errno's own words ("Connection refused"), which asyncio's "Connect call failed"
    leaves out; zone status shows them."""
    if error.errno is not None and not isinstance(error, TimeoutError):
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET
