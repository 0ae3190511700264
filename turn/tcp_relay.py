"""RFC 6062 TCP relays in the sans-IO core: Connect and ConnectionBind, and the peer
connections they and incoming peers make (each with a deadline to be bound by).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import stun
from .allocation import (
    Action,
    Address,
    Allocation,
    AttachData,
    CloseConnection,
    ConnectionState,
    ConnectPeer,
    FiveTuple,
    SendToClient,
    TcpConnection,
    Transport,
)
from .errors import Refusal
from .rfc_handler import own_allocation, permitted_peer
from .stun import Attr, Class, Method, StunMessage

if TYPE_CHECKING:
    from .core import TurnCore


class TcpRelayHandler:
    """The RFC 6062 side of one ``TurnCore``: its ``connections`` and their data pipes."""

    def __init__(self, core: TurnCore) -> None:
        self.core = core

    def connect(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        core = self.core
        alloc = own_allocation(core, ft, username, key)
        if alloc.transport is not Transport.TCP:
            raise Refusal("Connect needs a TCP allocation", 400, key)
        raw_peer = msg.get(Attr.XOR_PEER_ADDRESS)
        if raw_peer is None:
            raise Refusal("XOR-PEER-ADDRESS missing", 400, key)
        peer = permitted_peer(core, msg, raw_peer, alloc, key)
        if any(
            core.connections[c].peer == peer for c in alloc.connections if c in core.connections
        ):
            raise Refusal("a connection to this peer exists", 446, key)
        # The client named this peer, so data it sends back is wanted (RFC 6062 §5.2).
        core._permit(alloc, peer[0], now)
        conn = self.new_connection(alloc, peer, ConnectionState.CONNECTING, now)
        conn.connect_tid = msg.transaction_id
        return [ConnectPeer(conn.id, alloc, peer)]

    def connection_bind(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        core = self.core
        if ft.transport is not Transport.TCP or ft in core.allocations:
            raise Refusal("ConnectionBind needs a fresh TCP connection", 400, key)
        raw = msg.get(Attr.CONNECTION_ID)
        if raw is None:
            raise Refusal("CONNECTION-ID missing", 400, key)
        conn = core.connections.get(stun.unpack_u32(raw))
        if conn is None or conn.state is not ConnectionState.AWAITING_BIND:
            raise Refusal("unknown CONNECTION-ID", 400, key)
        if conn.allocation.username != username:
            raise Refusal("connection belongs to another user", 441, key)
        conn.state = ConnectionState.BOUND
        conn.data_five_tuple = ft
        core._data_connections[ft] = conn.id
        response = stun.encode(
            Method.CONNECTION_BIND, Class.RESPONSE, msg.transaction_id, core._software, key=key
        )
        return [SendToClient(ft, response), AttachData(conn.id, ft)]

    def peer_connected(self, connection_id: int, now: float) -> list[Action]:
        """RFC 6062: the outgoing connection for a Connect request is up."""
        core = self.core
        conn = core.connections.get(connection_id)
        if conn is None or conn.state is not ConnectionState.CONNECTING:
            return [CloseConnection(connection_id)]
        conn.state = ConnectionState.AWAITING_BIND
        conn.deadline = now + core.config.connect_timeout
        core._push_timer(conn.deadline, "connection", connection_id)
        alloc = conn.allocation
        attrs = [(int(Attr.CONNECTION_ID), stun.pack_u32(connection_id)), *core._software]
        response = stun.encode(
            Method.CONNECT, Class.RESPONSE, conn.connect_tid, attrs, key=alloc.key
        )
        return [SendToClient(alloc.five_tuple, response)]

    def peer_connect_failed(self, connection_id: int, now: float) -> list[Action]:
        core = self.core
        conn = core.connections.pop(connection_id, None)
        if conn is None:
            return []
        alloc = conn.allocation
        alloc.connections.discard(connection_id)
        if core.allocations.get(alloc.five_tuple) is not alloc:
            return []
        attrs = [(int(Attr.ERROR_CODE), stun.pack_error_code(447)), *core._software]
        response = stun.encode(Method.CONNECT, Class.ERROR, conn.connect_tid, attrs, key=alloc.key)
        return [SendToClient(alloc.five_tuple, response)]

    def peer_connection_incoming(
        self, alloc: Allocation, peer: Address, now: float
    ) -> tuple[int | None, list[Action]]:
        """RFC 6062 §5.3: a peer connected to a TCP relay. None refuses it (no permission)."""
        core = self.core
        if core.allocations.get(alloc.five_tuple) is not alloc or not alloc.permitted(peer[0], now):
            return None, []
        conn = self.new_connection(alloc, peer, ConnectionState.AWAITING_BIND, now)
        tid = core._rng.randbytes(12)
        attrs = [
            (int(Attr.CONNECTION_ID), stun.pack_u32(conn.id)),
            (int(Attr.XOR_PEER_ADDRESS), stun.pack_xor_address(peer, tid)),
            *core._software,
        ]
        indication = stun.encode(Method.CONNECTION_ATTEMPT, Class.INDICATION, tid, attrs)
        return conn.id, [SendToClient(alloc.five_tuple, indication)]

    def peer_connection_lost(self, connection_id: int) -> list[Action]:
        core = self.core
        conn = core.connections.pop(connection_id, None)
        if conn is None:
            return []
        conn.allocation.connections.discard(connection_id)
        if conn.data_five_tuple is not None:
            core._data_connections.pop(conn.data_five_tuple, None)
        return [CloseConnection(connection_id)]

    def new_connection(
        self, alloc: Allocation, peer: Address, state: ConnectionState, now: float
    ) -> TcpConnection:
        core = self.core
        cid = core._rng.randrange(1, 1 << 32)
        while cid in core.connections:
            cid = core._rng.randrange(1, 1 << 32)
        conn = TcpConnection(cid, alloc, peer, state, now + core.config.connect_timeout)
        core.connections[cid] = conn
        alloc.connections.add(cid)
        core._push_timer(conn.deadline, "connection", cid)
        return conn
