"""The video-network leg of a stream: plain UDP on two pool ports (RTP even, RTCP odd) with
latching.

Latching (``Latch``, sans-IO): the endpoint's SDP address is where we send until its first
packet arrives; from then on we send to where its packets come from (it may sit behind NAT or
answer from another port). ``LatchMode.STRICT`` accepts only the SDP address's host, latches
once, and drops anything from elsewhere (counted, never forwarded).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Latch", "LatchMode", "RtpLeg"]

logger = logging.getLogger(__name__)

Address = tuple[str, int]


class LatchMode(enum.Enum):
    LATCH = "latch"
    """Send to the source of the latest packet."""
    STRICT = "strict"
    """Latch once, to a source on the SDP address's host; ignore every other source."""


@dataclass(slots=True)
class Latch:
    """Where one component (RTP or RTCP) of the video leg sends, and whom it listens to."""

    mode: LatchMode = LatchMode.LATCH
    sdp_address: Address | None = None
    """From the endpoint's SDP (c= and m= / a=rtcp); None before its SDP is known."""
    latched: Address | None = None
    """Source of the accepted packets, once one arrived."""
    relatches: int = 0
    """How often the source changed after the first latch (LATCH mode)."""

    @property
    def target(self) -> Address | None:
        return self.latched if self.latched is not None else self.sdp_address

    def accept(self, source: Address) -> bool:
        """Whether a packet from ``source`` is the endpoint's; latches as a side effect.

        Returns False for a packet to drop. ``latched`` changes only when this returns True."""
        latched = self.latched
        if latched == source:
            return True
        if self.mode is LatchMode.STRICT:
            if latched is not None:
                return False
            if self.sdp_address is None or source[0] != self.sdp_address[0]:
                return False
        elif latched is not None:
            self.relatches += 1
        self.latched = source
        return True

    def update_sdp(self, address: Address | None) -> None:
        """A new SDP from the endpoint: a different address starts latching over."""
        if address != self.sdp_address:
            self.sdp_address = address
            self.latched = None


class _Socket(asyncio.DatagramProtocol):
    __slots__ = ("leg", "component", "transport", "closed")

    def __init__(self, leg: RtpLeg, component: int) -> None:
        self.leg = leg
        self.component = component
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.leg.on_packet(data, (addr[0], addr[1]), self.component)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from an endpoint that is not up yet: not fatal.
        logger.debug("video leg %s:%d: %s", self.leg.host, self.leg.ports[self.component - 1], exc)


PacketSink = Callable[[bytes, int], None]
"""Called with (packet, component) for each packet the latch accepts."""
LatchSink = Callable[[int, Address], None]
"""Called with (component, source) when a component latches to a new source."""


class RtpLeg:
    """Two UDP sockets on ``host`` (RTP ``port``, RTCP ``port + 1``), latching per component."""

    def __init__(self, host: str, port: int, mode: LatchMode = LatchMode.LATCH) -> None:
        self.host = host
        self.ports = (port, port + 1)
        self.latches = (Latch(mode), Latch(mode))
        self.on_media: PacketSink | None = None
        self.on_latch: LatchSink | None = None
        self.on_dropped: Callable[[int], None] | None = None
        """Called with the size of a packet the latch refused."""
        self._sockets: list[_Socket] = []
        self._closing: list[asyncio.Future[None]] = []

    async def open(self) -> None:
        """Bind both ports; on failure nothing stays bound and ``OSError`` is raised."""
        loop = asyncio.get_running_loop()
        try:
            for component, port in ((1, self.ports[0]), (2, self.ports[1])):
                _, proto = await loop.create_datagram_endpoint(
                    lambda c=component: _Socket(self, c),  # type: ignore[misc]
                    local_addr=(self.host, port), family=_family(self.host))
                self._sockets.append(proto)
        except OSError:
            await self.aclose()
            raise

    def on_packet(self, data: bytes, source: Address, component: int) -> None:
        latch = self.latches[component - 1]
        before = latch.latched
        if not latch.accept(source):
            if self.on_dropped is not None:
                self.on_dropped(len(data))
            return
        if before != source and self.on_latch is not None:
            self.on_latch(component, source)
        if self.on_media is not None:
            self.on_media(data, component)

    def set_remote(self, rtp: Address | None, rtcp: Address | None) -> None:
        self.latches[0].update_sdp(rtp)
        self.latches[1].update_sdp(rtcp)

    def send(self, data: bytes, component: int) -> bool:
        """Send toward the endpoint; False when there is nowhere to send yet."""
        target = self.latches[component - 1].target
        if target is None or len(self._sockets) < component:
            return False
        transport = self._sockets[component - 1].transport
        if transport is None:
            return False
        transport.sendto(data, target)
        return True

    def close(self) -> None:
        """Close both sockets (they are released on the loop's next turn: see ``aclose``)."""
        self._closing = [s.closed for s in self._sockets]
        for sock in self._sockets:
            if sock.transport is not None:
                sock.transport.close()
        self._sockets.clear()

    async def aclose(self) -> None:
        """Close both sockets and wait until the ports are free again."""
        self.close()
        if self._closing:
            await asyncio.wait(self._closing, timeout=5.0)

    @property
    def is_open(self) -> bool:
        return bool(self._sockets)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
