"""The sans-IO TURN server core (RFC 8656, RFC 6062 TCP relays, RFC 8489 auth).

Driven aioquic-style: the adapter feeds bytes with the 5-tuple and ``now``, executes the
returned actions, and calls ``handle_timer(now)`` at ``get_timer()``. The relay hot paths
(``channel_data_from_client`` / ``data_from_peer``) never build a STUN message object.
"""

from __future__ import annotations

import heapq
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import ms_turn, stun
from .allocation import (
    Action,
    Address,
    Allocation,
    AllocationState,
    AttachData,
    Channel,
    CloseConnection,
    CloseRelay,
    ConnectionState,
    ConnectPeer,
    Counters,
    FiveTuple,
    OpenRelay,
    SendToClient,
    SendToPeer,
    TcpConnection,
    Transport,
    TurnStats,
)
from .auth import Authenticator
from .config import TurnConfig
from .errors import DecodeError, RemoteProtocolError
from .ms_handler import MsTurnHandler
from .peers import PeerPolicy
from .port_pool import PortPool
from .stun import Attr, Class, Method, StunMessage

logger = logging.getLogger(__name__)

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
LEGACY_CHANNEL_MAX = 0x7FFF  # RFC 5766's range, still used by coturn's turnutils_uclient
RESERVATION_LIFETIME = 30.0
MAX_BIND_ATTEMPTS = 10
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


