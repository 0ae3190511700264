"""A SIP UDP socket as an asyncio datagram protocol: one datagram is one message."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

__all__ = ["DatagramEndpoint", "DatagramOwner"]

logger = logging.getLogger(__name__)


class DatagramOwner(Protocol):
    """What a :class:`DatagramEndpoint` reports to (the transport manager)."""

    def datagram(self, endpoint: DatagramEndpoint, data: bytes, source: tuple[str, int]) -> None:
        """One datagram arrived from ``source``."""

    def datagram_closed(self, endpoint: DatagramEndpoint) -> None:
        """The socket is closed."""


class DatagramEndpoint(asyncio.DatagramProtocol):
    """A bound UDP socket receiving and sending SIP datagrams."""

    def __init__(self, owner: DatagramOwner, *, connection_id: int) -> None:
        self.owner = owner
        self.id = connection_id
        self.transport: asyncio.DatagramTransport | None = None
        self.sockname: tuple[str, int] | None = None
        self.closed = False
        self.closed_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's classes: cast, do not isinstance.
        transport = cast(asyncio.DatagramTransport, base)
        if self.transport is transport:
            return
        self.transport = transport
        name = transport.get_extra_info("sockname")
        self.sockname = (str(name[0]), int(name[1]))

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not data.strip(b"\r\n \t\0"):
            # Blank keep-alive datagrams (some UAs send CRLFs on UDP too): nothing to answer.
            return
        self.owner.datagram(self, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) for an earlier sendto; UDP keeps serving.
        logger.info("UDP socket %s: %s", self.sockname, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        self.owner.datagram_closed(self)

    def attach(self, transport: asyncio.DatagramTransport) -> None:
        """Adopt the transport before ``connection_made`` runs (asyncio schedules it)."""
        if self.transport is None:
            self.connection_made(transport)

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        """Send one datagram."""
        if self.transport is None or self.closed:
            raise ConnectionError(f"UDP socket {self.sockname} is closed")
        self.transport.sendto(data, address)

    def close(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()
