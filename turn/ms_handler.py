"""MS-TURN requests in the sans-IO core: Allocate (and its refresh / delete), Send, Set
Active Destination, Data indications and unencapsulated data ([MS-TURN] 3.3).

The allocations, port pool, peer policy, quotas, nonces and timers are the ``TurnCore``'s,
so both dialects share one deny list, one quota and one authentication rule set. What
differs is the wire (``ms_turn``) and these choices:

- an allocation relays over the transport its Allocate came on ([MS-TURN] 3.3.4: "a request
  that is received over TCP returns a TCP allocated transport address"). A TCP relay is a
  byte stream per peer: a Send (or 0x03 data for the active destination) to a peer with no
  connection connects from the relayed address to it, a permitted peer may connect to the
  relayed address, and each connection's bytes travel as they are (the client frames its
  packets in them, RFC 4571 for ICE-TCP as libnice does);
- Send requests are never answered ([MS-TURN] 2.2.1), so a refused Send is dropped (and
  counted), never relayed;
- a message that is not well-formed MS-TURN (MAGIC-COOKIE missing or wrong) is ignored, and
  its TCP connection closed ([MS-TURN] 3.1.10);
- MS-SEQUENCE-NUMBER must carry the allocation's connection id and grow strictly.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from . import ms_turn
from .allocation import (
    Action,
    Address,
    Allocation,
    AllocationState,
    CloseClient,
    FiveTuple,
    MsTurnState,
    OpenPeerStream,
    OpenRelay,
    ResumePeerStream,
    SendToClient,
    SendToPeer,
    Transport,
)
from .errors import DecodeError
from .ms_turn import MsAttr, MsMessage, MsType
from .stun import REASONS

if TYPE_CHECKING:
    from .core import TurnCore

logger = logging.getLogger(__name__)

_ERROR_TYPE = {
    MsType.ALLOCATE_REQUEST: MsType.ALLOCATE_ERROR,
    MsType.SET_ACTIVE_DESTINATION_REQUEST: MsType.SET_ACTIVE_DESTINATION_ERROR,
}


class MsRefusal(Exception):
    """An MS-TURN error response to send (Send requests: a drop)."""

    def __init__(
        self,
        message: str,
        code: int,
        key: bytes | None = None,
        extra: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.key = key
        self.extra = extra


MAX_STREAMS = 32
"""TCP connections per MS-TURN TCP allocation (an ICE session needs a few per candidate)."""
STREAM_CHUNK = 0xF000
"""Largest piece of a peer's byte stream put in one Data indication / data frame (the TCP
frame length is 16 bits, and the Data indication adds its header and attributes)."""


class Admission(enum.Enum):
    """What becomes of a peer's connection to a TCP relayed address."""

    ACCEPT = "accept"
    """Its IP is permitted: relay its bytes."""
    HOLD = "hold"
    """Not permitted yet: keep it unread until the client sends to that IP (ICE checks from
    both sides cross, so a peer often connects first), closed after ``connect_timeout``."""
    REFUSE = "refuse"
    """No live allocation, or the connection limit is reached."""


