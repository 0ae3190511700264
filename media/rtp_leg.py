"""The video-network leg of a stream: plain UDP on two pool ports (RTP even, RTCP odd) with
latching.

Latching (``Latch``, sans-IO; rtpengine's endpoint learning and "strict source" are the
reference): until the endpoint's first packet we send to its SDP address; the first
acceptable packet latches the component to its source, and from then on we send there and
accept only that source (rtpengine's strict-source: anything else is dropped, counted, never
forwarded). Which first packet is acceptable depends on the mode:

- ``LatchMode.STRICT`` (the default): a source on the SDP address (its host; any port, so
  that an endpoint whose ports are rewritten by a NAT on its own network still latches; the
  exact SDP address and port takes over from another port of that host at any time).
  Nothing latches before the endpoint's SDP is known.
- ``LatchMode.NAT``: the first source at all (an endpoint behind a NAT, whose SDP carries a
  private address), even before its SDP arrived (it may send as soon as it has our offer).

The latched source is kept; a new source takes over only once the latched one has been
silent for ``relatch_after`` seconds (an endpoint that moved, a NAT binding that changed),
and only if it passes the mode's first-latch rule. A packet that is not RTP/RTCP (version 2
header, minimum size) never latches and is never forwarded, whatever its source.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Latch", "LatchMode", "LatchSettings", "RtpLeg", "looks_like_rtp"]

logger = logging.getLogger(__name__)

Address = tuple[str, int]

RTP_HEADER = 12
"""RFC 3550 §5.1 fixed header."""
RTCP_HEADER = 8
"""RFC 3550 §6.4.1: the smallest RTCP packet (an empty receiver report)."""


class LatchMode(enum.Enum):
    STRICT = "strict"
    """Latch to a source on the SDP address's host; nothing before the SDP is known."""
    NAT = "nat"
    """Latch to the first source at all (endpoint behind a NAT)."""


@dataclass(frozen=True, slots=True)
class LatchSettings:
    """How the video leg latches."""

    mode: LatchMode = LatchMode.STRICT
    """Which source may latch first (see the module doc)."""
    relatch_after: float = 5.0
    """Seconds of silence from the latched source after which another source may take over."""

    def __post_init__(self) -> None:
        if not self.relatch_after > 0:
            raise ValueError("relatch_after must be positive")


def looks_like_rtp(data: bytes, component: int) -> bool:
    """Whether ``data`` can be RTP (component 1) or RTCP (component 2): version 2 and at
    least the fixed header. SRTP/SRTCP keep that header in the clear."""
    if len(data) < (RTP_HEADER if component == 1 else RTCP_HEADER):
        return False
    return data[0] >> 6 == 2


@dataclass(slots=True)
class Latch:
    """Where one component (RTP or RTCP) of the video leg sends, and whom it listens to."""

    settings: LatchSettings = field(default_factory=LatchSettings)
    sdp_address: Address | None = None
    """From the endpoint's SDP (c= and m= / a=rtcp); None before its SDP is known."""
    latched: Address | None = None
    """Source of the accepted packets, once one arrived."""
    last_heard: float = 0.0
    """When the latched source last sent (the caller's clock)."""
    relatches: int = 0
    """How often the source changed after the first latch."""

    @property
    def target(self) -> Address | None:
        return self.latched if self.latched is not None else self.sdp_address

    def accept(self, source: Address, now: float) -> bool:
        """Whether a packet from ``source`` is the endpoint's; latches as a side effect.

        Returns False for a packet to drop. ``latched`` changes only when this returns True."""
        latched = self.latched
        if latched == source:
            self.last_heard = now
            return True
        # The exact SDP address may take over from another port of its host at any time
        # (rtpengine's heuristic ranks it first); anyone else waits for the silence.
        exact = source == self.sdp_address and self.settings.mode is LatchMode.STRICT
        if (latched is not None and not exact
                and now - self.last_heard < self.settings.relatch_after):
            return False
        if self.settings.mode is LatchMode.STRICT and (
                self.sdp_address is None or source[0] != self.sdp_address[0]):
            return False
        if latched is not None:
            self.relatches += 1
        self.latched = source
        self.last_heard = now
        return True

    def update_sdp(self, address: Address | None) -> None:
        """A new SDP from the endpoint: a different address starts latching over."""
        if address != self.sdp_address:
            self.sdp_address = address
            self.latched = None


class _Socket(asyncio.DatagramProtocol):
    __slots__ = ("closed", "component", "leg", "transport")

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

    def __init__(self, host: str, port: int, latch: LatchSettings | None = None) -> None:
        self.host = host
        self.ports = (port, port + 1)
        latch = latch or LatchSettings()
        self.latches = (Latch(latch), Latch(latch))
        self.on_media: PacketSink | None = None
        self.on_latch: LatchSink | None = None
        self.on_dropped: Callable[[int], None] | None = None
        """Called with the size of a packet the latch refused."""
        self._sockets: list[_Socket] = []
        self._bound: list[_Socket] = []
        """Every socket opened and not yet reported closed by the loop."""
        self._closing: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        """Bind both ports; on failure nothing stays bound and ``OSError`` is raised."""
        loop = self._loop = asyncio.get_running_loop()
        try:
            for component, port in ((1, self.ports[0]), (2, self.ports[1])):
                _, proto = await loop.create_datagram_endpoint(
                    lambda c=component: _Socket(self, c),  # type: ignore[misc]
                    local_addr=(self.host, port), family=_family(self.host))
                self._sockets.append(proto)
                self._bound.append(proto)
        except OSError:
            await self.aclose()
            raise

    def on_packet(self, data: bytes, source: Address, component: int) -> None:
        latch = self.latches[component - 1]
        before = latch.latched
        now = self._loop.time() if self._loop is not None else 0.0
        if not looks_like_rtp(data, component) or not latch.accept(source, now):
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

    @property
    def bound_ports(self) -> int:
        """Sockets still open (a closed transport is released on the loop's next turn)."""
        self._bound = [s for s in self._bound if not s.closed.done()]
        return len(self._bound)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
