"""One relayed stream (an m= line): the Microsoft leg (ICE, usually SRTP) and the video leg
(latched UDP, RTP or SDES-SRTP), and the relays between them.

``StreamState`` is the sans-IO part: which ways flow (from the four SDP directions), the SRTP
keys and the SSRC range of the current offer/answer, and the ``ForwardingPlan`` they make
for each component. ``MediaStream`` owns the sockets: per component (1 RTP, 2 RTCP; neither
side muxes them) one relay (``media.relay``) holds the Microsoft leg's host socket (side A)
and the video leg's socket (side B), forwards between them and closes them.

Two packet paths, per component:

- the fast path: the relay is registered with the loop's hub (``make_hub`` / ``attach``),
  which receives, rewrites and sends batches without a Python frame per packet; STUN comes
  up through ``on_stun`` to aioice (``media.ice_adapter``);
- the Python path: the loop reads the sockets (through a duplicate of each fd, so the relay
  stays their owner) and each packet goes through the legs' ``on_media`` / ``send``, which
  call ``relay.feed`` (same rules, same counters) and send the result.

A component runs the fast path once the offer/answer is applied, its ICE pair is nominated
and leaves from our host socket, and nobody taps the legs (the operator's page records a
call's first packets by wrapping ``on_media`` / ``send``: ``gateway.call_log``; it unwraps
them once its capture is full). A pair through a TURN allocation (aioice's socket, toward an
Edge) stays on the Python path: its packets come and go through aioice's TURN client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from media.counters import LegCounters
from media.ice_adapter import RelayTransport
from media.ice_leg import IceLeg
from media.ms_dialect import SsrcRange
from media.relay import (
    Address,
    ForwardingPlan,
    Hub,
    Latching,
    Relay,
    Side,
    SidePlan,
    Verdict,
    attach,
    implementation,
    make_hub,
    make_relay,
)
from media.rtp_leg import LatchMode, LatchSettings, RtpLeg, bind_udp
from media.sdp import Media
from media.srtp import LegKeys, select_keys

__all__ = ["Flow", "MediaStream", "StreamState", "flow_of", "hub_for"]

logger = logging.getLogger(__name__)

_SENDS = frozenset({"sendrecv", "sendonly"})
_RECEIVES = frozenset({"sendrecv", "recvonly"})
_BATCH = 64
"""Datagrams read per wake-up on the Python path before yielding to the loop."""
_ANYWHERE = ("0.0.0.0", 9)
"""The source given to ``feed`` for a packet that came through aioice's TURN client (side A
is FIXED: its source is not judged)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """Which ways RTP may go (RTCP always flows while the stream is live, RFC 3264 §5.1)."""

    to_video: bool
    """Microsoft -> video endpoint."""
    to_microsoft: bool
    """Video endpoint -> Microsoft."""


def flow_of(ms_local: Media, ms_remote: Media, video_local: Media, video_remote: Media) -> Flow:
    """The flow from the four m= lines of a stream: a way is open when its sender's SDP says
    it sends, the gateway's SDP toward the sender says it receives, the gateway's SDP toward
    the receiver says it sends, and the receiver's SDP says it receives."""
    live = all(m.port for m in (ms_local, ms_remote, video_local, video_remote))
    if not live:
        return Flow(False, False)
    return Flow(
        to_video=(ms_remote.direction in _SENDS and ms_local.direction in _RECEIVES
                  and video_local.direction in _SENDS and video_remote.direction in _RECEIVES),
        to_microsoft=(video_remote.direction in _SENDS and video_local.direction in _RECEIVES
                      and ms_local.direction in _SENDS and ms_remote.direction in _RECEIVES),
    )


_LATCHING = {LatchMode.STRICT: Latching.STRICT, LatchMode.NAT: Latching.NAT}


