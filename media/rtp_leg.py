"""The video-network leg of a stream: plain UDP on two pool ports (RTP even, RTCP odd) with
latching.

Latching (done in the packet path: ``media.relay.Latching`` STRICT / NAT; rtpengine's
endpoint learning and "strict source" are the reference): until the endpoint's first packet
we send to its SDP address; the first acceptable packet latches the component to its source,
and from then on we send there and accept only that source (rtpengine's strict-source:
anything else is dropped, counted, never forwarded). Which first packet is acceptable
depends on the mode:

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
import time
from collections.abc import Callable
from dataclasses import dataclass

from media.relay import ForwardingPlan, Latching, Relay, Side, SidePlan, Verdict

__all__ = ["LatchMode", "LatchSettings", "LatchView", "RtpLeg", "bind_udp", "looks_like_rtp"]

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


_NOWHERE = ("0.0.0.0", 9)
"""Side A of a standalone leg's relay: packets are judged, never sent there."""


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound on ``host:port`` (closed again if the bind fails)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class LatchView:
    """Where one component of the video leg sends and whom it listens to, read from the
    relay (which does the latching: ``media.relay.Latching``)."""

    __slots__ = ("_component", "_leg")

    def __init__(self, leg: RtpLeg, component: int) -> None:
        self._leg = leg
        self._component = component

    @property
    def sdp_address(self) -> Address | None:
        """From the endpoint's SDP (c= and m= / a=rtcp); None before its SDP is known."""
        return self._leg.sdp[self._component - 1]

    @property
    def latched(self) -> Address | None:
        """Source of the accepted packets, once one arrived."""
        relay = self._leg.relay(self._component)
        return None if relay is None else relay.latched(Side.B)

    @property
    def target(self) -> Address | None:
        latched = self.latched
        return latched if latched is not None else self.sdp_address

    @property
    def relatches(self) -> int:
        """How often the source changed after the first latch."""
        relay = self._leg.relay(self._component)
        return 0 if relay is None else relay.counters(Side.B)["relatches"]


PacketSink = Callable[[bytes, int], None]
"""Called with (packet, component) for each packet received on the Python path."""
LatchSink = Callable[[int, Address], None]
"""Called with (component, source) when a component latches to a new source."""


class RtpLeg:
    """The video leg of a stream: RTP ``port`` and RTCP ``port + 1`` on ``host``, each the
    side B socket of its component's relay (``media.stream`` binds them and gives them to
    the relays, which latch, forward and close them). What is left here is what call
    control and the operator's page read and set: the endpoint's SDP addresses, the latch
    state, ``on_media`` / ``send`` for the packets that take the Python path."""

    def __init__(self, host: str, port: int, latch: LatchSettings | None = None) -> None:
        self.host = host
        self.ports = (port, port + 1)
        self.settings = latch or LatchSettings()
        self.sdp: list[Address | None] = [None, None]
        """The endpoint's RTP and RTCP addresses from its SDP."""
        self.latches = (LatchView(self, 1), LatchView(self, 2))
        self.on_media: PacketSink | None = None
        self.on_latch: LatchSink | None = None
        self.relays: tuple[Relay, ...] = ()
        """The relays of components 1 and 2 (set by the stream once bound)."""
        self.send_errors = 0
        self._own: list[socket.socket] = []
        """Sockets of a standalone leg (``open``)."""

    def relay(self, component: int) -> Relay | None:
        return self.relays[component - 1] if len(self.relays) >= component else None

    def set_remote(self, rtp: Address | None, rtcp: Address | None) -> None:
        self.sdp = [rtp, rtcp]
        if self._own:
            self._publish_own()

    # -- standalone: a leg without a stream (tests, tools) ---------------------------------------

    async def open(self) -> None:
        """Bind both ports for a leg used on its own: its relays have no side A, latch on the
        Python path and hand each accepted packet to ``on_media``. On failure nothing stays
        bound and ``OSError`` is raised. (In a call, ``media.stream`` binds the ports.)"""
        from media.relay import make_relay  # the stream module imports this one

        loop = asyncio.get_running_loop()
        try:
            for component, port in enumerate(self.ports, start=1):
                sock = bind_udp(self.host, port)
                try:
                    relay = make_relay(-1, sock.dup().detach(), impl="python")
                except BaseException:
                    sock.close()
                    raise
                self._own.append(sock)
                self.relays = (*self.relays, relay)
                loop.add_reader(sock.fileno(), self._readable, component, sock)
        except BaseException:
            await self.aclose()
            raise
        self._publish_own()

    def _publish_own(self) -> None:
        mode = Latching.STRICT if self.settings.mode is LatchMode.STRICT else Latching.NAT
        for relay, sdp in zip(self.relays, self.sdp, strict=False):
            relay.publish(ForwardingPlan(
                a=SidePlan(address=_NOWHERE),
                b=SidePlan(latching=mode, address=sdp, relatch_after=self.settings.relatch_after),
                b_to_a=True, rtcp=True))

    def _readable(self, component: int, sock: socket.socket) -> None:
        relay = self.relays[component - 1]
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            verdict, _, _ = relay.feed(Side.B, data, (addr[0], addr[1]), time.monotonic_ns())
            if verdict is Verdict.FORWARD and self.on_media is not None:
                self.on_media(data, component)

    async def aclose(self) -> None:
        """Close a standalone leg's sockets."""
        loop = asyncio.get_running_loop()
        for sock in self._own:
            loop.remove_reader(sock.fileno())
            sock.close()
        for relay in self.relays[:len(self._own)]:
            relay.close()
        self._own.clear()

    @property
    def bound_ports(self) -> int:
        return len(self._own)

    def send(self, data: bytes, component: int) -> bool:
        """Send toward the endpoint (latched source, else SDP address); False when there is
        nowhere to send yet or the socket refused."""
        relay = self.relay(component)
        target = self.latches[component - 1].target
        if relay is None or target is None:
            return False
        try:
            relay.sendto(Side.B, data, target)
        except (OSError, ValueError):
            self.send_errors += 1
            return False
        return True