class _Refusal(RemoteProtocolError):
    """An error response to send; ``key`` signs it once the request was authenticated."""

    def __init__(
        self,
        message: str,
        status_hint: int,
        key: bytes | None = None,
        extra: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        super().__init__(message, status_hint)
        self.key = key
        self.extra = extra


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
        try:
            msg = stun.parse(data)
        except DecodeError as exc:
            logger.debug("undecodable STUN from %s: %s", five_tuple.client, exc.message)
            return self._answer_garbage(data, five_tuple, exc)
        if msg.cls == Class.REQUEST:
            try:
                return self._handle_request(msg, five_tuple, now)
            except _Refusal as refusal:
                return [SendToClient(five_tuple, self._refusal_bytes(msg, refusal, now))]
            except DecodeError as exc:
                logger.info("bad request from %s: %s", five_tuple.client, exc.message)
                response = stun.error_response(msg, 400, self._software, reason=exc.message[:120])
                return [SendToClient(five_tuple, response)]
        if msg.cls == Class.INDICATION and msg.method == Method.SEND:
            try:
                return self._handle_send(msg, five_tuple, now)
            except DecodeError:
                return []
        return []  # responses and other indications are not for a server

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
        if self.allocations.get(alloc.five_tuple) is not alloc:
            return [CloseRelay(alloc)]  # deleted (connection closed) while binding
        alloc.state = AllocationState.ACTIVE
        if alloc.ms is not None:
            alloc.allocate_response = self.ms.allocate_success(alloc)
            logger.info(
                "MS-TURN allocation #%d for %s (%s) relay %s:%d, lifetime %ds",
                alloc.id,
                alloc.username,
                _fmt(alloc.five_tuple.client),
                alloc.relay_host,
                alloc.relay_port,
                alloc.lifetime,
            )
            return [SendToClient(alloc.five_tuple, alloc.allocate_response)]
        attrs: list[tuple[int, bytes]] = [
            (
                Attr.XOR_RELAYED_ADDRESS,
                stun.pack_xor_address(alloc.relayed_address, alloc.allocate_tid),
            ),
            (Attr.LIFETIME, stun.pack_u32(alloc.lifetime)),
            (
                Attr.XOR_MAPPED_ADDRESS,
                stun.pack_xor_address(alloc.five_tuple.client, alloc.allocate_tid),
            ),
        ]
        if alloc.reserve_next:
            token = self._rng.randbytes(8)
            alloc.reservation_token = token
            self._reservations[token] = (alloc.relay_port + 1, now + RESERVATION_LIFETIME)
            self._push_timer(now + RESERVATION_LIFETIME, "reservation", token)
            attrs.append((Attr.RESERVATION_TOKEN, token))
        attrs.extend(self._software)
        response = stun.encode(
            Method.ALLOCATE, Class.RESPONSE, alloc.allocate_tid, attrs, key=alloc.key
        )
        alloc.allocate_response = response
        logger.info(
            "allocation #%d for %s (%s) relay %s:%d %s, lifetime %ds",
            alloc.id,
            alloc.username,
            _fmt(alloc.five_tuple.client),
            alloc.relay_host,
            alloc.relay_port,
            alloc.transport.name,
            alloc.lifetime,
        )
        return [SendToClient(alloc.five_tuple, response)]

    def relay_failed(self, alloc: Allocation, now: float) -> list[Action]:
        """The relay port could not be bound (taken by another process): try another."""
        if self.allocations.get(alloc.five_tuple) is not alloc:
            return []
        self._release_ports(alloc)
        alloc.tried_ports.add(alloc.relay_port)
        alloc.bind_attempts += 1
        port = None
        if alloc.bind_attempts < MAX_BIND_ATTEMPTS and not alloc.reservation_token:
            port = self.pool.take(
                even=alloc.reserve_next, pair=alloc.reserve_next, avoid=frozenset(alloc.tried_ports)
            )
        if port is None:
            self._forget(alloc)
            logger.warning("allocation #%d: no bindable relay port", alloc.id)
            if alloc.ms is not None:
                failure = self.ms.allocate_failure(alloc, 508, "Insufficient Capacity")
                return [SendToClient(alloc.five_tuple, failure)]
            response = stun.encode(
                Method.ALLOCATE,
                Class.ERROR,
                alloc.allocate_tid,
                [(Attr.ERROR_CODE, stun.pack_error_code(508)), *self._software],
                key=alloc.key,
            )
            return [SendToClient(alloc.five_tuple, response)]
        alloc.relay_port = port
        return [OpenRelay(alloc)]

    def peer_connected(self, connection_id: int, now: float) -> list[Action]:
        """RFC 6062: the outgoing connection for a Connect request is up."""
        conn = self.connections.get(connection_id)
        if conn is None or conn.state is not ConnectionState.CONNECTING:
            return [CloseConnection(connection_id)]
        conn.state = ConnectionState.AWAITING_BIND
        conn.deadline = now + self.config.connect_timeout
        self._push_timer(conn.deadline, "connection", connection_id)
        alloc = conn.allocation
        attrs = [(int(Attr.CONNECTION_ID), stun.pack_u32(connection_id)), *self._software]
        response = stun.encode(
            Method.CONNECT, Class.RESPONSE, conn.connect_tid, attrs, key=alloc.key
        )
        return [SendToClient(alloc.five_tuple, response)]

    def peer_connect_failed(self, connection_id: int, now: float) -> list[Action]:
        conn = self.connections.pop(connection_id, None)
        if conn is None:
            return []
        alloc = conn.allocation
        alloc.connections.discard(connection_id)
        if self.allocations.get(alloc.five_tuple) is not alloc:
            return []
        attrs = [(int(Attr.ERROR_CODE), stun.pack_error_code(447)), *self._software]
        response = stun.encode(Method.CONNECT, Class.ERROR, conn.connect_tid, attrs, key=alloc.key)
        return [SendToClient(alloc.five_tuple, response)]

    def peer_connection_incoming(
        self, alloc: Allocation, peer: Address, now: float
    ) -> tuple[int | None, list[Action]]:
        """RFC 6062 §5.3: a peer connected to a TCP relay. None refuses it (no permission)."""
        if self.allocations.get(alloc.five_tuple) is not alloc or not alloc.permitted(peer[0], now):
            return None, []
        conn = self._new_connection(alloc, peer, ConnectionState.AWAITING_BIND, now)
        tid = self._rng.randbytes(12)
        attrs = [
            (int(Attr.CONNECTION_ID), stun.pack_u32(conn.id)),
            (int(Attr.XOR_PEER_ADDRESS), stun.pack_xor_address(peer, tid)),
            *self._software,
        ]
        indication = stun.encode(Method.CONNECTION_ATTEMPT, Class.INDICATION, tid, attrs)
        return conn.id, [SendToClient(alloc.five_tuple, indication)]

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
        conn = self.connections.pop(connection_id, None)
        if conn is None:
            return []
        conn.allocation.connections.discard(connection_id)
        if conn.data_five_tuple is not None:
            self._data_connections.pop(conn.data_five_tuple, None)
        return [CloseConnection(connection_id)]

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

    # -- requests ---------------------------------------------------------------------------

    def _handle_request(self, msg: StunMessage, ft: FiveTuple, now: float) -> list[Action]:
        if msg.method == Method.BINDING:
            return [SendToClient(ft, self._binding_response(msg, ft))]
        handler: Callable[[StunMessage, FiveTuple, float, str, bytes], list[Action]] | None = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
            Method.CONNECT: self._connect,
            Method.CONNECTION_BIND: self._connection_bind,
        }.get(msg.method)  # type: ignore[call-overload]
        if handler is None:
            raise _Refusal(f"unsupported method 0x{msg.method:03x}", 400)
        unknown = msg.unknown_required()
        if unknown:
            raise _Refusal(
                "unknown comprehension-required attributes",
                420,
                extra=((int(Attr.UNKNOWN_ATTRIBUTES), stun.pack_unknown_attributes(unknown)),),
            )
        username, key = self._authenticate(msg, ft, now)
        try:
            return handler(msg, ft, now, username, key)
        except DecodeError as exc:
            raise _Refusal(exc.message, 400, key) from None

    def _authenticate(self, msg: StunMessage, ft: FiveTuple, now: float) -> tuple[str, bytes]:
        """RFC 8489 §9.2.4, in its order: 401, 400, 438, 401, 401."""
        if msg.integrity_offset is None:
            raise _Refusal("credentials required", 401)
        raw_user, realm, nonce = msg.get(Attr.USERNAME), msg.get(Attr.REALM), msg.get(Attr.NONCE)
        if raw_user is None or realm is None or nonce is None:
            raise _Refusal("USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY", 400)
        if not self.auth.nonce_valid(nonce, now):
            raise _Refusal("stale nonce", 438)
        username = stun.unpack_text(raw_user, 513)
        key = self.auth.key_for(username)
        if key is None or stun.unpack_text(realm) != self.auth.realm:
            self.counters.auth_failures += 1
            logger.warning("TURN auth failed from %s: unknown user %r", _fmt(ft.client), username)
            raise _Refusal("unknown user", 401)
        if not msg.check_integrity(key):
            self.counters.auth_failures += 1
            logger.warning(
                "TURN auth failed from %s: wrong password for %r", _fmt(ft.client), username
            )
            raise _Refusal("wrong credentials", 401)
        return username, key

    def _binding_response(self, msg: StunMessage, ft: FiveTuple) -> bytes:
        attrs = [
            (int(Attr.XOR_MAPPED_ADDRESS), stun.pack_xor_address(ft.client, msg.transaction_id)),
            (int(Attr.MAPPED_ADDRESS), stun.pack_address(ft.client)),
            *self._software,
        ]
        return stun.encode(Method.BINDING, Class.RESPONSE, msg.transaction_id, attrs)

    def _allocate(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        existing = self.allocations.get(ft)
        if existing is not None:
            if existing.allocate_tid == msg.transaction_id:
                # A retransmission: answer again (or wait for the pending bind to answer).
                if existing.allocate_response:
                    return [SendToClient(ft, existing.allocate_response)]
                return []
            raise _Refusal("an allocation exists for this 5-tuple", 437, key)
        if ft in self._data_connections:
            raise _Refusal("a data connection cannot hold an allocation", 400, key)
        rt = msg.get(Attr.REQUESTED_TRANSPORT)
        if rt is None or len(rt) != 4:
            raise _Refusal("REQUESTED-TRANSPORT missing", 400, key)
        even_port = msg.get(Attr.EVEN_PORT)
        token = msg.get(Attr.RESERVATION_TOKEN)
        family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if rt[0] == stun.TRANSPORT_UDP:
            transport = Transport.UDP
        elif rt[0] == stun.TRANSPORT_TCP and self.config.tcp:
            transport = Transport.TCP
            if ft.transport is not Transport.TCP:
                raise _Refusal("TCP relays need a TCP control connection (RFC 6062)", 400, key)
            if even_port is not None or token is not None or msg.has(Attr.DONT_FRAGMENT):
                raise _Refusal(
                    "EVEN-PORT, RESERVATION-TOKEN and DONT-FRAGMENT are UDP-only", 400, key
                )
        else:
            raise _Refusal(f"transport {rt[0]} not supported", 442, key)
        if even_port is not None and token is not None:
            raise _Refusal("EVEN-PORT with RESERVATION-TOKEN", 400, key)
        if token is not None and len(token) != 8:
            raise _Refusal("RESERVATION-TOKEN must be 8 bytes", 400, key)
        if even_port is not None and len(even_port) < 1:
            raise _Refusal("EVEN-PORT is empty", 400, key)
        if family is not None:
            if token is not None:
                raise _Refusal("REQUESTED-ADDRESS-FAMILY with RESERVATION-TOKEN", 400, key)
            if len(family) < 1 or family[0] not in (1, 2):
                raise _Refusal("bad REQUESTED-ADDRESS-FAMILY", 400, key)
            if family[0] != _family(self.relay_host):
                raise _Refusal("address family not supported", 440, key)
        if len(self.allocations) >= self.config.total_quota:
            raise _Refusal("server allocation quota reached", 486, key)
        if self._per_user.get(username, 0) >= self.config.user_quota:
            raise _Refusal(f"allocation quota of {username} reached", 486, key)
        reserve_next = bool(even_port and even_port[0] & 0x80)
        if token is not None:
            reservation = self._reservations.pop(token, None)
            if reservation is None or reservation[1] <= now:
                raise _Refusal("unknown or expired RESERVATION-TOKEN", 508, key)
            port: int | None = reservation[0]
        else:
            port = self.pool.take(even=even_port is not None, pair=reserve_next)
        if port is None:
            logger.warning("relay port range %d-%d exhausted", self.pool.low, self.pool.high)
            raise _Refusal("no relay port available", 508, key)
        requested = msg.get(Attr.LIFETIME)
        lifetime = self._lifetime(requested, allocate=True)
        alloc = Allocation(
            id=self._next_id,
            five_tuple=ft,
            username=username,
            key=key,
            transport=transport,
            expiry=now + lifetime,
            relay_port=port,
            relay_host=self.relay_host,
            allocate_tid=msg.transaction_id,
            lifetime=lifetime,
            reserve_next=reserve_next,
        )
        self._next_id += 1
        self.allocations[ft] = alloc
        self._per_user[username] = self._per_user.get(username, 0) + 1
        self._push_timer(alloc.expiry, "allocation", alloc)
        return [OpenRelay(alloc)]

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

    def _own_allocation(self, ft: FiveTuple, username: str, key: bytes) -> Allocation:
        alloc = self.allocations.get(ft)
        if alloc is None or alloc.state is not AllocationState.ACTIVE:
            raise _Refusal("no allocation for this 5-tuple", 437, key)
        if alloc.username != username:
            raise _Refusal("allocation belongs to another user", 441, key)
        return alloc

    def _refresh(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        alloc = self._own_allocation(ft, username, key)
        lifetime = self._lifetime(msg.get(Attr.LIFETIME), allocate=False)
        actions: list[Action] = []
        if lifetime == 0:
            logger.info("allocation #%d deleted by the client", alloc.id)
            actions.extend(self._delete(alloc))
        else:
            alloc.expiry = now + lifetime
            self._push_timer(alloc.expiry, "allocation", alloc)
            if self.publish_forwarding:
                self._forwarding_changed[alloc.id] = alloc
        attrs = [(int(Attr.LIFETIME), stun.pack_u32(lifetime)), *self._software]
        response = stun.encode(Method.REFRESH, Class.RESPONSE, msg.transaction_id, attrs, key=key)
        return [SendToClient(ft, response), *actions]

    def _peer(self, msg: StunMessage, value: bytes, alloc: Allocation, key: bytes) -> Address:
        peer = stun.unpack_xor_address(value, msg.transaction_id)
        if not self.policy.permits(peer[0]):
            self.counters.peers_denied += 1
            logger.warning("allocation #%d: peer %s refused by policy", alloc.id, _fmt(peer))
            raise _Refusal(f"peer {peer[0]} not allowed", 403, key)
        if _family(peer[0]) != _family(alloc.relay_host):
            raise _Refusal("peer address family mismatch", 443, key)
        return peer

    def _create_permission(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        alloc = self._own_allocation(ft, username, key)
        values = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not values:
            raise _Refusal("XOR-PEER-ADDRESS missing", 400, key)
        peers = [self._peer(msg, v, alloc, key) for v in values]
        for peer in peers:
            self._permit(alloc, peer[0], now)
        response = stun.encode(
            Method.CREATE_PERMISSION, Class.RESPONSE, msg.transaction_id, self._software, key=key
        )
        return [SendToClient(ft, response)]

    def _permit(self, alloc: Allocation, host: str, now: float) -> None:
        expiry = now + self.config.permission_lifetime
        alloc.permissions[host] = expiry
        self._push_timer(expiry, "permission", (alloc, host))
        if self.publish_forwarding:
            self._forwarding_changed[alloc.id] = alloc

    def _channel_bind(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        alloc = self._own_allocation(ft, username, key)
        if alloc.transport is not Transport.UDP:
            raise _Refusal("channels are for UDP relays", 400, key)
        raw_number = msg.get(Attr.CHANNEL_NUMBER)
        raw_peer = msg.get(Attr.XOR_PEER_ADDRESS)
        if raw_number is None or len(raw_number) != 4 or raw_peer is None:
            raise _Refusal("CHANNEL-NUMBER and XOR-PEER-ADDRESS are required", 400, key)
        number = struct.unpack("!H", raw_number[:2])[0]
        if not CHANNEL_MIN <= number <= self._channel_max:
            raise _Refusal(f"channel number 0x{number:04x} out of range", 400, key)
        peer = self._peer(msg, raw_peer, alloc, key)
        channel = alloc.channels.get(number)
        if channel is not None and channel.peer != peer:
            raise _Refusal("channel bound to another peer", 400, key)
        bound = alloc.peer_channels.get(peer)
        if bound is not None and bound != number:
            raise _Refusal("peer bound to another channel", 400, key)
        expiry = now + self.config.channel_lifetime
        if channel is None:
            alloc.channels[number] = Channel(peer, expiry)
            alloc.peer_channels[peer] = number
        else:
            channel.expiry = expiry
        self._push_timer(expiry, "channel", (alloc, number))
        self._permit(alloc, peer[0], now)
        response = stun.encode(
            Method.CHANNEL_BIND, Class.RESPONSE, msg.transaction_id, self._software, key=key
        )
        return [SendToClient(ft, response)]

    def _handle_send(self, msg: StunMessage, ft: FiveTuple, now: float) -> list[Action]:
        alloc = self.allocations.get(ft)
        if (
            alloc is None
            or alloc.transport is not Transport.UDP
            or alloc.state is not AllocationState.ACTIVE
        ):
            return []
        raw_peer, data = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
        if raw_peer is None or data is None:
            return []
        peer = stun.unpack_xor_address(raw_peer, msg.transaction_id)
        if not alloc.permitted(peer[0], now):
            return []
        self.counters.packets_to_peer += 1
        self.counters.bytes_to_peer += len(data)
        return [SendToPeer(alloc, peer, data)]

    def _connect(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        alloc = self._own_allocation(ft, username, key)
        if alloc.transport is not Transport.TCP:
            raise _Refusal("Connect needs a TCP allocation", 400, key)
        raw_peer = msg.get(Attr.XOR_PEER_ADDRESS)
        if raw_peer is None:
            raise _Refusal("XOR-PEER-ADDRESS missing", 400, key)
        peer = self._peer(msg, raw_peer, alloc, key)
        if any(
            self.connections[c].peer == peer for c in alloc.connections if c in self.connections
        ):
            raise _Refusal("a connection to this peer exists", 446, key)
        # The client named this peer, so data it sends back is wanted (RFC 6062 §5.2).
        self._permit(alloc, peer[0], now)
        conn = self._new_connection(alloc, peer, ConnectionState.CONNECTING, now)
        conn.connect_tid = msg.transaction_id
        return [ConnectPeer(conn.id, alloc, peer)]

    def _connection_bind(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        if ft.transport is not Transport.TCP or ft in self.allocations:
            raise _Refusal("ConnectionBind needs a fresh TCP connection", 400, key)
        raw = msg.get(Attr.CONNECTION_ID)
        if raw is None:
            raise _Refusal("CONNECTION-ID missing", 400, key)
        conn = self.connections.get(stun.unpack_u32(raw))
        if conn is None or conn.state is not ConnectionState.AWAITING_BIND:
            raise _Refusal("unknown CONNECTION-ID", 400, key)
        if conn.allocation.username != username:
            raise _Refusal("connection belongs to another user", 441, key)
        conn.state = ConnectionState.BOUND
        conn.data_five_tuple = ft
        self._data_connections[ft] = conn.id
        response = stun.encode(
            Method.CONNECTION_BIND, Class.RESPONSE, msg.transaction_id, self._software, key=key
        )
        return [SendToClient(ft, response), AttachData(conn.id, ft)]

    # -- helpers ----------------------------------------------------------------------------

    def _new_connection(
        self, alloc: Allocation, peer: Address, state: ConnectionState, now: float
    ) -> TcpConnection:
        cid = self._rng.randrange(1, 1 << 32)
        while cid in self.connections:
            cid = self._rng.randrange(1, 1 << 32)
        conn = TcpConnection(cid, alloc, peer, state, now + self.config.connect_timeout)
        self.connections[cid] = conn
        alloc.connections.add(cid)
        self._push_timer(conn.deadline, "connection", cid)
        return conn

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

    def _refusal_bytes(self, msg: StunMessage, refusal: _Refusal, now: float) -> bytes:
        code = refusal.status_hint
        extra: list[tuple[int, bytes]] = list(refusal.extra)
        if code in (401, 438):
            extra += [
                (int(Attr.REALM), self.auth.realm.encode()),
                (int(Attr.NONCE), self.auth.make_nonce(now)),
            ]
        if code not in (401, 438) or msg.integrity_offset is not None:
            logger.info("refused %s: %d %s", _method_name(msg.method), code, refusal.message)
        extra.extend(self._software)
        return stun.error_response(msg, code, extra, key=refusal.key)

    def _answer_garbage(self, data: bytes, ft: FiveTuple, exc: DecodeError) -> list[Action]:
        # Answer 400 only to something that is plainly a request with our cookie; a reply
        # to every stray datagram would make the server a reflector.
        if len(data) < 20 or data[4:8] != stun.COOKIE_BYTES or data[0] >= 0x40 or data[1] & 0x10:
            return []
        if data[0] & 0x01:  # class bit C1: a response, never answered
            return []
        method = (data[1] & 0x0F) | ((data[1] & 0xE0) >> 1) | ((data[0] & 0x3E) << 6)
        attrs = [
            (int(Attr.ERROR_CODE), stun.pack_error_code(400, exc.message[:120])),
            *self._software,
        ]
        return [SendToClient(ft, stun.encode(method, Class.ERROR, data[8:20], attrs))]


def _family(host: str) -> int:
    return 2 if ":" in host else 1


def _fmt(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


def _method_name(method: int) -> str:
    try:
        return Method(method).name
    except ValueError:
        return f"0x{method:03x}"
