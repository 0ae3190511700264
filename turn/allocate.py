"""RFC 8656 Allocate in the sans-IO core: the request's checks, quotas and relay port
(EVEN-PORT, RESERVATION-TOKEN), then its answer once the adapter has bound the relay port,
or another port when that bind failed. MS-TURN allocations share the answer step.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import stun
from .allocation import (
    Action,
    Allocation,
    AllocationState,
    CloseRelay,
    FiveTuple,
    OpenRelay,
    SendToClient,
    Transport,
)
from .errors import Refusal
from .rfc_handler import address_family, fmt
from .stun import Attr, Class, Method, StunMessage

if TYPE_CHECKING:
    from .core import TurnCore

# The sans-IO core logs under one name, as before it was split (lab/cli.py quiets it).
logger = logging.getLogger("turn.core")

RESERVATION_LIFETIME = 30.0
MAX_BIND_ATTEMPTS = 10


class Allocator:
    """Allocate requests and relay ports of one ``TurnCore``."""

    def __init__(self, core: TurnCore) -> None:
        self.core = core

    def allocate(
        self, msg: StunMessage, ft: FiveTuple, now: float, username: str, key: bytes
    ) -> list[Action]:
        core = self.core
        existing = core.allocations.get(ft)
        if existing is not None:
            if existing.allocate_tid == msg.transaction_id:
                # A retransmission: answer again (or wait for the pending bind to answer).
                if existing.allocate_response:
                    return [SendToClient(ft, existing.allocate_response)]
                return []
            raise Refusal("an allocation exists for this 5-tuple", 437, key)
        if ft in core._data_connections:
            raise Refusal("a data connection cannot hold an allocation", 400, key)
        rt = msg.get(Attr.REQUESTED_TRANSPORT)
        if rt is None or len(rt) != 4:
            raise Refusal("REQUESTED-TRANSPORT missing", 400, key)
        even_port = msg.get(Attr.EVEN_PORT)
        token = msg.get(Attr.RESERVATION_TOKEN)
        family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if rt[0] == stun.TRANSPORT_UDP:
            transport = Transport.UDP
        elif rt[0] == stun.TRANSPORT_TCP and core.config.tcp:
            transport = Transport.TCP
            if ft.transport is not Transport.TCP:
                raise Refusal("TCP relays need a TCP control connection (RFC 6062)", 400, key)
            if even_port is not None or token is not None or msg.has(Attr.DONT_FRAGMENT):
                raise Refusal(
                    "EVEN-PORT, RESERVATION-TOKEN and DONT-FRAGMENT are UDP-only", 400, key
                )
        else:
            raise Refusal(f"transport {rt[0]} not supported", 442, key)
        if even_port is not None and token is not None:
            raise Refusal("EVEN-PORT with RESERVATION-TOKEN", 400, key)
        if token is not None and len(token) != 8:
            raise Refusal("RESERVATION-TOKEN must be 8 bytes", 400, key)
        if even_port is not None and len(even_port) < 1:
            raise Refusal("EVEN-PORT is empty", 400, key)
        if family is not None:
            if token is not None:
                raise Refusal("REQUESTED-ADDRESS-FAMILY with RESERVATION-TOKEN", 400, key)
            if len(family) < 1 or family[0] not in (1, 2):
                raise Refusal("bad REQUESTED-ADDRESS-FAMILY", 400, key)
            if family[0] != address_family(core.relay_host):
                raise Refusal("address family not supported", 440, key)
        if len(core.allocations) >= core.config.total_quota:
            raise Refusal("server allocation quota reached", 486, key)
        if core._per_user.get(username, 0) >= core.config.user_quota:
            raise Refusal(f"allocation quota of {username} reached", 486, key)
        reserve_next = bool(even_port and even_port[0] & 0x80)
        if token is not None:
            reservation = core._reservations.pop(token, None)
            if reservation is None or reservation[1] <= now:
                raise Refusal("unknown or expired RESERVATION-TOKEN", 508, key)
            port: int | None = reservation[0]
        else:
            port = core.pool.take(even=even_port is not None, pair=reserve_next)
        if port is None:
            logger.warning("relay port range %d-%d exhausted", core.pool.low, core.pool.high)
            raise Refusal("no relay port available", 508, key)
        requested = msg.get(Attr.LIFETIME)
        lifetime = core._lifetime(requested, allocate=True)
        alloc = Allocation(
            id=core._next_id,
            five_tuple=ft,
            username=username,
            key=key,
            transport=transport,
            expiry=now + lifetime,
            relay_port=port,
            relay_host=core.relay_host,
            allocate_tid=msg.transaction_id,
            lifetime=lifetime,
            reserve_next=reserve_next,
        )
        core._next_id += 1
        core.allocations[ft] = alloc
        core._per_user[username] = core._per_user.get(username, 0) + 1
        core._push_timer(alloc.expiry, "allocation", alloc)
        return [OpenRelay(alloc)]

    def opened(self, alloc: Allocation, now: float) -> list[Action]:
        """The adapter bound the relay port: answer the Allocate."""
        core = self.core
        if core.allocations.get(alloc.five_tuple) is not alloc:
            return [CloseRelay(alloc)]  # deleted (connection closed) while binding
        alloc.state = AllocationState.ACTIVE
        if alloc.ms is not None:
            alloc.allocate_response = core.ms.allocate_success(alloc)
            logger.info(
                "MS-TURN allocation #%d for %s (%s) relay %s:%d, lifetime %ds",
                alloc.id,
                alloc.username,
                fmt(alloc.five_tuple.client),
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
            token = core._rng.randbytes(8)
            alloc.reservation_token = token
            core._reservations[token] = (alloc.relay_port + 1, now + RESERVATION_LIFETIME)
            core._push_timer(now + RESERVATION_LIFETIME, "reservation", token)
            attrs.append((Attr.RESERVATION_TOKEN, token))
        attrs.extend(core._software)
        response = stun.encode(
            Method.ALLOCATE, Class.RESPONSE, alloc.allocate_tid, attrs, key=alloc.key
        )
        alloc.allocate_response = response
        logger.info(
            "allocation #%d for %s (%s) relay %s:%d %s, lifetime %ds",
            alloc.id,
            alloc.username,
            fmt(alloc.five_tuple.client),
            alloc.relay_host,
            alloc.relay_port,
            alloc.transport.name,
            alloc.lifetime,
        )
        return [SendToClient(alloc.five_tuple, response)]

    def failed(self, alloc: Allocation, now: float) -> list[Action]:
        """The relay port could not be bound (taken by another process): try another."""
        core = self.core
        if core.allocations.get(alloc.five_tuple) is not alloc:
            return []
        core._release_ports(alloc)
        alloc.tried_ports.add(alloc.relay_port)
        alloc.bind_attempts += 1
        port = None
        if alloc.bind_attempts < MAX_BIND_ATTEMPTS and not alloc.reservation_token:
            port = core.pool.take(
                even=alloc.reserve_next, pair=alloc.reserve_next, avoid=frozenset(alloc.tried_ports)
            )
        if port is None:
            core._forget(alloc)
            logger.warning("allocation #%d: no bindable relay port", alloc.id)
            if alloc.ms is not None:
                failure = core.ms.allocate_failure(alloc, 508, "Insufficient Capacity")
                return [SendToClient(alloc.five_tuple, failure)]
            response = stun.encode(
                Method.ALLOCATE,
                Class.ERROR,
                alloc.allocate_tid,
                [(Attr.ERROR_CODE, stun.pack_error_code(508)), *core._software],
                key=alloc.key,
            )
            return [SendToClient(alloc.five_tuple, response)]
        alloc.relay_port = port
        return [OpenRelay(alloc)]
