"""The sans-IO TURN server core (RFC 8656, RFC 6062 TCP relays, RFC 8489 auth).

Driven aioquic-style: the adapter feeds bytes with the 5-tuple and ``now``, executes the
returned actions, and calls ``handle_timer(now)`` at ``get_timer()``. The relay hot paths
(``channel_data_from_client`` / ``data_from_peer``) never build a STUN message object.

This module holds what the dialects share: the allocations, quotas, timers and their expiry,
the forwarding tables and the counters. Requests are handled by ``rfc_handler`` (RFC 8656),
``allocate``, ``tcp_relay`` (RFC 6062) and ``ms_handler`` (MS-TURN).
"""

from __future__ import annotations

import heapq
import logging
import random
import struct
from dataclasses import dataclass
from typing import Any

from . import ms_turn, stun
from .allocate import MAX_BIND_ATTEMPTS, RESERVATION_LIFETIME, Allocator
from .allocation import (
    Action,
    Address,
    Allocation,
    AllocationState,
    CloseConnection,
    CloseRelay,
    ConnectionState,
    Counters,
    FiveTuple,
    TcpConnection,
    Transport,
    TurnStats,
)
from .auth import Authenticator
from .config import TurnConfig
from .ms_handler import MsTurnHandler
from .peers import PeerPolicy
from .port_pool import PortPool
from .rfc_handler import CHANNEL_MAX, CHANNEL_MIN, LEGACY_CHANNEL_MAX, RfcHandler
from .stun import Attr, Class, Method
from .tcp_relay import TcpRelayHandler

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "LEGACY_CHANNEL_MAX",
    "MAX_BIND_ATTEMPTS",
    "RESERVATION_LIFETIME",
    "ForwardingEntry",
    "TurnCore",
]

logger = logging.getLogger(__name__)

_CHANNEL_HEADER = struct.Struct("!HH")
_DATA_IND_HEADER = struct.Struct("!HHI12sHHBBH4sHH")
_DATA_INDICATION_TYPE = stun.message_type(Method.DATA, Class.INDICATION)


@dataclass(frozen=True, slots=True)
class ForwardingEntry:
    """A bound channel an adapter may relay without asking the core, until ``expires``: the
    earliest of the channel's, its peer's permission's and the allocation's expiry, so that
    ``channel_data_from_client`` and ``data_from_peer`` relay it as ChannelData exactly while
    ``now < expires`` (the adapter's clock must not run behind the core's)."""

    channel: int
    peer: Address
    expires: float