class MsTurnHandler:
    """The MS-TURN side of one ``TurnCore``."""

    def __init__(self, core: TurnCore) -> None:
        self.core = core

    # -- entry points -----------------------------------------------------------------------

    def handle(self, data: bytes, ft: FiveTuple, now: float) -> list[Action]:
        """An MS-TURN control message (``ms_turn.is_ms_turn(data)``)."""
        try:
            msg = ms_turn.parse(data)
        except DecodeError as exc:
            logger.info("ignored malformed MS-TURN from %s: %s", ft.client, exc.message)
            return [CloseClient(ft)] if ft.transport is Transport.TCP else []
        if msg.msg_type == MsType.SEND_REQUEST:
            try:
                return self._send(msg, ft, now)
            except (MsRefusal, DecodeError) as exc:
                logger.info("dropped MS-TURN Send from %s: %s", ft.client, exc)
                return []
        if msg.msg_type not in _ERROR_TYPE:
            return []  # responses, indications, Shared Secret: not for a server
        try:
            unknown = msg.unknown_required()
            if unknown:
                raise MsRefusal(
                    "unknown comprehension-required attributes",
                    420,
                    extra=(
                        (
                            int(MsAttr.UNKNOWN_ATTRIBUTES),
                            b"".join(t.to_bytes(2, "big") for t in unknown),
                        ),
                    ),
                )
            if msg.msg_type == MsType.ALLOCATE_REQUEST:
                return self._allocate(msg, ft, now)
            return self._set_active_destination(msg, ft, now)
        except MsRefusal as refusal:
            return [SendToClient(ft, self._refusal(msg, refusal, ft, now))]
        except DecodeError as exc:
            return [SendToClient(ft, self._refusal(msg, MsRefusal(exc.message, 400), ft, now))]

    def data_from_client(self, alloc: Allocation, data: bytes, now: float) -> list[Action]:
        """Unencapsulated data (a UDP datagram that is not MS-TURN, or a TCP 0x03 frame): it
        goes to the active destination, if one is set (the destination was checked against
        the deny list when it was set, and stays permitted while it is the active one)."""
        ms = alloc.ms
        if ms is None or alloc.state is not AllocationState.ACTIVE or alloc.expiry <= now:
            return []
        peer = ms.active_destination
        if peer is None:
            return []  # no Send wrapper to say where to: nothing to relay to
        return self._to_peer(alloc, peer, data)

    def data_to_client(self, alloc: Allocation, peer: Address, data: bytes) -> bytes:
        """A peer datagram for the client: raw from the active destination, else a Data
        indication; framed on TCP. The caller has checked the permission."""
        ms = alloc.ms
        assert ms is not None
        if peer == ms.active_destination:
            if alloc.five_tuple.transport is Transport.TCP:
                return ms_turn.frame(ms_turn.FRAME_DATA, data)
            return data
        tid = self.core._rng.randbytes(ms_turn.TRANSACTION_ID_LENGTH)
        indication = ms_turn.encode(
            MsType.DATA_INDICATION,
            tid,
            [(MsAttr.REMOTE_ADDRESS, ms_turn.pack_address(peer)), (MsAttr.DATA, data)],
        )
        return self._framed(alloc.five_tuple, indication)

    # -- TCP allocations: one byte stream per peer ----------------------------------------

    def stream_incoming(self, alloc: Allocation, peer: Address, now: float) -> Admission:
        """A peer connected to a TCP relayed address: relayed when its IP is permitted (a
        Send went to it) or is the active destination's, held until then."""
        ms = alloc.ms
        if (
            ms is None
            or self.core.allocations.get(alloc.five_tuple) is not alloc
            or alloc.state is not AllocationState.ACTIVE
            or alloc.expiry <= now
            or peer in ms.streams
            or len(ms.streams) >= MAX_STREAMS
        ):
            return Admission.REFUSE
        ms.streams.add(peer)
        active = ms.active_destination
        if alloc.permitted(peer[0], now) or (active is not None and active[0] == peer[0]):
            return Admission.ACCEPT
        ms.held.add(peer)
        return Admission.HOLD

    def _release_held(self, alloc: Allocation, host: str) -> list[Action]:
        ms = alloc.ms
        if ms is None or not ms.held:
            return []
        released = [p for p in ms.held if p[0] == host]
        ms.held.difference_update(released)
        return [ResumePeerStream(alloc, p) for p in released]

    def stream_closed(self, alloc: Allocation, peer: Address) -> None:
        """A peer connection ended (or could not be opened): the next Send opens another."""
        if alloc.ms is not None:
            alloc.ms.streams.discard(peer)
            alloc.ms.held.discard(peer)

    def stream_data(self, alloc: Allocation, peer: Address, data: bytes, now: float) -> list[bytes]:
        """Bytes read from a peer's connection -> framed messages for the client (the stream
        cut in pieces of at most ``STREAM_CHUNK``); nothing once the allocation is gone."""
        ms = alloc.ms
        if (
            ms is None
            or peer not in ms.streams
            or peer in ms.held
            or self.core.allocations.get(alloc.five_tuple) is not alloc
            or alloc.expiry <= now
        ):
            return []
        c = self.core.counters
        out = []
        for i in range(0, len(data), STREAM_CHUNK):
            piece = data[i : i + STREAM_CHUNK]
            c.packets_to_client += 1
            c.bytes_to_client += len(piece)
            out.append(self.data_to_client(alloc, peer, piece))
        return out

    def allocate_success(self, alloc: Allocation) -> bytes:
        ms = alloc.ms
        assert ms is not None
        tid = alloc.allocate_tid
        attrs = [
            (int(MsAttr.MAPPED_ADDRESS), ms_turn.pack_address(alloc.relayed_address)),
            (int(MsAttr.XOR_MAPPED_ADDRESS), ms_turn.pack_xor_mapped(alloc.five_tuple.client, tid)),
            (int(MsAttr.LIFETIME), ms_turn.pack_u32(alloc.lifetime)),
            (int(MsAttr.MS_VERSION), ms_turn.pack_u32(ms.version)),
            (int(MsAttr.MS_SEQUENCE_NUMBER), ms_turn.pack_sequence(ms.connection_id, ms.sequence)),
        ]
        response = ms_turn.encode(MsType.ALLOCATE_RESPONSE, tid, attrs, key=alloc.key)
        return self._framed(alloc.five_tuple, response)

    def allocate_failure(self, alloc: Allocation, code: int, reason: str) -> bytes:
        attrs = [(int(MsAttr.ERROR_CODE), ms_turn.pack_error_code(code, reason))]
        response = ms_turn.encode(MsType.ALLOCATE_ERROR, alloc.allocate_tid, attrs, key=alloc.key)
        return self._framed(alloc.five_tuple, response)

    # -- requests ---------------------------------------------------------------------------

    def _authenticate(
        self, msg: MsMessage, ft: FiveTuple, now: float, *, nonce_required: bool
    ) -> tuple[bytes, bytes]:
        """Long-term credentials as [MS-TURN] 3.1.11 uses them: 401 with NONCE and REALM to
        a request without MESSAGE-INTEGRITY. Send / Set Active Destination carry USERNAME,
        REALM and MESSAGE-INTEGRITY but no NONCE (as MS clients send them)."""
        core = self.core
        if msg.integrity_offset is None:
            raise MsRefusal("credentials required", 401)
        username, realm, nonce = (
            msg.get(MsAttr.USERNAME),
            msg.get(MsAttr.REALM),
            msg.get(MsAttr.NONCE),
        )
        if not username or realm is None or (nonce_required and nonce is None):
            raise MsRefusal("USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY", 400)
        if nonce is not None and nonce_required and not core.auth.nonce_valid(nonce, now):
            raise MsRefusal("stale nonce", 438)
        key = None
        if realm == core.auth.realm.encode():
            key = core.auth.ms_key_for(username, realm)
        if key is None:
            core.counters.auth_failures += 1
            logger.warning("MS-TURN auth failed from %s: unknown or expired user", ft.client)
            raise MsRefusal("unknown or expired credentials", 401)
        if not msg.check_integrity(key):
            core.counters.auth_failures += 1
            logger.warning("MS-TURN auth failed from %s: wrong MESSAGE-INTEGRITY", ft.client)
            raise MsRefusal("wrong credentials", 401)
        return username, key

    def _allocate(self, msg: MsMessage, ft: FiveTuple, now: float) -> list[Action]:
        core = self.core
        raw_user, key = self._authenticate(msg, ft, now, nonce_required=True)
        username = _name(raw_user)
        existing = core.allocations.get(ft)
        requested = msg.get(MsAttr.LIFETIME)
        if existing is not None:
            if existing.ms is None:
                raise MsRefusal("an RFC 8656 allocation exists for this 5-tuple", 437, key)
            if existing.username != username:
                raise MsRefusal("allocation belongs to another user", 441, key)
            if existing.allocate_tid == msg.transaction_id:
                return (
                    [SendToClient(ft, existing.allocate_response)]
                    if existing.allocate_response
                    else []
                )
            if existing.state is not AllocationState.ACTIVE:
                raise MsRefusal("allocation is still being made", 437, key)
            self._check_sequence(msg, existing, key)
            return self._refresh(msg, existing, requested, key, now)
        if requested is not None and ms_turn.unpack_u32(requested) == 0:
            # A release for an allocation that is gone (libnice releases once per relay
            # candidate, and over TCP it has two on one allocation): nothing to make.
            raise MsRefusal("no allocation to release", 437, key)
        family = msg.get(MsAttr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and (
            len(family) < 1 or family[0] != (2 if ":" in core.relay_host else 1)
        ):
            raise MsRefusal("address family not supported", 440, key)
        if len(core.allocations) >= core.config.total_quota:
            raise MsRefusal("server allocation quota reached", 486, key)
        if core._per_user.get(username, 0) >= core.config.user_quota:
            raise MsRefusal(f"allocation quota of {username} reached", 486, key)
        lifetime = core._lifetime(requested, allocate=True)
        port = core.pool.take(even=False, pair=False)
        if port is None:
            raise MsRefusal("no relay port available", 508, key)
        version = msg.get(MsAttr.MS_VERSION)
        alloc = Allocation(
            id=core._next_id,
            five_tuple=ft,
            username=username,
            key=key,
            transport=ft.transport,
            expiry=now + lifetime,
            relay_port=port,
            relay_host=core.relay_host,
            allocate_tid=msg.transaction_id,
            lifetime=lifetime,
            ms=MsTurnState(
                connection_id=core._rng.randbytes(ms_turn.CONNECTION_ID_LENGTH),
                # Echoed, capped at 2: no HMAC-SHA256 (3) nor IPv6 allocations (4).
                version=min(ms_turn.unpack_u32(version), 2) if version is not None else 1,
            ),
        )
        core._next_id += 1
        core.allocations[ft] = alloc
        core._per_user[username] = core._per_user.get(username, 0) + 1
        core._push_timer(alloc.expiry, "allocation", alloc)
        return [OpenRelay(alloc)]

    def _refresh(
        self, msg: MsMessage, alloc: Allocation, requested: bytes | None, key: bytes, now: float
    ) -> list[Action]:
        """An Allocate on a live allocation refreshes it; LIFETIME 0 deletes it."""
        core = self.core
        lifetime = (
            core._lifetime(requested, allocate=False) if requested is not None else alloc.lifetime
        )
        actions: list[Action] = []
        if lifetime == 0:
            logger.info("MS-TURN allocation #%d deleted by the client", alloc.id)
            actions = core._delete(alloc)
        else:
            alloc.expiry = now + lifetime
            core._push_timer(alloc.expiry, "allocation", alloc)
        saved = alloc.lifetime, alloc.allocate_tid
        alloc.lifetime, alloc.allocate_tid = lifetime, msg.transaction_id
        response = self.allocate_success(alloc)
        if lifetime == 0:
            alloc.lifetime, alloc.allocate_tid = saved
        else:
            alloc.allocate_response = response
        return [SendToClient(alloc.five_tuple, response), *actions]

    def _own_allocation(self, ft: FiveTuple, username: str, key: bytes | None) -> Allocation:
        alloc = self.core.allocations.get(ft)
        if alloc is None or alloc.ms is None or alloc.state is not AllocationState.ACTIVE:
            raise MsRefusal("no MS-TURN allocation for this 5-tuple", 437, key)
        if alloc.username != username:
            raise MsRefusal("allocation belongs to another user", 441, key)
        return alloc

    def _check_sequence(self, msg: MsMessage, alloc: Allocation, key: bytes) -> None:
        ms = alloc.ms
        assert ms is not None
        value = msg.get(MsAttr.MS_SEQUENCE_NUMBER)
        if value is None:
            if msg.msg_type == MsType.ALLOCATE_REQUEST:
                return  # refreshes may omit it (libnice's do)
            raise MsRefusal("MS-SEQUENCE-NUMBER missing", 400, key)
        connection_id, number = ms_turn.unpack_sequence(value)
        if connection_id != ms.connection_id:
            raise MsRefusal("MS-SEQUENCE-NUMBER names another connection", 400, key)
        if number <= ms.sequence:
            raise MsRefusal(
                f"MS-SEQUENCE-NUMBER {number} not above {ms.sequence} (replayed)", 400, key
            )
        ms.sequence = number

    def _destination(self, msg: MsMessage, alloc: Allocation, key: bytes) -> Address:
        core = self.core
        value = msg.get(MsAttr.DESTINATION_ADDRESS)
        if value is None:
            raise MsRefusal("DESTINATION-ADDRESS missing", 400, key)
        peer = ms_turn.unpack_address(value)
        if not core.policy.permits(peer[0]):
            core.counters.peers_denied += 1
            logger.warning("MS-TURN allocation #%d: peer %s refused by policy", alloc.id, peer)
            raise MsRefusal(f"peer {peer[0]} not allowed", 403, key)
        if (":" in peer[0]) != (":" in alloc.relay_host):
            raise MsRefusal("peer address family mismatch", 443, key)
        return peer

    def _send(self, msg: MsMessage, ft: FiveTuple, now: float) -> list[Action]:
        raw_user, key = self._authenticate(msg, ft, now, nonce_required=False)
        alloc = self._own_allocation(ft, _name(raw_user), key)
        data = msg.get(MsAttr.DATA)
        if data is None:
            raise MsRefusal("DATA missing", 400, key)
        peer = self._destination(msg, alloc, key)
        self._check_sequence(msg, alloc, key)
        # Sending to a peer is what lets its data back in (draft-rosenberg-midcom-turn-08
        # permissions, kept as RFC 8656's 5-minute per-IP permissions).
        self.core._permit(alloc, peer[0], now)
        return [*self._release_held(alloc, peer[0]), *self._to_peer(alloc, peer, data)]

    def _to_peer(self, alloc: Allocation, peer: Address, data: bytes) -> list[Action]:
        """Relay ``data``; on a TCP allocation, over the peer's connection, opened first if
        there is none (the draft-rosenberg-midcom-turn-08 TCP relay, as [MS-TURN] keeps it)."""
        actions: list[Action] = []
        if alloc.transport is Transport.TCP:
            ms = alloc.ms
            assert ms is not None
            if peer not in ms.streams:
                if len(ms.streams) >= MAX_STREAMS:
                    logger.info(
                        "MS-TURN allocation #%d: no connection to %s:%d (limit of %d reached)",
                        alloc.id, *peer, MAX_STREAMS,
                    )  # fmt: skip
                    return []
                ms.streams.add(peer)
                actions.append(OpenPeerStream(alloc, peer))
        c = self.core.counters
        c.packets_to_peer += 1
        c.bytes_to_peer += len(data)
        actions.append(SendToPeer(alloc, peer, data))
        return actions

    def _set_active_destination(self, msg: MsMessage, ft: FiveTuple, now: float) -> list[Action]:
        raw_user, key = self._authenticate(msg, ft, now, nonce_required=False)
        alloc = self._own_allocation(ft, _name(raw_user), key)
        ms = alloc.ms
        assert ms is not None
        if msg.transaction_id == ms.sad_tid and ms.sad_response:
            return [SendToClient(ft, ms.sad_response)]  # a retransmission: same answer
        peer = self._destination(msg, alloc, key)
        self._check_sequence(msg, alloc, key)
        ms.active_destination = peer
        self.core._permit(alloc, peer[0], now)
        held = self._release_held(alloc, peer[0])
        logger.info("MS-TURN allocation #%d: active destination %s:%d", alloc.id, *peer)
        response = self._framed(
            ft,
            ms_turn.encode(MsType.SET_ACTIVE_DESTINATION_RESPONSE, msg.transaction_id, [], key=key),
        )
        ms.sad_tid, ms.sad_response = msg.transaction_id, response
        return [SendToClient(ft, response), *held]

    # -- responses --------------------------------------------------------------------------

    def _refusal(self, msg: MsMessage, refusal: MsRefusal, ft: FiveTuple, now: float) -> bytes:
        code = refusal.code
        attrs: list[tuple[int, bytes]] = [
            (int(MsAttr.ERROR_CODE), ms_turn.pack_error_code(code, REASONS.get(code, "Error"))),
            *refusal.extra,
        ]
        if code in (401, 438):
            auth = self.core.auth
            attrs += [
                (int(MsAttr.REALM), auth.realm.encode()),
                (int(MsAttr.NONCE), auth.make_nonce(now)),
            ]
        if code not in (401, 438) or msg.integrity_offset is not None:
            logger.info("refused MS-TURN 0x%04x: %d %s", msg.msg_type, code, refusal.message)
        error_type = _ERROR_TYPE[MsType(msg.msg_type)]
        return self._framed(
            ft, ms_turn.encode(error_type, msg.transaction_id, attrs, key=refusal.key)
        )

    @staticmethod
    def _framed(ft: FiveTuple, message: bytes) -> bytes:
        if ft.transport is Transport.TCP:
            return ms_turn.frame(ms_turn.FRAME_CONTROL, message)
        return message


def _name(username: bytes) -> str:
    """A printable form of a (possibly binary) MS-TURN username, for quotas and logs."""
    return username.decode("utf-8", "backslashreplace")
