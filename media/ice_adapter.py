"""aioice on the relay's sockets: the one adapter between ICE control and the packet path.

The relay (``media.relay``) owns the Microsoft side's host socket of each component; aioice
keeps only ICE control (checks, nomination, consent). Its ``StunProtocol`` talks to a
``transport`` through ``sendto`` / ``close`` / ``get_extra_info`` (asyncio's
``DatagramTransport`` surface): ``RelayTransport`` is that transport, sending through
``relay.sendto(Side.A, ...)``; the relay hands every STUN datagram it receives on side A to
``deliver``, which feeds the protocol (``datagram_received``). RTP/RTCP never reaches aioice:
the relay forwards it (or, on the Python path, the stream does).

``close`` does not close the socket (the relay does, so that the port goes back to the pool
only once it is really closed); it tells the protocol it lost its transport on the loop's
next turn, as asyncio's transports do, so aioice's ``Connection.close`` (which awaits that)
completes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from media.relay import Address, Relay, Side

__all__ = ["RelayTransport"]

logger = logging.getLogger(__name__)


class RelayTransport(asyncio.DatagramTransport):
    """The host socket of one ICE component, as aioice's protocol sees it."""

    def __init__(self, relay: Relay, sockname: Address) -> None:
        super().__init__()
        self.relay = relay
        self.sockname = sockname
        self.protocol: asyncio.DatagramProtocol | None = None
        self._closing = False

    def attach(self, protocol: asyncio.DatagramProtocol) -> None:
        """Give the transport to ``protocol`` (``connection_made``)."""
        self.protocol = protocol
        protocol.connection_made(self)

    # -- what aioice calls -----------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing or addr is None:
            return
        try:
            self.relay.sendto(Side.A, bytes(data), (addr[0], addr[1]))
        except (OSError, ValueError) as exc:
            # asyncio's transports report send errors to error_received, never raise.
            if self.protocol is not None:
                self.protocol.error_received(exc if isinstance(exc, OSError) else OSError(exc))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.sockname
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        protocol = self.protocol
        if protocol is not None:
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    # -- what the relay calls --------------------------------------------------------------

    def deliver(self, data: bytes, addr: Address) -> None:
        """A STUN datagram the relay received on this component's host socket."""
        if self._closing or self.protocol is None:
            return
        try:
            self.protocol.datagram_received(data, addr)
        except Exception:  # a bad message must not stop the relay's batch
            logger.exception("ICE: STUN from %s:%d", *addr)
