"""The asyncio adapter around ``TurnCore``: listeners, relay sockets, one timer, and the
core's actions carried out. Its protocols (``udp_protocols``, ``tcp_client``, ``tcp_peers``)
are plain ``asyncio.DatagramProtocol`` / ``asyncio.Protocol`` (no streams) so the relay path
is one dict lookup and one ``sendto`` per packet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

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
from .fast_udp import DatagramOut, FastUdp
from .sockets import UDP_BUFFER, grow_buffers, socket_family
from .tcp_client import TcpClient
from .tcp_peers import MsPeerStream, PeerConnection, connect_peer
from .udp_protocols import UdpListener, UdpRelay

__all__ = ["UDP_BUFFER", "TurnServer", "format_stats"]

logger = logging.getLogger(__name__)

_BIND_RETRIES = 50


class TurnServer:
    """A TURN server on the running event loop: ``await start()``, ``stats()``, ``await stop()``."""

    def __init__(self, config: TurnConfig, core: TurnCore | None = None) -> None:
        self.config = config
        self.core = core or TurnCore(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: dict[Address, DatagramOut] = {}
        self._tcp_servers: list[asyncio.AbstractServer] = []
        self._clients: dict[FiveTuple, TcpClient] = {}
        self._relay_udp: dict[int, DatagramOut] = {}
        # The sockets' own sendto, for the per-packet paths: it skips the transport's
        # per-call address parsing and cache; OSError (a full buffer, an ICMP error) falls
        # back to the transport, which queues the datagram or reports the error.
        self._udp_raw: dict[Address, Callable[[bytes, Any], int]] = {}
        self._relay_raw: dict[int, Callable[[bytes, Any], int]] = {}
        self._relay_tcp: dict[int, asyncio.AbstractServer] = {}
        self._opening: set[int] = set()
        self._peers: dict[int, PeerConnection] = {}
        self._ms_streams: dict[tuple[int, Address], MsPeerStream] = {}
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
            probe = socket.socket(socket_family(host), socket.SOCK_DGRAM)
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
            sock = socket.socket(socket_family(host), socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
                sock.setblocking(False)
                grow_buffers(sock)
                if self._fast is not None:
                    listener = UdpListener(self, (host, port))
                    transport: DatagramOut = self._fast.listen(
                        sock, (host, port), listener.datagram_received
                    )
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: UdpListener(self, (host, port)), sock=sock
                    )
            except BaseException:
                sock.close()
                raise
            self._udp[(host, port)] = transport
            self._udp_raw[(host, port)] = sock.sendto
            self.addresses.append(("udp", host, port))
        if self.config.tcp:
            server = await loop.create_server(
                lambda: TcpClient(self), host=host, port=port, reuse_address=True
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
                self._spawn(connect_peer(self, action))
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
        sock = socket.socket(socket_family(host), kind)
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
                    (lambda: MsPeerStream(self, alloc, None))
                    if alloc.ms is not None
                    else (lambda: PeerConnection(self, alloc, None))
                )
                server = await loop.create_server(factory, sock=sock)
                self._relay_tcp[alloc.id] = server
            else:
                grow_buffers(sock)
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

    def _udp_relay(self, alloc: Allocation, loop: asyncio.AbstractEventLoop) -> UdpRelay:
        ft = alloc.five_tuple
        if ft.transport is Transport.UDP:
            # The listener's bound sendto and the client address, held by the relay: one
            # C call per packet to the client, no Python frame in between.
            listener = self._udp[ft.server]
            raw = self._udp_raw[ft.server]
            return UdpRelay(self.core, alloc, raw, listener.sendto, ft.client, loop)
        send = self.send_to_client
        return UdpRelay(self.core, alloc, None, lambda data, to: send(to, data), ft, loop)

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
        stream = MsPeerStream(self, action.allocation, action.peer)
        self._ms_streams[(action.allocation.id, action.peer)] = stream
        self._spawn(stream.connect(action.peer))

    def _ms_stream_send(self, action: SendToPeer) -> None:
        stream = self._ms_streams.get((action.allocation.id, action.peer))
        if stream is not None:
            stream.write(action.data)

    def _ms_stream_gone(self, stream: MsPeerStream) -> None:
        peer = stream.peer
        if peer is not None and self._ms_streams.get((stream.alloc.id, peer)) is stream:
            del self._ms_streams[(stream.alloc.id, peer)]
            self.core.ms.stream_closed(stream.alloc, peer)

    def _ms_close_streams(self, alloc: Allocation) -> None:
        for key in [k for k in self._ms_streams if k[0] == alloc.id]:
            self._ms_streams.pop(key).close()

    # -- RFC 6062 ---------------------------------------------------------------------------

    def _attach(self, action: AttachData) -> None:
        client = self._clients.get(action.five_tuple)
        peer = self._peers.get(action.connection_id)
        if client is None or peer is None:
            self._run(self.core.peer_connection_lost(action.connection_id))
            return
        client.pipe_to(peer)
        peer.pipe_to(client)

    def register_peer(self, connection_id: int, peer: PeerConnection) -> None:
        self._peers[connection_id] = peer

    def peer_lost(self, connection_id: int) -> None:
        self._peers.pop(connection_id, None)
        self._run(self.core.peer_connection_lost(connection_id))


def format_stats(stats: TurnStats) -> str:
    return (
        f"clients={stats.clients} allocations={stats.allocations} (tcp {stats.tcp_allocations}) "
        f"permissions={stats.permissions} channels={stats.channels} "
        f"tcp_connections={stats.tcp_connections} "
        f"to_peer={stats.packets_to_peer} pkts/{stats.bytes_to_peer} B "
        f"to_client={stats.packets_to_client} pkts/{stats.bytes_to_client} B "
        f"auth_failures={stats.auth_failures} peers_denied={stats.peers_denied}"
    )
