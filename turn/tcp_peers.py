"""TCP connections to peers at TCP relays: RFC 6062's (accepted at the relay, or opened
for a Connect request and then piped to a client data connection) and MS-TURN's (one per
peer at the relayed address, its bytes carried in the client's control connection)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, cast

from .allocation import Address, Allocation, ConnectPeer
from .ms_handler import Admission
from .sockets import socket_family

if TYPE_CHECKING:
    from .server import TurnServer
    from .tcp_client import TcpClient

# The asyncio adapter logs under one name, as before it was split.
logger = logging.getLogger("turn.server")


class PeerConnection(asyncio.Protocol):
    """An RFC 6062 peer TCP connection (accepted at the relay or opened by Connect)."""

    def __init__(self, server: TurnServer, alloc: Allocation, connection_id: int | None) -> None:
        self.server = server
        self.alloc = alloc
        self.connection_id = connection_id
        self.transport: asyncio.Transport
        self.client: TcpClient | None = None
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

    def pipe_to(self, client: TcpClient) -> None:
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


class MsPeerStream(asyncio.Protocol):
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

    async def connect(self, peer: Address) -> None:
        """Connect from the relay IP and a fresh port, as an ICE-TCP active candidate does
        (RFC 6544 advertises port 9 for it). From the relayed port itself the peer could not
        tell it from the TCP-PASS relay candidate on the same address: libnice then applies
        the nomination to the wrong pair and never completes."""
        server = self.server
        loop = server._require_loop()
        alloc = self.alloc
        sock = socket.socket(socket_family(peer[0]), socket.SOCK_STREAM)
        try:
            sock.bind((server.config.relay_bind_address, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, peer), server.config.connect_timeout)
            await loop.create_connection(lambda: self, sock=sock)
        except (TimeoutError, OSError) as exc:
            sock.close()
            logger.info("MS-TURN allocation #%d: connect to %s:%d failed: %s", alloc.id, *peer, exc)
            server._ms_stream_gone(self)
        except BaseException:
            sock.close()
            raise

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


async def connect_peer(server: TurnServer, action: ConnectPeer) -> None:
    """RFC 6062 Connect: open the peer connection, then tell the core (it answers)."""
    loop = server._require_loop()
    peer = PeerConnection(server, action.allocation, action.connection_id)
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: peer, action.peer[0], action.peer[1]),
            server.config.connect_timeout,
        )
    except (TimeoutError, OSError) as exc:
        logger.info(
            "allocation #%d: connect to %s failed: %s", action.allocation.id, action.peer, exc
        )
        server._run(server.core.peer_connect_failed(action.connection_id, loop.time()))
        return
    server._peers[action.connection_id] = peer
    server._run(server.core.peer_connected(action.connection_id, loop.time()))
