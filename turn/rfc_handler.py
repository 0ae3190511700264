"""RFC 8656 requests in the sans-IO core: parsing, the RFC 8489 §9.2.4 authentication, the
error responses, Binding, Refresh, CreatePermission, ChannelBind and Send indications.

Allocate (``allocate``) and the RFC 6062 requests (``tcp_relay``) are dispatched from here;
the allocations, quotas, policy, nonces and timers are the ``TurnCore``'s.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import stun
from .allocation import (
    Action,
    Address,
    Allocation,
    AllocationState,
    Channel,
    FiveTuple,
    SendToClient,
    SendToPeer,
    Transport,
)
from .errors import DecodeError, Refusal
from .stun import Attr, Class, Method, StunMessage

if TYPE_CHECKING:
    from .core import TurnCore

# The sans-IO core logs under one name, as before it was split (lab/cli.py quiets it).
logger = logging.getLogger("turn.core")

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
LEGACY_CHANNEL_MAX = 0x7FFF  # RFC 5766's range, still used by coturn's turnutils_uclient


class RfcHandler:
    """The RFC 8656 side of one ``TurnCore``."""

    def __init__(self, core: TurnCore) -> None:
        self.core = core

    def handle(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A STUN message that is not MS-TURN. Bad bytes give 400 when answerable, else
        nothing."""
        try:
            msg = stun.parse(data)
        except DecodeError as exc:
            logger.debug("undecodable STUN from %s: %s", five_tuple.client, exc.message)
            return self._answer_garbage(data, five_tuple, exc)
        if msg.cls == Class.REQUEST:
            try:
                return self._handle_request(msg, five_tuple, now)
            except Refusal as refusal:
                return [SendToClient(five_tuple, self._refusal_bytes(msg, refusal, now))]
            except DecodeError as exc:
                logger.info("bad request from %s: %s", five_tuple.client, exc.message)
                response = stun.error_response(
                    msg, 400, self.core._software, reason=exc.message[:120]
                )
                return [SendToClient(five_tuple, response)]
        if msg.cls == Class.INDICATION and msg.method == Method.SEND:
            try:
                return self._handle_send(msg, five_tuple, now)
            except DecodeError:
                return []
        return []  # responses and other indications are not for a server

    # -- requests ---------------------------------------------------------------------------

    def _handle_request(self, msg: StunMessage, ft: FiveTuple, now: float) -> list[Action]:
        if msg.method == Method.BINDING:
            return [SendToClient(ft, self._binding_response(msg, ft))]
        core = self.core
        handler: Callable[[StunMessage, FiveTuple, float, str, bytes], list[Action]] | None = {
            Method.ALLOCATE: core.allocator.allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
            Method.CONNECT: core.tcp_relay.connect,
            Method.CONNECTION_BIND: core.tcp_relay.connection_bind,
        }.get(msg.method)  # type: ignore[call-overload]
        if handler is None:
            raise Refusal(f"unsupported method 0x{msg.method:03x}", 400)
        unknown = msg.unknown_required()
        if unknown:
            raise Refusal(
                "unknown comprehension-required attributes",
                420,
                extra=((int(Attr.UNKNOWN_ATTRIBUTES), stun.pack_unknown_attributes(unknown)),),
            )
        username, key = self._authenticate(msg, ft, now)
        try:
            return handler(msg, ft, now, username, key)
        except DecodeError as exc:
            raise Refusal(exc.message, 400, key) from None

    def _authenticate(self, msg: StunMessage, ft: FiveTuple, now: float) -> tuple[str, bytes]:
        """RFC 8489 §9.2.4, in its order: 401, 400, 438, 401, 401."""
        core = self.core
        if msg.integrity_offset is None:
            raise Refusal("credentials required", 401)
        raw_user, realm, nonce = msg.get(Attr.USERNAME), msg.get(Attr.REALM), msg.get(Attr.NONCE)
        if raw_user is None or realm is None or nonce is None:
            raise Refusal("USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY", 400)
        if not core.auth.nonce_valid(nonce, now):
            raise Refusal("stale nonce", 438)
        username = stun.unpack_text(raw_user, 513)
        key = core.auth.key_for(username)
        if key is None or stun.unpack_text(realm) != core.auth.realm:
            core.counters.auth_failures += 1
            logger.warning("TURN auth failed from %s: unknown user %r", fmt(ft.client), username)
            raise Refusal("unknown user", 401)
        if not msg.check_integrity(key):
            core.counters.auth_failures += 1
            logger.warning(
                "TURN auth failed from %s: wrong password for %r", fmt(ft.client), username
            )
            raise Refusal("wrong credentials", 401)
        return username, key

    def _binding_response(self, msg: StunMessage, ft: FiveTuple) -> bytes:
        attrs = [
            (int(Attr.XOR_MAPPED_ADDRESS), stun.pack_xor_address(ft.client, msg.transaction_id)),
            (int(Attr.MAPPED_ADDRESS), stun.pack_address(ft.client)),
            *self.core._software,
        ]
        return stun.encode(Method.BINDING, Class.RESPONSE, msg.transaction_id, attrs)

    def _refresh(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        core = self.core
        alloc = own_allocation(core, ft, username, key)
        lifetime = core._lifetime(msg.get(Attr.LIFETIME), allocate=False)
        actions: list[Action] = []
        if lifetime == 0:
            logger.info("allocation #%d deleted by the client", alloc.id)
            actions.extend(core._delete(alloc))
        else:
            alloc.expiry = now + lifetime
            core._push_timer(alloc.expiry, "allocation", alloc)
            if core.publish_forwarding:
                core._forwarding_changed[alloc.id] = alloc
        attrs = [(int(Attr.LIFETIME), stun.pack_u32(lifetime)), *core._software]
        response = stun.encode(Method.REFRESH, Class.RESPONSE, msg.transaction_id, attrs, key=key)
        return [SendToClient(ft, response), *actions]

    def _create_permission(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        core = self.core
        alloc = own_allocation(core, ft, username, key)
        values = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not values:
            raise Refusal("XOR-PEER-ADDRESS missing", 400, key)
        peers = [permitted_peer(core, msg, v, alloc, key) for v in values]
        for peer in peers:
            core._permit(alloc, peer[0], now)
        response = stun.encode(
            Method.CREATE_PERMISSION, Class.RESPONSE, msg.transaction_id, core._software, key=key
        )
        return [SendToClient(ft, response)]

    def _channel_bind(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        core = self.core
        alloc = own_allocation(core, ft, username, key)
        if alloc.transport is not Transport.UDP:
            raise Refusal("channels are for UDP relays", 400, key)
        raw_number = msg.get(Attr.CHANNEL_NUMBER)
        raw_peer = msg.get(Attr.XOR_PEER_ADDRESS)
        if raw_number is None or len(raw_number) != 4 or raw_peer is None:
            raise Refusal("CHANNEL-NUMBER and XOR-PEER-ADDRESS are required", 400, key)
        number = struct.unpack("!H", raw_number[:2])[0]
        if not CHANNEL_MIN <= number <= core._channel_max:
            raise Refusal(f"channel number 0x{number:04x} out of range", 400, key)
        peer = permitted_peer(core, msg, raw_peer, alloc, key)
        channel = alloc.channels.get(number)
        if channel is not None and channel.peer != peer:
            raise Refusal("channel bound to another peer", 400, key)
        bound = alloc.peer_channels.get(peer)
        if bound is not None and bound != number:
            raise Refusal("peer bound to another channel", 400, key)
        expiry = now + core.config.channel_lifetime
        if channel is None:
            alloc.channels[number] = Channel(peer, expiry)
            alloc.peer_channels[peer] = number
        else:
            channel.expiry = expiry
        core._push_timer(expiry, "channel", (alloc, number))
        core._permit(alloc, peer[0], now)
        response = stun.encode(
            Method.CHANNEL_BIND, Class.RESPONSE, msg.transaction_id, core._software, key=key
        )
        return [SendToClient(ft, response)]

    def _handle_send(self, msg: StunMessage, ft: FiveTuple, now: float) -> list[Action]:
        core = self.core
        alloc = core.allocations.get(ft)
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
        core.counters.packets_to_peer += 1
        core.counters.bytes_to_peer += len(data)
        return [SendToPeer(alloc, peer, data)]

    # -- error responses --------------------------------------------------------------------

    def _refusal_bytes(self, msg: StunMessage, refusal: Refusal, now: float) -> bytes:
        core = self.core
        code = refusal.status_hint
        extra: list[tuple[int, bytes]] = list(refusal.extra)
        if code in (401, 438):
            extra += [
                (int(Attr.REALM), core.auth.realm.encode()),
                (int(Attr.NONCE), core.auth.make_nonce(now)),
            ]
        if code not in (401, 438) or msg.integrity_offset is not None:
            logger.info("refused %s: %d %s", _method_name(msg.method), code, refusal.message)
        extra.extend(core._software)
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
            *self.core._software,
        ]
        return [SendToClient(ft, stun.encode(method, Class.ERROR, data[8:20], attrs))]


# -- checks shared with Allocate and the RFC 6062 requests ----------------------------------


def own_allocation(core: TurnCore, ft: FiveTuple, username: str, key: bytes) -> Allocation:
    alloc = core.allocations.get(ft)
    if alloc is None or alloc.state is not AllocationState.ACTIVE:
        raise Refusal("no allocation for this 5-tuple", 437, key)
    if alloc.username != username:
        raise Refusal("allocation belongs to another user", 441, key)
    return alloc


def permitted_peer(
    core: TurnCore, msg: StunMessage, value: bytes, alloc: Allocation, key: bytes
) -> Address:
    peer = stun.unpack_xor_address(value, msg.transaction_id)
    if not core.policy.permits(peer[0]):
        core.counters.peers_denied += 1
        logger.warning("allocation #%d: peer %s refused by policy", alloc.id, fmt(peer))
        raise Refusal(f"peer {peer[0]} not allowed", 403, key)
    if address_family(peer[0]) != address_family(alloc.relay_host):
        raise Refusal("peer address family mismatch", 443, key)
    return peer


def address_family(host: str) -> int:
    return 2 if ":" in host else 1


def fmt(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


def _method_name(method: int) -> str:
    try:
        return Method(method).name
    except ValueError:
        return f"0x{method:03x}"
