"""The UDP sockets' asyncio protocols: a client-facing listener and a relay port.

Both are on the per-packet path: bound methods are looked up once, ChannelData never goes
through a STUN message object, and the sockets' own ``sendto`` is used where it can be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .allocation import Address, Allocation, FiveTuple, Transport

if TYPE_CHECKING:
    from .core import TurnCore
    from .server import TurnServer

# The asyncio adapter logs under one name, as before it was split.
logger = logging.getLogger("turn.server")

_UDP = Transport.UDP
_new_tuple = tuple.__new__


class UdpListener(asyncio.DatagramProtocol):
    """A UDP listening port: ChannelData straight out of its relay's socket, the rest (STUN,
    MS-TURN's unencapsulated data) through the server to the core."""

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


class UdpRelay(asyncio.DatagramProtocol):
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
