"""asyncio adapters around ``TurnCore``: UDP/TCP listeners, relay sockets, one timer.

Protocols are plain ``asyncio.DatagramProtocol`` / ``asyncio.Protocol`` (no streams) so
the relay path is one dict lookup and one ``sendto`` per packet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, cast

from . import ms_turn
from .allocation import (
    Action,
    Address,
    Allocation,
    AttachData,
    CloseClient,
    CloseConnection,
    CloseRelay,
    ConnectPeer,
    FiveTuple,
    OpenPeerStream,
    OpenRelay,
    ResumePeerStream,
    SendToClient,
    SendToPeer,
    Transport,
    TurnStats,
)
from .config import TurnConfig
from .core import TurnCore
from .errors import DecodeError
from .fast_udp import DatagramOut, FastUdp
from .framing import StreamFramer
from .ms_handler import Admission
from .ms_turn import FRAME_CONTROL, MsStreamFramer

logger = logging.getLogger(__name__)

UDP_BUFFER = 1 << 20
_UDP = Transport.UDP
_new_tuple = tuple.__new__
_BIND_RETRIES = 50


class TurnServer:
    """A TURN server on the running event loop: ``await start()``, ``stats()``, ``await stop()``."""

    def __init__(self, config: TurnConfig, core: TurnCore | None = None) -> None:
        self.config = config
        self.core = core or TurnCore(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: dict[Address, DatagramOut] = {}
        self._tcp_servers: list[asyncio.AbstractServer] = []
        self._clients: dict[FiveTuple, _TcpClient] = {}
        self._relay_udp: dict[int, DatagramOut] = {}
        # The sockets' own sendto, for the per-packet paths: it skips the transport's
        # per-call address parsing and cache; OSError (a full buffer, an ICMP error) falls
        # back to the transport, which queues the datagram or reports the error.
        self._udp_raw: dict[Address, Callable[[bytes, Any], int]] = {}
        self._relay_raw: dict[int, Callable[[bytes, Any], int]] = {}
        self._relay_tcp: dict[int, asyncio.AbstractServer] = {}
        self._opening: set[int] = set()
        self._peers: dict[int, _PeerConnection] = {}
        self._ms_streams: dict[tuple[int, Address], _MsPeerStream] = {}
        """MS-TURN TCP allocations' peer connections, by (allocation id, peer)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._fast: FastUdp | None = None
        """The batched UDP path (turn.fast_udp) where enabled; else asyncio transports."""
        self.addresses: list[tuple[str, str, int]] = []
        """(transport, host, port) of each listener, once started."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._start_fast_path(self._loop)
        host = self.config.listen
        low, high = self.config.ports
        if low == 0:
            await self._listen_any_port(host)
        else:
            try:
                for port in range(low, high + 1):
                    await self._listen(host, port)
            except OSError:
                await self._close_listeners()  # no half-started server
                raise
        try:
            for port in self.config.tcp_ports:
                if ("tcp", host, port) not in self.addresses:
                    await self._listen(host, port, udp=False)
        except OSError:
            await self._close_listeners()
            raise
        for transport, h, p in self.addresses:
            logger.info("TURN listening on %s %s:%d", transport, h, p)
        logger.info(
            "TURN relays on %s ports %d-%d, realm %s",
            self.core.relay_host,
            *self.config.relay_ports,
            self.config.realm,
        )

    async def _listen_any_port(self, host: str) -> None:
        # UDP and TCP on the same (free) port number, as clients expect one port for both.
        last: OSError | None = None
        for _ in range(_BIND_RETRIES):
            probe = socket.socket(_family(host), socket.SOCK_DGRAM)
            try:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
            finally:
                probe.close()
            try:
                await self._listen(host, port)
                return
            except OSError as exc:
                last = exc
                await self._close_listeners()
        raise OSError(f"no free port on {host}: {last}")

    async def _listen(self, host: str, port: int, *, udp: bool = True) -> None:
        loop = self._require_loop()
        if self.config.udp and udp:
            sock = socket.socket(_family(host), socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
                sock.setblocking(False)
                _grow_buffers(sock)
                if self._fast is not None:
                    listener = _UdpListener(self, (host, port))
                    transport: DatagramOut = self._fast.listen(
                        sock, (host, port), listener.datagram_received
                    )
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _UdpListener(self, (host, port)), sock=sock
                    )
            except BaseException:
                sock.close()
                raise
            self._udp[(host, port)] = transport
            self._udp_raw[(host, port)] = sock.sendto
            self.addresses.append(("udp", host, port))
        if self.config.tcp:
            server = await loop.create_server(
                lambda: _TcpClient(self), host=host, port=port, reuse_address=True
            )
            self._tcp_servers.append(server)
            self.addresses.append(("tcp", host, port))

    async def _close_listeners(self) -> None:
        for transport in self._udp.values():
            transport.close()
            if self._fast is not None:
                self._fast.forget(transport)
        self._udp.clear()
        self._udp_raw.clear()
        for server in self._tcp_servers:
            server.close()
            await server.wait_closed()
        self._tcp_servers.clear()
        self.addresses.clear()

    async def stop(self) -> None:
        """Close listeners, delete every allocation, close client connections."""
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for server in self._tcp_servers:
            server.close()
        self._run(self.core.close_all())
        for client in list(self._clients.values()):
            client.transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self._udp.values():
            transport.close()
        for server in self._tcp_servers:
            await server.wait_closed()
        self._udp.clear()
        self._udp_raw.clear()
        self._tcp_servers.clear()
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks
        logger.info("TURN stopped: %s", format_stats(self.stats()))
        if self._fast is not None:
            self._fast.close()
            self._fast = None

    def stats(self) -> TurnStats:
        loop = self._loop or asyncio.get_event_loop()
        if self._fast is not None:
            self._fast.add_counters(self.core.counters)
        return self.core.stats(loop.time())

    async def __aenter__(self) -> TurnServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- core driving -----------------------------------------------------------------------

    def _start_fast_path(self, loop: asyncio.AbstractEventLoop) -> None:
        """UDP on the batched fast path (turn.fast_udp) where its hub is available."""
        if self._fast is None and self.config.udp:
            self._fast = FastUdp.create(loop)
            if self._fast is not None:
                self.core.publish_forwarding = True

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "TurnServer.start() first"
        return self._loop

    def control(self, data: bytes, ft: FiveTuple) -> None:
        """A STUN message from a client."""
        self._run(self.core.handle_stun(data, ft, self._require_loop().time()))

    def client_data(self, data: bytes, ft: FiveTuple) -> None:
        """Bytes from a client that are not control: MS-TURN's unencapsulated data."""
        self._run(self.core.client_data(ft, data, self._require_loop().time()))

    def _run(self, actions: list[Action]) -> None:
        loop = self._require_loop()
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, SendToClient):
                self.send_to_client(action.five_tuple, action.data)
            elif isinstance(action, SendToPeer):
                relay = self._relay_udp.get(action.allocation.id)
                if relay is not None:
                    relay.sendto(action.data, action.peer)
                else:
                    self._ms_stream_send(action)
            elif isinstance(action, OpenPeerStream):
                self._ms_open_stream(action)
            elif isinstance(action, ResumePeerStream):
                held = self._ms_streams.get((action.allocation.id, action.peer))
                if held is not None:
                    held.resume()
            elif isinstance(action, OpenRelay):
                pending.extend(self._open_relay(action.allocation))
            elif isinstance(action, CloseRelay):
                self._close_relay(action.allocation)
            elif isinstance(action, ConnectPeer):
                self._spawn(self._connect_peer(action))
            elif isinstance(action, AttachData):
                self._attach(action)
            elif isinstance(action, CloseConnection):
                peer = self._peers.pop(action.connection_id, None)
                if peer is not None:
                    peer.close()
            elif isinstance(action, CloseClient):
                client = self._clients.get(action.five_tuple)
                if client is not None:
                    client.transport.close()
        if self._fast is not None:
            self._fast.publish(self.core)
        self._rearm(loop)

    def _rearm(self, loop: asyncio.AbstractEventLoop) -> None:
        when = self.core.get_timer()
        if when is None:
            return
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._require_loop()
        self._run(self.core.handle_timer(loop.time()))

    def send_to_client(self, ft: FiveTuple, data: bytes) -> None:
        if ft.transport is Transport.UDP:
            listener = self._udp.get(ft.server)
            if listener is not None:
                listener.sendto(data, ft.client)
        else:
            client = self._clients.get(ft)
            if client is not None:
                client.transport.write(data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- relays -----------------------------------------------------------------------------

    def _open_relay(self, alloc: Allocation) -> list[Action]:
        """Bind now (so a taken port is known at once); wire up asyncio in a task."""
        host = self.config.relay_bind_address
        kind = socket.SOCK_STREAM if alloc.transport is Transport.TCP else socket.SOCK_DGRAM
        sock = socket.socket(_family(host), kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, alloc.relay_port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            logger.debug("relay port %d unavailable: %s", alloc.relay_port, exc)
            return self.core.relay_failed(alloc, self._require_loop().time())
        self._opening.add(alloc.id)
        self._spawn(self._wire_relay(alloc, sock))
        return []

    async def _wire_relay(self, alloc: Allocation, sock: socket.socket) -> None:
        loop = self._require_loop()
        try:
            if alloc.transport is Transport.TCP:
                factory: Callable[[], asyncio.Protocol] = (
                    (lambda: _MsPeerStream(self, alloc, None))
                    if alloc.ms is not None
                    else (lambda: _PeerConnection(self, alloc, None))
                )
                server = await loop.create_server(factory, sock=sock)
                self._relay_tcp[alloc.id] = server
            else:
                _grow_buffers(sock)
                fast = self._fast
                if fast is not None and fast.has_listener(alloc.five_tuple.server):
                    relay = self._udp_relay(alloc, loop)
                    self._relay_udp[alloc.id] = fast.relay(alloc, sock, relay.datagram_received)
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: self._udp_relay(alloc, loop), sock=sock
                    )
                    self._relay_udp[alloc.id] = transport
                self._relay_raw[alloc.id] = sock.sendto
        except BaseException:
            sock.close()
            self._opening.discard(alloc.id)
            raise
        if alloc.id not in self._opening:  # deleted while wiring
            self._close_relay(alloc)
            return
        self._opening.discard(alloc.id)
        self._run(self.core.relay_opened(alloc, loop.time()))
        if self._fast is not None:
            self._fast.publish_one(self.core, alloc)

    def _udp_relay(self, alloc: Allocation, loop: asyncio.AbstractEventLoop) -> _UdpRelay:
        ft = alloc.five_tuple
        if ft.transport is Transport.UDP:
            # The listener's bound sendto and the client address, held by the relay: one
            # C call per packet to the client, no Python frame in between.
            listener = self._udp[ft.server]
            raw = self._udp_raw[ft.server]
            return _UdpRelay(self.core, alloc, raw, listener.sendto, ft.client, loop)
        send = self.send_to_client
        return _UdpRelay(self.core, alloc, None, lambda data, to: send(to, data), ft, loop)

    def _close_relay(self, alloc: Allocation) -> None:
        self._opening.discard(alloc.id)
        self._relay_raw.pop(alloc.id, None)
        udp = self._relay_udp.pop(alloc.id, None)
        if udp is not None:
            udp.close()
            if self._fast is not None:
                self._fast.forget(udp, alloc.id)
        tcp = self._relay_tcp.pop(alloc.id, None)
        if tcp is not None:
            tcp.close()
        if alloc.ms is not None and alloc.transport is Transport.TCP:
            self._ms_close_streams(alloc)

    # -- MS-TURN TCP relays: one TCP connection per peer at the relayed address -------------

    def _ms_open_stream(self, action: OpenPeerStream) -> None:
        stream = _MsPeerStream(self, action.allocation, action.peer)
        self._ms_streams[(action.allocation.id, action.peer)] = stream
        self._spawn(self._ms_connect(stream, action.peer))

    async def _ms_connect(self, stream: _MsPeerStream, peer: Address) -> None:
        """Connect from the relay IP and a fresh port, as an ICE-TCP active candidate does
        (RFC 6544 advertises port 9 for it). From the relayed port itself the peer could not
        tell it from the TCP-PASS relay candidate on the same address: libnice then applies
        the nomination to the wrong pair and never completes."""
        loop = self._require_loop()
        alloc = stream.alloc
        sock = socket.socket(_family(peer[0]), socket.SOCK_STREAM)
        try:
            sock.bind((self.config.relay_bind_address, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, peer), self.config.connect_timeout)
            await loop.create_connection(lambda: stream, sock=sock)
        except (TimeoutError, OSError) as exc:
            sock.close()
            logger.info("MS-TURN allocation #%d: connect to %s:%d failed: %s", alloc.id, *peer, exc)
            self._ms_stream_gone(stream)
        except BaseException:
            sock.close()
            raise

    def _ms_stream_send(self, action: SendToPeer) -> None:
        stream = self._ms_streams.get((action.allocation.id, action.peer))
        if stream is not None:
            stream.write(action.data)

    def _ms_stream_gone(self, stream: _MsPeerStream) -> None:
        peer = stream.peer
        if peer is not None and self._ms_streams.get((stream.alloc.id, peer)) is stream:
            del self._ms_streams[(stream.alloc.id, peer)]
            self.core.ms.stream_closed(stream.alloc, peer)

    def _ms_close_streams(self, alloc: Allocation) -> None:
        for key in [k for k in self._ms_streams if k[0] == alloc.id]:
            self._ms_streams.pop(key).close()

    # -- RFC 6062 ---------------------------------------------------------------------------

    async def _connect_peer(self, action: ConnectPeer) -> None:
        loop = self._require_loop()
        peer = _PeerConnection(self, action.allocation, action.connection_id)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: peer, action.peer[0], action.peer[1]),
                self.config.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            logger.info(
                "allocation #%d: connect to %s failed: %s", action.allocation.id, action.peer, exc
            )
            self._run(self.core.peer_connect_failed(action.connection_id, loop.time()))
            return
        self._peers[action.connection_id] = peer
        self._run(self.core.peer_connected(action.connection_id, loop.time()))

    def _attach(self, action: AttachData) -> None:
        client = self._clients.get(action.five_tuple)
        peer = self._peers.get(action.connection_id)
        if client is None or peer is None:
            self._run(self.core.peer_connection_lost(action.connection_id))
            return
        client.pipe_to(peer)
        peer.pipe_to(client)

    def register_peer(self, connection_id: int, peer: _PeerConnection) -> None:
        self._peers[connection_id] = peer

    def peer_lost(self, connection_id: int) -> None:
        self._peers.pop(connection_id, None)
        self._run(self.core.peer_connection_lost(connection_id))


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, server: TurnServer, local: Address) -> None:
        self.server = server
        self.core = server.core
        self.local = local
        self.relays = server._relay_udp
        self.loop = asyncio.get_running_loop()
        # Bound methods looked up once, not per packet (the ChannelData hot path).
        self.channel_data = self.core.channel_data_from_client
        self.time = self.loop.time
        self.raw_for = server._relay_raw.get

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(addr) > 2:
            addr = addr[:2]
        # tuple.__new__ is FiveTuple(...) without the NamedTuple's Python-level __new__.
        ft = _new_tuple(FiveTuple, (_UDP, addr, self.local))
        first = data[0] if data else 0xFF
        if 0x40 <= first < 0x80:
            result = self.channel_data(ft, data, self.time())
            if result is not None:
                send = self.raw_for(result[0].id)
                if send is not None:
                    try:
                        send(result[2], result[1])
                    except OSError:
                        relay = self.relays.get(result[0].id)
                        if relay is not None:
                            relay.sendto(result[2], result[1])
                return
        try:
            if first < 0x40:
                self.server.control(data, ft)
            else:  # RTP & co. from an MS-TURN client, for its active destination
                self.server.client_data(data, ft)
        except Exception:  # a listener must survive anything a packet can trigger
            logger.exception("error handling a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP listener error: %s", exc)