@dataclass(slots=True)
class StreamState:
    """The current offer/answer's rules for one stream (sans-IO)."""

    flow: Flow = Flow(False, False)
    live: bool = False
    """Both sides accepted the stream (RTCP flows even on hold)."""
    ms_keys: LegKeys | None = None
    video_keys: LegKeys | None = None
    ssrc_range: SsrcRange | None = None
    """Endpoint SSRCs are mapped into this range toward Microsoft (None: pass through)."""
    applied: bool = False
    """An offer/answer was applied."""

    def apply(self, ms_local: Media, ms_remote: Media, video_local: Media,
              video_remote: Media, ssrc_range: SsrcRange | None) -> None:
        """Take a new offer/answer (the relays keep SRTP sessions whose keys did not change,
        so a re-INVITE for hold does not reset replay windows and rollover counters)."""
        self.flow = flow_of(ms_local, ms_remote, video_local, video_remote)
        self.live = all(m.port for m in (ms_local, ms_remote, video_local, video_remote))
        self.ms_keys = select_keys(ms_local, ms_remote)
        self.video_keys = select_keys(video_local, video_remote)
        self.ssrc_range = ssrc_range
        self.applied = True

    def plan(self, ice_remote: Address | None, video_sdp: Address | None,
             latch: LatchSettings) -> ForwardingPlan:
        """One component's plan: the Microsoft side sends to the ICE pair's remote address
        (FIXED: aioice judged the pair), the video side latches as ``latch`` says."""
        return ForwardingPlan(
            a=SidePlan.srtp(self.ms_keys, latching=Latching.FIXED, address=ice_remote),
            b=SidePlan.srtp(self.video_keys, latching=_LATCHING[latch.mode],
                            address=video_sdp, relatch_after=latch.relatch_after),
            a_to_b=self.flow.to_video, b_to_a=self.flow.to_microsoft, rtcp=self.live,
            ssrc_range=self.ssrc_range)


# -- one hub per event loop ------------------------------------------------------------------

_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Hub]] = \
    weakref.WeakKeyDictionary()
_DETACH: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], None]]] = \
    weakref.WeakKeyDictionary()


def hub_for(loop: asyncio.AbstractEventLoop, impl: str) -> Hub:
    """The hub that pumps the fast-path relays of ``impl`` on ``loop`` (made on first use,
    for the loop's life)."""
    hubs = _HUBS.setdefault(loop, {})
    hub = hubs.get(impl)
    if hub is None:
        hub = hubs[impl] = make_hub(impl=impl)
        _DETACH.setdefault(loop, []).append(attach(hub, loop))
    return hub


@dataclass(slots=True)
class _Extra:
    """What the Python side of one relay side saw that the relay could not count."""

    stun_bytes: int = 0
    """Bytes of STUN handed to aioice (the relay counts them in; they are not media)."""
    unsent: int = 0
    """Packets the relay judged FORWARD (``feed``) that the Python send then failed."""
    unsent_bytes: int = 0
    dropped_no_route: int = 0
    """Packets from aioice's TURN client while the component runs the fast path."""
    packets_in: int = 0
    bytes_in: int = 0


@dataclass(slots=True)
class _Seen:
    """When the counters last moved (the relay keeps no clock per packet: the time a
    ``counters`` call first saw a new packet stands for its arrival)."""

    packets_in: int = 0
    packets_out: int = 0
    last_in: float | None = None
    last_out: float | None = None