class TurnCore:
    """All allocations of one server. Not thread-safe; one event loop drives it."""

    def __init__(
        self,
        config: TurnConfig,
        *,
        authenticator: Authenticator | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.auth = authenticator or Authenticator(
            realm=config.realm,
            users=dict(config.users),
            secret=config.auth_secret,
            nonce_lifetime=config.nonce_lifetime,
            ms_secret=config.ms_turn_secret,
        )
        self.policy = PeerPolicy.from_strings(config.allow_peers)
        self._rng = rng or random.Random()
        self.pool = PortPool(*config.relay_ports, rng=self._rng)
        self.relay_host = config.external_address or config.relay_bind_address
        self.allocations: dict[FiveTuple, Allocation] = {}
        self.connections: dict[int, TcpConnection] = {}
        self._data_connections: dict[FiveTuple, int] = {}
        self._reservations: dict[bytes, tuple[int, float]] = {}
        self._per_user: dict[str, int] = {}
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = 0
        self._next_id = 1
        self.counters = Counters()
        self._channel_max = LEGACY_CHANNEL_MAX if config.legacy_channels else CHANNEL_MAX
        software = config.software
        self._software: tuple[tuple[int, bytes], ...] = (
            ((int(Attr.SOFTWARE), software.encode()),) if software else ()
        )
        self.rfc = RfcHandler(self)
        """The RFC 8656 dialect: its requests and Send indications."""
        self.allocator = Allocator(self)
        """Allocate requests (and MS-TURN's answer) and their relay ports."""
        self.tcp_relay = TcpRelayHandler(self)
        """RFC 6062: Connect, ConnectionBind and the peer connections."""
        self.ms = MsTurnHandler(self)
        """The MS-TURN dialect ([MS-TURN]) on the same allocations, quotas and policy."""
        self.publish_forwarding = False
        """Set by an adapter that relays bound channels on its own (``take_forwarding``)."""
        self._forwarding_changed: dict[int, Allocation] = {}

    # -- entry points -----------------------------------------------------------------------

    def handle_stun(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A STUN message from a client. Bad bytes give 400 when answerable, else nothing.

        The dialect is told per message: no RFC magic cookie in the header and MAGIC-COOKIE
        the first attribute is MS-TURN. Anything else from the 5-tuple of an MS-TURN
        allocation is unencapsulated data for its active destination (ICE checks included).
        """
        if ms_turn.is_ms_turn(data):
            return self.ms.handle(data, five_tuple, now)
        alloc = self.allocations.get(five_tuple)
        if alloc is not None and alloc.ms is not None:
            return self.ms.data_from_client(alloc, data, now)
        return self.rfc.handle(data, five_tuple, now)

    def client_data(self, five_tuple: FiveTuple, data: bytes, now: float) -> list[Action]:
        """Bytes that are neither STUN nor a bound channel's ChannelData: for an MS-TURN
        allocation, unencapsulated data to its active destination; else dropped."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None or alloc.ms is None:
            return []
        return self.ms.data_from_client(alloc, data, now)

    def channel_data_from_client(
        self, five_tuple: FiveTuple, data: bytes, now: float
    ) -> tuple[Allocation, Address, bytes] | None:
        """Hot path: a ChannelData frame -> (allocation, peer, payload), or None to drop."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None or len(data) < 4:
            return None
        number, length = _CHANNEL_HEADER.unpack_from(data)
        channel = alloc.channels.get(number)
        if channel is None or len(data) < 4 + length or channel.expiry <= now:
            return None
        peer = channel.peer
        expiry = alloc.permissions.get(peer[0])  # Allocation.permitted, inlined: per packet
        if expiry is None or expiry <= now:
            return None
        payload = data[4 : 4 + length]
        c = self.counters
        c.packets_to_peer += 1
        c.bytes_to_peer += length
        return alloc, peer, payload

    def data_from_peer(
        self, alloc: Allocation, peer: Address, data: bytes, now: float
    ) -> bytes | None:
        """Hot path: a datagram at a UDP relay -> ChannelData or a Data indication, or None."""
        expiry = alloc.permissions.get(peer[0])
        if expiry is None or expiry <= now or alloc.expiry <= now:
            # MS-TURN: the active destination stays permitted while it is set (its data
            # travels unencapsulated, so no Send refreshes a permission for it).
            ms = alloc.ms
            if ms is None or peer != ms.active_destination or alloc.expiry <= now:
                return None
        c = self.counters
        c.packets_to_client += 1
        c.bytes_to_client += len(data)
        number = alloc.peer_channels.get(peer)
        if number is not None and alloc.channels[number].expiry > now:
            if alloc.five_tuple.transport is Transport.TCP and len(data) % 4:
                # stream transports pad ChannelData
                return _CHANNEL_HEADER.pack(number, len(data)) + data + bytes(-len(data) % 4)
            return _CHANNEL_HEADER.pack(number, len(data)) + data
        if alloc.ms is not None:  # MS-TURN has no channels: tested off the channel path
            return self.ms.data_to_client(alloc, peer, data)
        return self._data_indication(peer, data)

    def relay_opened(self, alloc: Allocation, now: float) -> list[Action]:
        """The adapter bound the relay port: answer the Allocate."""
        return self.allocator.opened(alloc, now)

    def relay_failed(self, alloc: Allocation, now: float) -> list[Action]:
        """The relay port could not be bound (taken by another process): try another."""
        return self.allocator.failed(alloc, now)

    def peer_connected(self, connection_id: int, now: float) -> list[Action]:
        """RFC 6062: the outgoing connection for a Connect request is up."""
        return self.tcp_relay.peer_connected(connection_id, now)

    def peer_connect_failed(self, connection_id: int, now: float) -> list[Action]:
        return self.tcp_relay.peer_connect_failed(connection_id, now)

    def peer_connection_incoming(
        self, alloc: Allocation, peer: Address, now: float
    ) -> tuple[int | None, list[Action]]:
        """RFC 6062 §5.3: a peer connected to a TCP relay. None refuses it (no permission)."""
        return self.tcp_relay.peer_connection_incoming(alloc, peer, now)

    def connection_lost(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A client TCP connection closed: its allocation (RFC 8656 §3.1) or data pipe ends."""
        actions: list[Action] = []
        alloc = self.allocations.get(five_tuple)
        if alloc is not None:
            logger.info("allocation #%d: control connection closed", alloc.id)
            actions.extend(self._delete(alloc))
        cid = self._data_connections.pop(five_tuple, None)
        if cid is not None and self.connections.pop(cid, None) is not None:
            for a in self.allocations.values():
                a.connections.discard(cid)
            actions.append(CloseConnection(cid))
        return actions

    def peer_connection_lost(self, connection_id: int) -> list[Action]:
        return self.tcp_relay.peer_connection_lost(connection_id)

    # -- forwarding tables ------------------------------------------------------------------

    def forwarding(self, alloc: Allocation) -> tuple[ForwardingEntry, ...]:
        """The channels of ``alloc`` an adapter may relay on its own (see ``ForwardingEntry``):
        UDP client, UDP relay, RFC 8656 dialect only. Expired entries need no withdrawal:
        they carry their end. Anything not in the table still comes here."""
        if (
            alloc.transport is not Transport.UDP
            or alloc.five_tuple.transport is not Transport.UDP
            or alloc.ms is not None
            or alloc.state is not AllocationState.ACTIVE
            or self.allocations.get(alloc.five_tuple) is not alloc
        ):
            return ()
        entries = []
        for number, channel in alloc.channels.items():
            permission = alloc.permissions.get(channel.peer[0])
            if permission is None or alloc.peer_channels.get(channel.peer) != number:
                continue
            expires = min(channel.expiry, permission, alloc.expiry)
            entries.append(ForwardingEntry(number, channel.peer, expires))
        return tuple(entries)

    def take_forwarding(self) -> list[tuple[Allocation, tuple[ForwardingEntry, ...]]]:
        """The tables changed (channel bound or refreshed, permission or allocation refreshed)
        since the last call: an adapter that relays on its own republishes these after every
        call into the core. Expiry alone changes nothing (entries carry their end)."""
        if not self._forwarding_changed:
            return []
        changed = list(self._forwarding_changed.values())
        self._forwarding_changed.clear()
        return [(alloc, self.forwarding(alloc)) for alloc in changed]

    # -- timers -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline to call ``handle_timer`` at (may be early, never late)."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, ref = heapq.heappop(timers)
            if kind == "allocation":
                alloc: Allocation = ref
                if self.allocations.get(alloc.five_tuple) is alloc and alloc.expiry <= now:
                    logger.info("allocation #%d expired", alloc.id)
                    actions.extend(self._delete(alloc))
            elif kind == "permission":
                alloc, host = ref
                expiry = alloc.permissions.get(host)
                if expiry is not None and expiry <= now:
                    del alloc.permissions[host]
            elif kind == "channel":
                alloc, number = ref
                channel = alloc.channels.get(number)
                if channel is not None and channel.expiry <= now:
                    del alloc.channels[number]
                    alloc.peer_channels.pop(channel.peer, None)
            elif kind == "reservation":
                reservation = self._reservations.get(ref)
                if reservation is not None and reservation[1] <= now:
                    del self._reservations[ref]
                    self.pool.release(reservation[0])
            elif kind == "connection":
                conn = self.connections.get(ref)
                if (
                    conn is not None
                    and conn.state is not ConnectionState.BOUND
                    and conn.deadline <= now
                ):
                    if conn.state is ConnectionState.CONNECTING:
                        actions.extend(self.peer_connect_failed(ref, now))
                        actions.append(CloseConnection(ref))
                    else:
                        actions.extend(self.peer_connection_lost(ref))
        return actions

    def stats(self, now: float) -> TurnStats:
        active = [a for a in self.allocations.values() if a.state is AllocationState.ACTIVE]
        c = self.counters
        return TurnStats(
            clients=len({a.five_tuple.client[0] for a in active}),
            allocations=len(active),
            tcp_allocations=sum(1 for a in active if a.transport is Transport.TCP),
            permissions=sum(sum(1 for e in a.permissions.values() if e > now) for a in active),
            channels=sum(sum(1 for ch in a.channels.values() if ch.expiry > now) for a in active),
            tcp_connections=len(self.connections),
            packets_to_peer=c.packets_to_peer,
            bytes_to_peer=c.bytes_to_peer,
            packets_to_client=c.packets_to_client,
            bytes_to_client=c.bytes_to_client,
            auth_failures=c.auth_failures,
            peers_denied=c.peers_denied,
        )

    def close_all(self) -> list[Action]:
        """Delete every allocation (server shutdown)."""
        actions: list[Action] = []
        for alloc in list(self.allocations.values()):
            actions.extend(self._delete(alloc))
        return actions

    # -- shared by the dialects' handlers ---------------------------------------------------

    def _lifetime(self, value: bytes | None, *, allocate: bool) -> int:
        """RFC 8656 §7.2 / §7.3: min(requested, max), raised to the default lifetime when
        below it (as coturn does: a LIFETIME of 1 is granted 600 s, not 1 s). A Refresh
        asking 0 deletes the allocation."""
        if value is None:
            return self.config.default_lifetime
        requested = stun.unpack_u32(value)
        if requested == 0 and not allocate:
            return 0
        return max(min(requested, self.config.max_lifetime), self.config.default_lifetime)

    def _permit(self, alloc: Allocation, host: str, now: float) -> None:
        expiry = now + self.config.permission_lifetime
        alloc.permissions[host] = expiry
        self._push_timer(expiry, "permission", (alloc, host))
        if self.publish_forwarding:
            self._forwarding_changed[alloc.id] = alloc

    def _delete(self, alloc: Allocation) -> list[Action]:
        actions: list[Action] = []
        for cid in list(alloc.connections):
            actions.extend(self.peer_connection_lost(cid))
        self._forget(alloc)
        actions.append(CloseRelay(alloc))
        return actions

    def _forget(self, alloc: Allocation) -> None:
        if self.allocations.get(alloc.five_tuple) is alloc:
            del self.allocations[alloc.five_tuple]
            left = self._per_user.get(alloc.username, 1) - 1
            if left:
                self._per_user[alloc.username] = left
            else:
                self._per_user.pop(alloc.username, None)
            self._release_ports(alloc)

    def _release_ports(self, alloc: Allocation) -> None:
        self.pool.release(alloc.relay_port)
        if alloc.reserve_next:
            if alloc.reservation_token is None:
                self.pool.release(alloc.relay_port + 1)
            # A handed-out reservation is released when it is used or expires.

    def _push_timer(self, deadline: float, kind: str, ref: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, kind, ref))

    def _data_indication(self, peer: Address, data: bytes) -> bytes:
        host, port = peer
        try:
            packed = bytes(int(x) for x in host.split("."))
        except ValueError:
            packed = b""
        tid = self._rng.randbytes(12)
        if len(packed) == 4:
            xaddr = bytes(a ^ b for a, b in zip(packed, stun.COOKIE_BYTES, strict=True))
            length = len(data)
            header = _DATA_IND_HEADER.pack(
                _DATA_INDICATION_TYPE,
                12 + 4 + length + (-length % 4),
                stun.COOKIE,
                tid,
                Attr.XOR_PEER_ADDRESS,
                8,
                0,
                1,
                port ^ 0x2112,
                xaddr,
                Attr.DATA,
                length,
            )
            return header + data + bytes(-length % 4)
        attrs = [
            (int(Attr.XOR_PEER_ADDRESS), stun.pack_xor_address(peer, tid)),
            (int(Attr.DATA), data),
        ]
        return stun.encode(Method.DATA, Class.INDICATION, tid, attrs, fingerprint=False)