class _UdpRelay(asyncio.DatagramProtocol):
    """A UDP relay port: peer datagrams go through ``TurnCore.data_from_peer`` (which owns
    permissions, channels and expiry) and out with ``send(frame, to)``."""

    __slots__ = ("data_from_peer", "alloc", "raw", "send", "to", "time")

    def __init__(
        self,
        core: TurnCore,
        alloc: Allocation,
        raw: Callable[[bytes, Any], int] | None,
        send: Callable[[bytes, Any], None],
        to: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # Bound methods looked up once, not per packet.
        self.data_from_peer = core.data_from_peer
        self.alloc = alloc
        self.raw = raw
        """The UDP listener socket's sendto (see ``TurnServer._udp_raw``); None on TCP."""
        self.send = send
        self.to = to
        self.time = loop.time

    def datagram_received(self, data: bytes, addr: Any) -> None:
        out = self.data_from_peer(
            self.alloc, addr[:2] if len(addr) > 2 else addr, data, self.time()
        )
        if out is not None:
            if self.raw is not None:
                try:
                    self.raw(out, self.to)
                    return
                except OSError:
                    pass
            self.send(out, self.to)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from peers (port unreachable) must not end the relay.
        logger.debug("relay %d: %s", self.alloc.relay_port, exc)


class _TcpClient(asyncio.Protocol):
    """A client TCP connection: STUN/ChannelData control, or an RFC 6062 data pipe."""

    def __init__(self, server: TurnServer) -> None:
        self.server = server
        self.core = server.core
        self.framer = StreamFramer()
        self.ms_framer: MsStreamFramer | None = None
        """Set when the connection speaks MS-TURN's framing ([MS-TURN] 2.1.4)."""
        self.fresh = True
        self.tls_buffer = b""
        self.loop = server._require_loop()
        self.transport: asyncio.Transport
        self.ft: FiveTuple | None = None
        self.pipe: _PeerConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.ft = FiveTuple(Transport.TCP, (peer[0], peer[1]), (local[0], local[1]))
        self.server._clients[self.ft] = self
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.write(data, to_peer=True)
            return
        assert self.ft is not None
        if self.fresh and data:
            data = self._first_bytes(data)
            if not data:
                return
        if self.ms_framer is not None:
            self._ms_data_received(self.ms_framer, data)
            return
        try:
            self.framer.feed(data)
            while self.pipe is None:
                frame = self.framer.next_frame()
                if frame is None:
                    break
                if frame[0] >= 0x40:
                    result = self.core.channel_data_from_client(self.ft, frame, self.loop.time())
                    if result is not None:
                        relay = self.server._relay_udp.get(result[0].id)
                        if relay is not None:
                            relay.sendto(result[2], result[1])
                else:
                    self.server.control(frame, self.ft)
            if self.pipe is not None:
                rest = self.framer.take_remaining()
                if rest:
                    self.pipe.write(rest, to_peer=True)
        except DecodeError as exc:
            logger.info("closing TCP client %s: %s", self.ft.client, exc.message)
            self.transport.close()
        except Exception:
            logger.exception("error on TCP client %s", self.ft.client)
            self.transport.close()

    def _first_bytes(self, data: bytes) -> bytes:
        """Pick the connection's dialect from its first bytes; returns what is left to frame.

        0x02 / 0x03 start an MS-TURN frame; 0x16 a pseudo-TLS handshake ([MS-TURN] 2.1.3)
        after which MS-TURN frames follow; an RFC 8656 stream starts with a STUN type byte
        of 0x00 / 0x01 or a channel number 0x40-0x7F.
        """
        if data[0] == 0x16 or self.tls_buffer:
            self.tls_buffer += data
            try:
                length = ms_turn.pseudo_tls_record_length(self.tls_buffer)
                if length is None or len(self.tls_buffer) < length:
                    return b""
                ms_turn.check_pseudo_tls_client_hello(self.tls_buffer[:length])
            except DecodeError as exc:
                logger.info("closing TCP client %s: %s", self.ft and self.ft.client, exc.message)
                self.transport.close()
                return b""
            rest = self.tls_buffer[length:]
            self.tls_buffer = b""
            self.transport.write(ms_turn.pseudo_tls_server_hello(os.urandom(32), os.urandom(32)))
            self.ms_framer = MsStreamFramer()
            self.fresh = False
            return rest
        self.fresh = False
        if data[0] in (0x02, 0x03):
            self.ms_framer = MsStreamFramer()
        return data

    def _ms_data_received(self, framer: MsStreamFramer, data: bytes) -> None:
        assert self.ft is not None
        try:
            framer.feed(data)
            while not self.transport.is_closing():
                frame = framer.next_frame()
                if frame is None:
                    break
                kind, payload = frame
                if kind == FRAME_CONTROL:
                    self.server.control(payload, self.ft)
                else:
                    self.server.client_data(payload, self.ft)
        except DecodeError as exc:
            logger.info("closing MS-TURN TCP client %s: %s", self.ft.client, exc.message)
            self.transport.close()
        except Exception:
            logger.exception("error on MS-TURN TCP client %s", self.ft.client)
            self.transport.close()

    def pipe_to(self, peer: _PeerConnection) -> None:
        self.pipe = peer

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe is not None and not self.pipe.transport.is_closing():
            self.pipe.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ft is None:
            return
        self.server._clients.pop(self.ft, None)
        if self.server._loop is not None and not self.server._loop.is_closed():
            self.server._run(self.core.connection_lost(self.ft, self.server._loop.time()))


class _PeerConnection(asyncio.Protocol):
    """An RFC 6062 peer TCP connection (accepted at the relay or opened by Connect)."""

    def __init__(self, server: TurnServer, alloc: Allocation, connection_id: int | None) -> None:
        self.server = server
        self.alloc = alloc
        self.connection_id = connection_id
        self.transport: asyncio.Transport
        self.client: _TcpClient | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        transport.pause_reading()  # nothing to do with peer bytes until ConnectionBind
        if self.connection_id is None:  # accepted at the relay
            peer = transport.get_extra_info("peername")[:2]
            loop = self.server._require_loop()
            cid, actions = self.server.core.peer_connection_incoming(
                self.alloc, (peer[0], peer[1]), loop.time()
            )
            if cid is None:
                logger.info(
                    "allocation #%d: refused TCP peer %s (no permission)", self.alloc.id, peer
                )
                transport.close()
                self.closed = True
                return
            self.connection_id = cid
            self.server.register_peer(cid, self)
            self.server._run(actions)

    def pipe_to(self, client: _TcpClient) -> None:
        self.client = client
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes, *, to_peer: bool) -> None:
        counters = self.server.core.counters
        if to_peer:
            counters.bytes_to_peer += len(data)
            counters.packets_to_peer += 1
            self.transport.write(data)
        elif self.client is not None:
            counters.bytes_to_client += len(data)
            counters.packets_to_client += 1
            self.client.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.write(data, to_peer=False)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and not self.client.transport.is_closing():
            self.client.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self.transport.close()
        if self.client is not None:
            self.client.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client.transport.close()
        if (
            self.connection_id is not None
            and self.server._loop is not None
            and not self.server._loop.is_closed()
        ):
            self.server.peer_lost(self.connection_id)


