"""A media session per call: the B2BUA's handle on the relay engine.

The life of a call, as the B2BUA drives it::

    session = MediaSession(call_id, pool, settings)
    await session.prepare(["audio", "video"])          # reserve ports, bind, gather ICE
    sdp = to_standard(ms_offer, session.video_plan())  # or to_microsoft(..., microsoft_plan())
    ...                                                # the answer comes back
    await session.apply(microsoft_local=..., microsoft_remote=..., video_local=...,
                        video_remote=..., ice_controlling=...)   # legs start; ICE runs
    event = await session.events.get()                 # MediaConnected / MediaFailed ...
    await session.prepare(["audio", "video"])          # a re-INVITE adding video
    await session.apply(...)                           # hold / resume / new stream
    await session.close()                              # every port and task released

m= line ``i`` of every SDP is stream ``i`` (the B2BUA keeps m= lines one for one). Audio and
video are relayed; other kinds (applicationsharing, data) get port 0 in the plans.

Ports (SPEC §3): one ``PortUnit.AUDIO_VIDEO`` lease (8 ports) per call, taken by the first
``prepare`` even for a voice call, so that adding video later needs no new ports, plus one
``PortUnit.TURN_CONNECTION`` per stream and TURN server (the relay candidates' TURN
connections are bound on those pool ports). Pairs of the AUDIO_VIDEO unit: audio Microsoft
leg, audio video leg, video Microsoft leg, video video leg.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from media.counters import LegCounters
from media.events import (
    ICE_FAILED_REASON,
    MediaClosed,
    MediaConnected,
    MediaEvent,
    MediaFailed,
    SourceLatched,
)
from media.ice_leg import IceLeg, IceSettings
from media.ms_dialect import EncryptionPolicy, IceVersion, SsrcRange, read_stream
from media.port_pool import PortLease, PortPool, PortUnit
from media.rewrite import SdpPlan, StreamPlan, VideoSecurity, make_ice_credentials
from media.rtp_leg import LatchMode, RtpLeg
from media.sdp import Media, SessionDescription
from media.stream import MediaStream
from sip.errors import LocalProtocolError

__all__ = ["MediaSession", "MediaSettings", "StreamCounters"]

logger = logging.getLogger(__name__)

_SLOTS = {"audio": 0, "video": 1}
"""Relayed kinds and their place in the AUDIO_VIDEO unit."""


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """The relay engine's configuration."""

    microsoft_address: str = "127.0.2.1"
    """The gateway's media address toward Microsoft: the only host candidate address."""
    video_address: str = "127.0.2.1"
    """The gateway's media address toward the video network."""
    ice: IceSettings = field(default_factory=IceSettings)
    """STUN/TURN servers, allowed networks, ICE timeout."""
    latch_mode: LatchMode = LatchMode.LATCH
    """Video-leg latching; STRICT ignores sources other than the latched one."""
    ssrc_range_size: int = 100
    """Width of the x-ssrc-range we advertise to Microsoft per stream."""


@dataclass(frozen=True, slots=True)
class StreamCounters:
    """Live counters of one stream's two legs."""

    index: int
    kind: str
    microsoft: LegCounters
    video: LegCounters


