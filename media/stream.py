"""One relayed stream (an m= line): the Microsoft leg (ICE, usually SRTP) and the video leg
(latched UDP, RTP or SDES-SRTP), and the forwarding between them.

``StreamState`` is the sans-IO part: which ways flow (from the four SDP directions), the SRTP
transforms and the SSRC mapper of the current offer/answer. ``MediaStream`` wires it to the
two legs; the forwarding functions are the hot path (one call per packet, no allocation
beyond what SRTP and the SSRC rewrite produce).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from media.counters import Drop, LegCounters
from media.ice_leg import IceLeg
from media.ms_dialect import SsrcRange
from media.rtp_leg import RtpLeg
from media.sdp import Media
from media.srtp import LegKeys, SrtpError, SrtpTransform, select_keys
from media.ssrc import SsrcMapper, rewrite_rtcp, rewrite_rtp_ssrc

__all__ = ["Flow", "MediaStream", "StreamState", "flow_of"]

_SENDS = frozenset({"sendrecv", "sendonly"})
_RECEIVES = frozenset({"sendrecv", "recvonly"})


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


@dataclass(slots=True)
class StreamState:
    """The current offer/answer's rules for one stream."""

    flow: Flow = Flow(False, False)
    live: bool = False
    """Both sides accepted the stream (RTCP flows even on hold)."""
    ms_srtp: SrtpTransform | None = None
    video_srtp: SrtpTransform | None = None
    mapper: SsrcMapper | None = None
    """Maps endpoint SSRCs into our x-ssrc-range toward Microsoft (None: pass through)."""
    ms_counters: LegCounters = field(default_factory=LegCounters)
    video_counters: LegCounters = field(default_factory=LegCounters)

    def apply(self, ms_local: Media, ms_remote: Media, video_local: Media,
              video_remote: Media, ssrc_range: SsrcRange | None) -> None:
        """Take a new offer/answer. SRTP contexts are kept when the keys did not change, so a
        re-INVITE for hold does not reset replay windows and rollover counters."""
        self.flow = flow_of(ms_local, ms_remote, video_local, video_remote)
        self.live = all(m.port for m in (ms_local, ms_remote, video_local, video_remote))
        self.ms_srtp = _transform(self.ms_srtp, select_keys(ms_local, ms_remote))
        self.video_srtp = _transform(self.video_srtp, select_keys(video_local, video_remote))
        if ssrc_range is None:
            self.mapper = None
        elif self.mapper is None or self.mapper.range != ssrc_range:
            self.mapper = SsrcMapper(ssrc_range)

    # -- the two ways, sans-IO: packet in, packet out (None: drop, counted) --------------------

    def from_microsoft(self, data: bytes, component: int, now: float) -> bytes | None:
        counters = self.ms_counters
        counters.received(len(data), now)
        rtcp = component == 2
        if not (self.flow.to_video if not rtcp else self.live):
            counters.dropped(Drop.DIRECTION)
            return None
        try:
            if self.ms_srtp is not None:
                data = self.ms_srtp.unprotect(data, rtcp)
            if rtcp and self.mapper is not None:
                mapper = self.mapper
                data = rewrite_rtcp(data, _same, mapper.unmap)
            if self.video_srtp is not None:
                data = self.video_srtp.protect(data, rtcp)
        except SrtpError:
            counters.dropped(Drop.SRTP)
            return None
        return data

    def from_video(self, data: bytes, component: int, now: float) -> bytes | None:
        counters = self.video_counters
        counters.received(len(data), now)
        rtcp = component == 2
        if not (self.flow.to_microsoft if not rtcp else self.live):
            counters.dropped(Drop.DIRECTION)
            return None
        try:
            if self.video_srtp is not None:
                data = self.video_srtp.unprotect(data, rtcp)
            mapper = self.mapper
            if mapper is not None:
                if rtcp:
                    data = rewrite_rtcp(data, mapper.map, _same)
                else:
                    data = rewrite_rtp_ssrc(data, mapper)
            if self.ms_srtp is not None:
                data = self.ms_srtp.protect(data, rtcp)
        except SrtpError:
            counters.dropped(Drop.SRTP)
            return None
        return data


def _same(ssrc: int) -> int:
    return ssrc


def _transform(current: SrtpTransform | None, keys: LegKeys | None) -> SrtpTransform | None:
    if keys is None:
        return None
    if current is not None and current.keys == keys:
        return current
    return SrtpTransform(keys)


class MediaStream:
    """The legs of one m= line and the forwarding between them."""

    def __init__(self, index: int, kind: str, ice: IceLeg, video: RtpLeg,
                 ssrc_range: SsrcRange | None) -> None:
        self.index = index
        self.kind = kind
        self.ice = ice
        self.video = video
        self.ssrc_range = ssrc_range
        """The SSRCs we send to Microsoft with (advertised in our x-ssrc-range)."""
        self.state = StreamState()
        self.connect_task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        ice.on_media = self._on_microsoft
        video.on_media = self._on_video
        video.on_dropped = self._on_refused

    def _on_microsoft(self, data: bytes, component: int) -> None:
        state = self.state
        out = state.from_microsoft(data, component, self._loop.time())
        if out is None:
            return
        if self.video.send(out, component):
            state.video_counters.sent(len(out), self._loop.time())
        else:
            state.ms_counters.dropped(Drop.NO_ROUTE)

    def _on_video(self, data: bytes, component: int) -> None:
        state = self.state
        out = state.from_video(data, component, self._loop.time())
        if out is None:
            return
        if self.ice.send(out, component):
            state.ms_counters.sent(len(out), self._loop.time())
        else:
            state.video_counters.dropped(Drop.NO_ROUTE)

    def _on_refused(self, size: int) -> None:
        counters = self.state.video_counters
        counters.received(size, self._loop.time())
        counters.dropped(Drop.SOURCE)