class _MsPeerStream(asyncio.Protocol):
    """One peer's TCP connection at an MS-TURN TCP relayed address, accepted there (``peer``
    None until the core admits it) or opened from it for a Send. Its bytes reach the client
    as Data indications, or data frames from the active destination."""

    MAX_PENDING = 1 << 18

    def __init__(self, server: TurnServer, alloc: Allocation, peer: Address | None) -> None:
        self.server = server
        self.alloc = alloc
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.closed = False
        self.hold: asyncio.TimerHandle | None = None

    def resume(self) -> None:
        if self.hold is not None:
            self.hold.cancel()
            self.hold = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _hold_expired(self) -> None:
        self.hold = None
        logger.info("MS-TURN allocation #%d: TCP peer %s never permitted", self.alloc.id, self.peer)
        self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self.server
        if self.peer is None:  # accepted at the relayed address
            name = transport.get_extra_info("peername")
            peer = (name[0], name[1])
            loop = server._require_loop()
            admission = server.core.ms.stream_incoming(self.alloc, peer, loop.time())
            if self.closed or admission is Admission.REFUSE:
                logger.info("MS-TURN allocation #%d: refused TCP peer %s:%d", self.alloc.id, *peer)
                self.closed = True
                transport.close()
                return
            self.peer = peer
            server._ms_streams[(self.alloc.id, peer)] = self
            if admission is Admission.HOLD:
                self.transport.pause_reading()
                self.hold = loop.call_later(server.config.connect_timeout, self._hold_expired)
        if self.closed:
            transport.close()
            return
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        elif self.pending_bytes + len(data) <= self.MAX_PENDING:
            self.pending.append(data)
            self.pending_bytes += len(data)

    def data_received(self, data: bytes) -> None:
        server = self.server
        if self.peer is None:
            return
        for message in server.core.ms.stream_data(
            self.alloc, self.peer, data, server._require_loop().time()
        ):
            server.send_to_client(self.alloc.five_tuple, message)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hold is not None:
            self.hold.cancel()
            self.hold = None
        if self.server._loop is not None and not self.server._loop.is_closed():
            self.server._ms_stream_gone(self)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _grow_buffers(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
        except OSError:
            pass


def format_stats(stats: TurnStats) -> str:
    return (
        f"clients={stats.clients} allocations={stats.allocations} (tcp {stats.tcp_allocations}) "
        f"permissions={stats.permissions} channels={stats.channels} "
        f"tcp_connections={stats.tcp_connections} "
        f"to_peer={stats.packets_to_peer} pkts/{stats.bytes_to_peer} B "
        f"to_client={stats.packets_to_client} pkts/{stats.bytes_to_client} B "
        f"auth_failures={stats.auth_failures} peers_denied={stats.peers_denied}"
    )