class MediaStream:
    """The legs of one m= line and the relays of its two components."""

    def __init__(self, index: int, kind: str, ice: IceLeg, video: RtpLeg,
                 ssrc_range: SsrcRange | None, *, impl: str | None = None) -> None:
        self.index = index
        self.kind = kind
        self.ice = ice
        self.video = video
        self.ssrc_range = ssrc_range
        """The SSRCs we send to Microsoft with (advertised in our x-ssrc-range)."""
        self.state = StreamState()
        self.connect_task: asyncio.Task[None] | None = None
        self.impl = impl or implementation()
        self.relays: list[Relay] = []
        """Per component (index 0: RTP), once ``open`` bound the sockets."""
        self.fast = [False, False]
        """Per component: the relay runs on the hub (else the Python path)."""
        self._open = [False, False]
        """Per component: the relay's sockets are open (it closes them)."""
        self._readers: list[tuple[socket.socket, socket.socket]] = []
        """Per component: our duplicates of side A's and side B's fds (the Python path)."""
        self._transports: list[RelayTransport] = []
        self._extra = [(_Extra(), _Extra()), (_Extra(), _Extra())]
        self._seen = (_Seen(), _Seen())
        self._source: Address | None = None
        self._loop = asyncio.get_running_loop()
        self._hub: Hub | None = None
        ice.on_media = self._from_microsoft
        ice.on_route = self._on_route
        video.on_media = self._from_video

    # -- set up and teardown -------------------------------------------------------------------

    async def open(self) -> None:
        """Bind both legs' sockets (OSError if a port is taken: nothing stays bound), make
        the relays, gather ICE candidates on their side A sockets."""
        try:
            for component in (1, 2):
                self._add_relay(component)
            await self.ice.gather(self._transports)
        except BaseException:
            await self.aclose()
            raise

    def _add_relay(self, component: int) -> None:
        ice_port, video_port = self.ice.ports[component - 1], self.video.ports[component - 1]
        side_a = bind_udp(self.ice.host, ice_port)
        try:
            side_b = bind_udp(self.video.host, video_port)
        except BaseException:
            side_a.close()
            raise
        dups: list[socket.socket] = []
        try:
            for sock in (side_a, side_b):
                dups.append(sock.dup())
        except BaseException:
            for sock in (side_a, side_b, *dups):
                sock.close()
            raise
        readers = (dups[0], dups[1])
        relay = make_relay(side_a.detach(), side_b.detach(), impl=self.impl)
        self._open[component - 1] = True
        if self.relays:   # one SSRC map per stream: RTCP reports on SSRCs seen in RTP
            self.relays[0].share_map(relay)
        self.relays.append(relay)
        self._readers.append(readers)
        relay.on_stun = lambda side, data, addr: self._on_stun(component, side, data, addr)
        relay.on_latch = lambda side, source: self._on_latch(component, side, source)
        self._transports.append(RelayTransport(relay, (self.ice.host, ice_port)))
        self.video.relays = tuple(self.relays)
        self._publish(component)
        for side, sock in enumerate(readers):
            self._loop.add_reader(sock.fileno(), self._readable, component, side, sock)

    async def aclose(self) -> None:
        """Stop ICE (aioice closes its TURN sockets), then the relays close their sockets."""
        for component in range(1, len(self.relays) + 1):
            self._stop_python_path(component)
        try:
            await self.ice.close()
        finally:
            for component, relay in enumerate(self.relays, start=1):
                self.fast[component - 1] = False
                relay.close()
                relay.on_stun = relay.on_latch = None  # no cycle through the stream
                self._open[component - 1] = False
            for readers in self._readers:
                for sock in readers:
                    sock.close()

    @property
    def bound_ports(self) -> int:
        """Ports with a socket open: the relays' (and our duplicates of them) and aioice's
        TURN sockets."""
        count = 0
        for component, readers in enumerate(self._readers):
            for sock in readers:
                count += bool(self._open[component] or sock.fileno() >= 0)
        count += sum(1 for p in self.ice.agent._protocols
                     if not isinstance(getattr(p, "transport", None), RelayTransport))
        return count

    # -- offer/answer ----------------------------------------------------------------------------

    def apply(self, ms_local: Media, ms_remote: Media, video_local: Media,
              video_remote: Media, ssrc_range: SsrcRange | None,
              video_rtp: Address | None, video_rtcp: Address | None) -> None:
        """Take a completed offer/answer: publish each component's plan."""
        self.state.apply(ms_local, ms_remote, video_local, video_remote, ssrc_range)
        self.video.set_remote(video_rtp, video_rtcp)
        for component in range(1, len(self.relays) + 1):
            self._publish(component)
            self._choose_path(component)

    def _publish(self, component: int) -> None:
        route = self.ice.route_of(component)
        plan = self.state.plan(route[0] if route is not None else None,
                               self.video.sdp[component - 1], self.video.settings)
        self.relays[component - 1].publish(plan)

    def _on_route(self, component: int) -> None:
        if component <= len(self.relays) and self._open[component - 1]:
            self._publish(component)
            self._choose_path(component)

    # -- choosing the path -----------------------------------------------------------------------

    def _tapped(self) -> bool:
        return ("send" in vars(self.ice) or "send" in vars(self.video)
                or self.ice.on_media != self._from_microsoft
                or self.video.on_media != self._from_video)

    def _choose_path(self, component: int) -> None:
        route = self.ice.route_of(component)
        fast = (self.state.applied and route is not None and route[1] and not self._tapped()
                and self._open[component - 1])
        if fast and not self.fast[component - 1]:
            self._stop_python_path(component)
            if self._hub is None:
                self._hub = hub_for(self._loop, self.impl)
            self._hub.register(self.relays[component - 1])
            self.fast[component - 1] = True
        elif not fast and self.fast[component - 1]:
            assert self._hub is not None
            self._hub.unregister(self.relays[component - 1])
            self.fast[component - 1] = False
            for side, sock in enumerate(self._readers[component - 1]):
                self._loop.add_reader(sock.fileno(), self._readable, component, side, sock)

    def _stop_python_path(self, component: int) -> None:
        for sock in self._readers[component - 1]:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())

    # -- the Python path -------------------------------------------------------------------------

    def _readable(self, component: int, side: int, sock: socket.socket) -> None:
        relay = self.relays[component - 1]
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error for an earlier send: next datagram
                continue
            source = self._source = (addr[0], addr[1])
            if side == Side.A:
                if data and data[0] < 4:
                    relay.feed(Side.A, data, source, time.monotonic_ns())  # counted as STUN
                    self._on_stun(component, Side.A, data, source)
                    continue
                sink = self.ice.on_media
            else:
                sink = self.video.on_media
            if sink is not None:
                sink(data, component)
        self._source = None
        if self.state.applied:
            self._choose_path(component)

    def _from_microsoft(self, data: bytes, component: int) -> None:
        """A packet from Microsoft on the Python path (the host socket, or aioice's TURN
        client: then ``_source`` is None)."""
        extra = self._extra[component - 1]
        if self.fast[component - 1] or not self._open[component - 1]:
            # through TURN while the relay runs on the hub: not ours to feed (its state
            # belongs to the hub now); counted
            extra[Side.A].packets_in += 1
            extra[Side.A].bytes_in += len(data)
            extra[Side.A].dropped_no_route += 1
            return
        relay = self.relays[component - 1]
        verdict, out, _ = relay.feed(Side.A, data, self._source or _ANYWHERE,
                                     time.monotonic_ns())
        if verdict is Verdict.FORWARD and out is not None and not self.video.send(out, component):
            extra[Side.B].unsent += 1
            extra[Side.B].unsent_bytes += len(out)

    def _from_video(self, data: bytes, component: int) -> None:
        if not self._open[component - 1]:
            return
        relay = self.relays[component - 1]
        verdict, out, _ = relay.feed(Side.B, data, self._source or _ANYWHERE,
                                     time.monotonic_ns())
        if verdict is Verdict.FORWARD and out is not None and not self.ice.send(out, component):
            extra = self._extra[component - 1]
            extra[Side.A].unsent += 1
            extra[Side.A].unsent_bytes += len(out)

    # -- callbacks from the relay (on the loop's thread) -----------------------------------------

    def _on_stun(self, component: int, side: int, data: bytes, addr: Address) -> None:
        if side != Side.A:
            return  # STUN toward the video leg: nobody runs ICE there (counted as malformed)
        self._extra[component - 1][Side.A].stun_bytes += len(data)
        if component <= len(self._transports):
            self._transports[component - 1].deliver(data, addr)

    def _on_latch(self, component: int, side: int, source: Address) -> None:
        if side == Side.B and self.video.on_latch is not None:
            self.video.on_latch(component, source)

    # -- counters --------------------------------------------------------------------------------

    def counters(self) -> tuple[LegCounters, LegCounters]:
        """The Microsoft leg's and the video leg's counters (both components), from the
        relays' counters and what the Python side adds."""
        legs = (LegCounters(), LegCounters())
        for component, relay in enumerate(self.relays):
            for side, leg in enumerate(legs):
                c = relay.counters(side)
                extra = self._extra[component][side]
                stun = c["stun"] if side == Side.A else 0
                leg.packets_in += c["packets_in"] - stun + extra.packets_in
                leg.bytes_in += c["bytes_in"] - extra.stun_bytes + extra.bytes_in
                leg.packets_out += c["packets_out"] - extra.unsent
                leg.bytes_out += c["bytes_out"] - extra.unsent_bytes
                leg.dropped_direction += c["dropped_direction"]
                leg.dropped_source += c["dropped_source"]
                leg.dropped_no_route += c["dropped_no_route"] + extra.dropped_no_route
                leg.dropped_srtp += c["dropped_srtp"]
                leg.dropped_malformed += c["dropped_malformed"] + (c["stun"] - stun)
                leg.dropped_send += c["dropped_send"]
        # packets the Python send refused are counted against the side they came from
        for component in range(len(self.relays)):
            for side, leg in enumerate(legs):
                leg.dropped_send += self._extra[component][1 - side].unsent
        now = self._loop.time()
        for leg, seen in zip(legs, self._seen, strict=True):
            if leg.packets_in != seen.packets_in:
                seen.packets_in, seen.last_in = leg.packets_in, now
            if leg.packets_out != seen.packets_out:
                seen.packets_out, seen.last_out = leg.packets_out, now
            leg.last_in, leg.last_out = seen.last_in, seen.last_out
        return legs

