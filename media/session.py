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

Each relayed stream has a relay per component (``media.stream``: RTP and RTCP, both legs'
sockets in one relay; ``GATEWAY_MEDIA_RELAY`` or ``MediaSettings.relay`` picks the native or
the Python packet path); ``apply`` publishes their forwarding plans.

m= line ``i`` of every SDP is stream ``i`` (the B2BUA keeps m= lines one for one). Audio and
video are relayed; other kinds (applicationsharing, data) get port 0 in the plans.

Ports (SPEC §3): one lease per relayed stream, taken when the stream is added: a
``PortUnit.STREAM`` (4 ports: the Microsoft leg's pair, then the video leg's) plus one
``PortUnit.TURN_CONNECTION`` per TURN server (the relay candidates' TURN connections are
bound on those ports). An audio-only call holds 4 ports, an audio+video call 8 (the
documented unit); TURN ports come from the pool's TURN range when it has one.

One owner: ``close`` may be called while a ``prepare`` is still binding or gathering (a
CANCEL during set-up). It waits for that ``prepare`` (which then fails with
``LocalProtocolError``), closes every stream either of them opened, and gives each lease
back only once the lease's sockets are closed (the pool asks a probe), so no socket outlives
the session and no bound port goes back to the pool.
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
from media.rtp_leg import LatchSettings, RtpLeg
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
    latch: LatchSettings = field(default_factory=LatchSettings)
    """Video-leg latching: which source latches first, when another may take over."""
    ssrc_range_size: int = 100
    """Width of the x-ssrc-range we advertise to Microsoft per stream."""
    relay: str | None = None
    """The packet path, ``native`` or ``python`` (``media.relay``); None: what
    ``GATEWAY_MEDIA_RELAY`` says, else the native one where it was built."""


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
        self.leases: dict[int, PortLease] = {}
        """The ports of each relayed stream, by m= line."""
        self.streams: list[MediaStream | None] = []
        """Per m= line; None for a kind the gateway does not relay."""
        self.kinds: list[str] = []
        self.session_id = random.getrandbits(62)
        self._versions = {"microsoft": 0, "video": 0}
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._closed = False
        self._busy = asyncio.Lock()
        """Held by ``prepare`` and ``close``: close never runs beside a set-up."""
        self.log = logging.LoggerAdapter(logger, {"call_id": call_id})

    # -- set up ------------------------------------------------------------------------------

    async def prepare(self, kinds: Sequence[str]) -> None:
        """Make sure there is a stream for each m= line kind (new ones are added at the end:
        ports reserved, bound, with ICE candidates gathered). Raises ``PortPoolExhausted``
        when the pool is short, ``OSError`` when a port cannot be bound, and
        ``LocalProtocolError`` when the session is (or gets) closed meanwhile. On any failure
        the streams this call opened are closed and their ports go back to the pool."""
        if self._closed:
            raise LocalProtocolError("media session is closed")
        async with self._busy:
            if self._closed:
                raise LocalProtocolError("media session is closed")
            for index, kind in enumerate(kinds[:len(self.kinds)]):
                if kind != self.kinds[index]:
                    raise LocalProtocolError(
                        f"m= line {index} was {self.kinds[index]}, now {kind}")
            start = len(self.streams)
            try:
                for index in range(start, len(kinds)):
                    kind = kinds[index]
                    stream = await self._open(index, kind)
                    self.kinds.append(kind)
                    self.streams.append(stream)
                    if self._closed:
                        raise LocalProtocolError("media session closed during set-up")
            except BaseException:
                for index in range(start, len(self.streams)):
                    await self._close_stream(index)
                for index in [i for i in self.leases if i >= start]:
                    self._release(index)
                del self.streams[start:]
                del self.kinds[start:]
                raise

    async def _open(self, index: int, kind: str) -> MediaStream | None:
        slot = _SLOTS.get(kind)
        if slot is None or any(s is not None and s.kind == kind for s in self.streams):
            return None
        servers = len(self.settings.ice.turn_servers)
        ports = _StreamPorts()
        lease = self.pool.allocate(
            self.call_id, [PortUnit.STREAM] + [PortUnit.TURN_CONNECTION] * servers,
            probe=ports.bound)
        self.leases[index] = lease
        pairs = lease.pairs
        ufrag, pwd = make_ice_credentials()
        ice = IceLeg(self.settings.microsoft_address, pairs[0], self.settings.ice,
                     ufrag=ufrag, pwd=pwd, turn_ports=pairs[2:2 + servers])
        video = RtpLeg(self.settings.video_address, pairs[1], self.settings.latch)
        first = random.getrandbits(32) & ~0xFFFF  # room for the whole range below 2^32
        ssrc_range = SsrcRange(first, first + self.settings.ssrc_range_size - 1)
        stream = MediaStream(index, kind, ice, video, ssrc_range, impl=self.settings.relay)
        video.on_latch = lambda component, source: self._emit(
            SourceLatched(index, kind, component, source))
        ports.stream = stream
        try:
            await stream.open()
        except BaseException:
            self._release(index)
            raise
        self._keys[index] = (os.urandom(30), os.urandom(30))
        # DEBUG: two lines per call at INFO cost more than a tenth of a millisecond each.
        self.log.debug("%s: %s stream %d on %s:%d (Microsoft) / %s:%d (video), %s relay",
                       self.call_id, kind, index, ice.host, ice.ports[0], video.host,
                       video.ports[0], stream.impl)
        return stream

    def _release(self, index: int) -> int:
        """Give stream ``index``'s ports back if its sockets are closed; the count given."""
        lease = self.leases.get(index)
        if lease is None or not self.pool.release(lease):
            return 0
        del self.leases[index]
        return len(lease.ports)

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
            stream.apply(ms_l, ms_r, v_l, v_r, ssrc, *_video_addresses(video_remote, v_r))
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
        return tuple(StreamCounters(s.index, s.kind, *s.counters())
                     for s in self.streams if s is not None)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for lease in self.leases.values() for p in lease.ports)

    @property
    def bound_ports(self) -> int:
        """Ports with a socket open now (the relays' and aioice's TURN sockets)."""
        return sum(s.bound_ports for s in self.streams if s is not None)

    async def close(self) -> None:
        """Stop every task, close every socket and TURN allocation, give the ports back.
        Waits for a ``prepare`` in progress (it then fails) so nothing it opens survives."""
        if self._closed:
            async with self._busy:  # a close in progress: return once it is done
                return
        self._closed = True
        async with self._busy:
            for index in range(len(self.streams)):
                await self._close_stream(index)
            released = sum(self._release(index) for index in list(self.leases))
        if self.leases:
            self.log.error("%s: %d ports still bound after close: kept out of the pool",
                           self.call_id, self.bound_ports)
        self._emit(MediaClosed(released))

    async def _close_stream(self, index: int) -> None:
        stream = self.streams[index] if index < len(self.streams) else None
        if stream is None:
            return
        task = stream.connect_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        left = stream.ice.agent._protocols
        if left:
            # IceLeg.close gives aioice's close 5 s; when that ran out (seen under load),
            # the sockets it had not reached yet stay bound for good: close them here.
            self.log.warning("%s: %s stream: closing %d ICE sockets aioice left open",
                             self.call_id, stream.kind, len(left))
            for protocol in left:
                if protocol.transport is not None:
                    protocol.transport.close()
            left.clear()
            await asyncio.sleep(0)  # connection_lost runs on the loop's next turn

    def _emit(self, event: MediaEvent) -> None:
        self.events.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)


class _StreamPorts:
    """The probe the pool asks before taking a stream's ports back: sockets still bound."""

    __slots__ = ("stream",)

    def __init__(self) -> None:
        self.stream: MediaStream | None = None

    def bound(self) -> int:
        return self.stream.bound_ports if self.stream is not None else 0


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