class MediaSession:
    """The relay of one call: streams per m= line, two legs each."""

    def __init__(self, call_id: str, pool: PortPool, settings: MediaSettings | None = None, *,
                 on_event: Callable[[MediaEvent], None] | None = None) -> None:
        self.call_id = call_id
        self.pool = pool
        self.settings = settings or MediaSettings()
        self.on_event = on_event
        self.events: asyncio.Queue[MediaEvent] = asyncio.Queue()
        """Every event, in order (also passed to ``on_event`` when given)."""
        self.lease: PortLease | None = None
        self.streams: list[MediaStream | None] = []
        """Per m= line; None for a kind the gateway does not relay."""
        self.kinds: list[str] = []
        self.session_id = random.getrandbits(62)
        self._versions = {"microsoft": 0, "video": 0}
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._closed = False
        self.log = logging.LoggerAdapter(logger, {"call_id": call_id})

    # -- set up ------------------------------------------------------------------------------

    async def prepare(self, kinds: Sequence[str]) -> None:
        """Make sure there is a stream for each m= line kind (new ones are added at the end:
        bound, with ICE candidates gathered). The first call reserves the ports and raises
        ``PortPoolExhausted`` when the pool is short; a port that cannot be bound raises
        ``OSError``. On any failure, the streams this call opened are closed, and when it was
        the first call, the lease goes back to the pool."""
        if self._closed:
            raise LocalProtocolError("media session is closed")
        for index, kind in enumerate(kinds[:len(self.kinds)]):
            if kind != self.kinds[index]:
                raise LocalProtocolError(f"m= line {index} was {self.kinds[index]}, now {kind}")
        first = self.lease is None
        if first:
            turn = len(self.settings.ice.turn_servers)
            units = [PortUnit.AUDIO_VIDEO] + [PortUnit.TURN_CONNECTION] * (2 * turn)
            self.lease = self.pool.allocate(self.call_id, units)
        start = len(self.streams)
        try:
            for index in range(start, len(kinds)):
                kind = kinds[index]
                stream = await self._open(index, kind)
                self.kinds.append(kind)
                self.streams.append(stream)
        except BaseException:
            for stream in self.streams[start:]:
                if stream is not None:
                    await self._close_stream(stream)
            del self.streams[start:]
            del self.kinds[start:]
            if first and self.lease is not None:
                self.pool.release(self.lease)
                self.lease = None
            raise

    async def _open(self, index: int, kind: str) -> MediaStream | None:
        slot = _SLOTS.get(kind)
        if slot is None or any(s is not None and s.kind == kind for s in self.streams):
            return None
        assert self.lease is not None
        pairs = self.lease.pairs
        turn_ports = [pairs[4 + 2 * server + slot]
                      for server in range(len(self.settings.ice.turn_servers))]
        ufrag, pwd = make_ice_credentials()
        ice = IceLeg(self.settings.microsoft_address, pairs[2 * slot], self.settings.ice,
                     ufrag=ufrag, pwd=pwd, turn_ports=turn_ports)
        video = RtpLeg(self.settings.video_address, pairs[2 * slot + 1], self.settings.latch_mode)
        await video.open()
        try:
            await ice.gather()
        except BaseException:
            await video.aclose()
            await ice.close()
            raise
        first = random.getrandbits(32) & ~0xFFFF  # room for the whole range below 2^32
        ssrc_range = SsrcRange(first, first + self.settings.ssrc_range_size - 1)
        stream = MediaStream(index, kind, ice, video, ssrc_range)
        video.on_latch = lambda component, source: self._emit(
            SourceLatched(index, kind, component, source))
        self._keys[index] = (os.urandom(30), os.urandom(30))
        # DEBUG: two lines per call at INFO cost more than a tenth of a millisecond each.
        self.log.debug("%s: %s stream %d on %s:%d (Microsoft) / %s:%d (video)", self.call_id,
                       kind, index, ice.host, ice.ports[0], video.host, video.ports[0])
        return stream

    # -- plans for media.rewrite ---------------------------------------------------------------

    def microsoft_plan(self, *, encryption: EncryptionPolicy = EncryptionPolicy.REQUIRE
                       ) -> SdpPlan:
        """The gateway's side toward Microsoft (for ``to_microsoft`` / ``build_delayed_offer``):
        host/srflx/relay candidates, ICE credentials, our SRTP key, our x-ssrc-range."""
        streams = []
        for index, (kind, stream) in enumerate(zip(self.kinds, self.streams, strict=True)):
            if stream is None:
                streams.append(StreamPlan(kind, 0, source_index=index))
                continue
            streams.append(StreamPlan(
                kind, stream.ice.ports[0], source_index=index, rtcp_port=stream.ice.ports[1],
                ice_ufrag=stream.ice.ufrag, ice_pwd=stream.ice.pwd,
                candidates=stream.ice.local_candidates, srtp_key=self._keys[index][0],
                ssrc_range=stream.ssrc_range))
        self._versions["microsoft"] += 1
        return SdpPlan(self.settings.microsoft_address, tuple(streams), encryption=encryption,
                       session_id=self.session_id, session_version=self._versions["microsoft"])

    def video_plan(self, *, video_security: VideoSecurity = VideoSecurity.RTP,
                   encryption: EncryptionPolicy = EncryptionPolicy.REQUIRE) -> SdpPlan:
        """The gateway's side toward the video network (for ``to_standard``)."""
        streams = []
        for index, (kind, stream) in enumerate(zip(self.kinds, self.streams, strict=True)):
            if stream is None:
                streams.append(StreamPlan(kind, 0, source_index=index))
                continue
            streams.append(StreamPlan(kind, stream.video.ports[0], source_index=index,
                                      rtcp_port=stream.video.ports[1],
                                      srtp_key=self._keys[index][1]))
        self._versions["video"] += 1
        return SdpPlan(self.settings.video_address, tuple(streams), encryption=encryption,
                       video_security=video_security, session_id=self.session_id,
                       session_version=self._versions["video"])

    # -- offer/answer ----------------------------------------------------------------------------

    async def apply(self, *, microsoft_local: SessionDescription,
                    microsoft_remote: SessionDescription, video_local: SessionDescription,
                    video_remote: SessionDescription, ice_controlling: bool = False) -> None:
        """Take a completed offer/answer (the initial one or a re-INVITE's): the SDP we sent
        and the SDP we got on each side. Sets directions (hold/resume), SRTP keys, SSRC
        mapping and the video side's address; starts ICE for streams that have not run it
        (``ice_controlling``: we sent the offer to Microsoft). Call it before our answer to
        Microsoft is sent (the role is set here). Returns without waiting for ICE: watch
        ``events``."""
        if self._closed:
            raise LocalProtocolError("media session is closed")
        sides = (microsoft_local, microsoft_remote, video_local, video_remote)
        for index, stream in enumerate(self.streams):
            if stream is None or any(index >= len(s.media) for s in sides):
                continue
            ms_l, ms_r, v_l, v_r = (s.media[index] for s in sides)
            ssrc = stream.ssrc_range if ms_l.has("x-ssrc-range") else None
            stream.state.apply(ms_l, ms_r, v_l, v_r, ssrc)
            stream.video.set_remote(*_video_addresses(video_remote, v_r))
            if stream.connect_task is None and ms_l.port and ms_r.port:
                ms = read_stream(microsoft_remote, index)
                # Now, not in the task: when we answer, Microsoft's checks may arrive as
                # soon as the answer leaves, before the task first runs.
                stream.ice.set_role(ice_controlling)
                stream.connect_task = asyncio.create_task(
                    self._connect(stream, ms.ice_version, ms.ice_ufrag, ms.ice_pwd,
                                  ms.candidates))
            elif stream.connect_task is not None and ms_r.port:
                ms = read_stream(microsoft_remote, index)
                if ms.ice_ufrag is not None and ms.ice_ufrag != stream.ice.agent.remote_username:
                    self.log.warning("%s: ICE restart on %s stream is not supported; keeping "
                                     "the selected pair", self.call_id, stream.kind)

    async def _connect(self, stream: MediaStream, version: IceVersion, ufrag: str | None,
                       pwd: str | None, candidates: Sequence[object]) -> None:
        try:
            if version is not IceVersion.RFC5245 or ufrag is None or pwd is None:
                raise ConnectionError(f"Microsoft stream has no RFC 5245 ICE ({version.value})")
            await stream.ice.connect(ufrag, pwd, candidates)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except (ConnectionError, TimeoutError, OSError, ValueError) as exc:
            self.log.warning("%s: %s stream: ICE failed: %s", self.call_id, stream.kind, exc)
            self._emit(MediaFailed(stream.index, stream.kind, ICE_FAILED_REASON))
            return
        remote = stream.ice.remote_rtp or ("", 0)
        self.log.info("%s: %s stream connected via %s to %s:%d", self.call_id, stream.kind,
                      stream.ice.selected_type, *remote)
        self._emit(MediaConnected(stream.index, stream.kind, stream.ice.selected_type or "",
                                  remote))

    # -- status and teardown ---------------------------------------------------------------------

    def counters(self) -> tuple[StreamCounters, ...]:
        return tuple(StreamCounters(s.index, s.kind, s.state.ms_counters, s.state.video_counters)
                     for s in self.streams if s is not None)

    @property
    def ports(self) -> tuple[int, ...]:
        return self.lease.ports if self.lease is not None else ()

    async def close(self) -> None:
        """Stop every task, close every socket and TURN allocation, give the ports back."""
        if self._closed:
            return
        self._closed = True
        for stream in self.streams:
            if stream is not None:
                await self._close_stream(stream)
        released = 0
        if self.lease is not None:
            released = len(self.lease.ports)
            self.pool.release(self.lease)
            self.lease = None
        self._emit(MediaClosed(released))

    async def _close_stream(self, stream: MediaStream) -> None:
        task = stream.connect_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await stream.video.aclose()
        await stream.ice.close()

    def _emit(self, event: MediaEvent) -> None:
        self.events.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)


def _video_addresses(sdp: SessionDescription, media: Media
                     ) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    connection = sdp.connection_for(media)
    if connection is None or not media.port:
        return None, None
    rtcp = media.get("rtcp")
    rtcp_port = media.port + 1
    if rtcp and rtcp.split()[0].isdigit():
        rtcp_port = int(rtcp.split()[0])
    return (connection.address, media.port), (connection.address, rtcp_port)
