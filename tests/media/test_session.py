"""End to end on loopback: a Lync peer (aioice, relay-only through our TURN server, SRTP with
MKI), the MediaSession, and a plain RTP video peer; every test on both packet paths (the
native relay and the pure-Python one, ``GATEWAY_MEDIA_RELAY``)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from media.events import MediaClosed, MediaConnected, MediaEvent, MediaFailed, SourceLatched
from media.ice_leg import IceSettings, TurnServerSettings
from media.ms_dialect import SsrcRange
from media.port_pool import PortPool, PortPoolExhausted, PortPoolSettings
from media.relay import ENV, native_available
from media.rewrite import to_microsoft, to_standard
from media.rtp_leg import LatchMode, LatchSettings
from media.sdp import SessionDescription, parse_sdp
from media.session import MediaSession, MediaSettings
from tests.media.peers import LYNC_SSRC, LyncPeer, VideoPeer, rtcp_rr, rtp, ssrc_of, until
from tests.peers.procs import random_free_udp_range
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

GATEWAY = "127.0.2.1"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
WAIT = 10.0


@pytest.fixture(autouse=True, params=["native", "python"])
def relay_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs on both packet paths (media.relay: GATEWAY_MEDIA_RELAY)."""
    if request.param == "native" and not native_available():
        pytest.skip("the native relay is not built")
    monkeypatch.setenv(ENV, request.param)
    return str(request.param)


def free_pool(ports: int = 40) -> PortPool:
    """A pool on a random range whose ports are free right now (tests run in parallel)."""
    return PortPool(PortPoolSettings(*random_free_udp_range(GATEWAY, ports)))


async def next_event(session: MediaSession, kind: type[MediaEvent]) -> MediaEvent:
    while True:
        event = await asyncio.wait_for(session.events.get(), WAIT)
        if isinstance(event, kind):
            return event


async def receive(queue: asyncio.Queue, component: int = 1) -> tuple:  # type: ignore[type-arg]
    while True:
        item = await asyncio.wait_for(queue.get(), WAIT)
        if item[-1] == component:
            return item  # type: ignore[no-any-return]


class Call:
    """Signalling done by hand, as the B2BUA will: Lync offers, the video side answers."""

    def __init__(self, session: MediaSession, lync: LyncPeer, video: VideoPeer) -> None:
        self.session, self.lync, self.video = session, lync, video
        self.ms_offer: SessionDescription | None = None

    async def offer_answer(self, kinds: list[str], direction: str = "sendrecv") -> None:
        self.ms_offer = self.lync.offer(direction)
        await self.session.prepare(kinds)
        video_offer = to_standard(self.ms_offer, self.session.video_plan())
        video_answer = self.video.answer(parse_sdp(bytes(video_offer)))
        ms_answer = to_microsoft(video_answer, self.session.microsoft_plan(),
                                 answer_to=self.ms_offer)
        ms_answer = parse_sdp(bytes(ms_answer))  # what goes on the wire
        await self.session.apply(microsoft_local=ms_answer, microsoft_remote=self.ms_offer,
                                 video_local=video_offer, video_remote=video_answer,
                                 ice_controlling=False)
        await asyncio.wait_for(self.lync.start(ms_answer), WAIT)
        self.ms_answer = ms_answer


@asynccontextmanager
async def call_setup(kinds: list[str], settings_kw: dict | None = None  # type: ignore[type-arg]
                     ) -> AsyncIterator[tuple[Call, PortPool, object]]:
    async with running_server() as turn:
        address = ("127.0.0.1", server_port(turn))
        settings = MediaSettings(
            microsoft_address=GATEWAY, video_address=GATEWAY,
            ice=IceSettings(stun_server=address, connect_timeout=WAIT,
                            turn_servers=(TurnServerSettings(address, USER, PASSWORD),)),
            **(settings_kw or {}))
        pool = free_pool()
        session = MediaSession("call-1", pool, settings)
        lync = LyncPeer(turn=address, username=USER, password=PASSWORD)
        video = VideoPeer()
        await video.open()
        for kind in kinds:
            await lync.add_stream(kind)
        call = Call(session, lync, video)
        try:
            yield call, pool, turn
        finally:
            await lync.close()
            video.close()
            await session.close()


async def test_audio_video_call_relays_both_ways_with_srtp_and_ssrc_mapping(
        relay_path: str) -> None:
    """ICE + SRTP (with MKI) toward Microsoft, plain RTP toward the endpoint: media both ways,
    RTP and RTCP, on the packet path under test (the fast path once ICE completed)."""
    async with call_setup(["audio", "video"]) as (call, pool, turn):
        await call.offer_answer(["audio", "video"])
        session = call.session
        connected = {(await next_event(session, MediaConnected)).stream for _ in range(2)}
        assert connected == {0, 1}
        for stream in session.streams:
            assert stream is not None and stream.impl == relay_path
            assert stream.fast == [True, True]  # host pairs, no tap: the hub relays
        assert pool.ports_in_use == 8 + 2 * 2  # 4 per stream + one TURN pair per stream

        # Every candidate we offered, every address we sent to: loopback only.
        plan = call.ms_answer
        for media in plan.media:
            for value in media.get_all("candidate"):
                assert ipaddress.ip_address(value.split()[4]) in LOOPBACK
        types = {v.split()[7] for m in plan.media for v in m.get_all("candidate")}
        assert {"host", "relay"} <= types
        for stream in session.streams:
            assert stream is not None
            assert stream.ice.destinations
            assert all(ipaddress.ip_address(h) in LOOPBACK for h, _ in stream.ice.destinations)
            assert not stream.ice.refused
            assert {c.address for c in stream.ice.local_candidates
                    if c.type.value == "host"} == {GATEWAY}
            assert {c.port for c in stream.ice.local_candidates
                    if c.type.value == "host"} <= set(session.ports)

        for index, kind in enumerate(["audio", "video"]):
            # Microsoft -> video: SRTP with MKI in, plain RTP out, SDP address (not latched yet).
            lync_ssrc = LYNC_SSRC[kind][0]
            await call.lync.send(index, rtp(lync_ssrc, 1, b"from-lync-" + kind.encode()))
            data, source, _ = await receive(call.video.received)
            assert data == rtp(lync_ssrc, 1, b"from-lync-" + kind.encode())
            assert source == (GATEWAY, session.streams[index].video.ports[0])  # type: ignore[union-attr]

            # video -> Microsoft: SSRC mapped into the range we advertised, SRTP out.
            call.video.send(index, rtp(0xDEADBEEF, 7, b"from-video"))
            plain, _ = await receive(call.lync.streams[index].received)
            ours = SsrcRange.parse(call.ms_answer.media[index].get("x-ssrc-range") or "")
            assert ours.first <= ssrc_of(plain) <= ours.last
            assert plain[12:] == b"from-video" and plain[:8] == rtp(0, 7, b"")[:8]

            # RTCP both ways: the endpoint's report goes out mapped; Lync's report about our
            # mapped SSRC reaches the endpoint unmapped.
            call.video.send(index, rtcp_rr(0xDEADBEEF, lync_ssrc), component=2)
            report, _ = await receive(call.lync.streams[index].received, component=2)
            assert report[4:12] == rtcp_rr(ssrc_of(plain), lync_ssrc)[4:12]
            await call.lync.send(index, rtcp_rr(lync_ssrc, ssrc_of(plain)), component=2)
            data, _, _ = await receive(call.video.received, component=2)
            assert data == rtcp_rr(lync_ssrc, 0xDEADBEEF)

        counters = {c.kind: c for c in session.counters()}
        assert counters["audio"].microsoft.packets_in == 2
        assert counters["audio"].video.packets_out == 2
        assert counters["video"].video.packets_in == 2
        assert counters["video"].microsoft.packets_out == 2
        assert counters["audio"].microsoft.dropped_total == 0
        assert counters["audio"].microsoft.last_in is not None
        assert turn.stats().allocations == 8  # Lync 2x2 + gateway 2x2 on our TURN server

    assert pool.ports_in_use == 0


@pytest.mark.parametrize("mode", [LatchMode.STRICT, LatchMode.NAT])
async def test_latching_keeps_the_endpoint_and_ignores_a_stranger(mode: LatchMode) -> None:
    """Issue 12: latching followed the latest source, so a stranger took the stream. Now the
    first source (on the SDP host for STRICT) is kept; others are dropped and counted."""
    async with call_setup(["audio"], {"latch": LatchSettings(mode)}) as (call, pool, _):
        await call.offer_answer(["audio"])
        session = call.session
        await next_event(session, MediaConnected)
        stranger = VideoPeer(host="127.0.0.5")
        await stranger.open()
        stranger.gateway = call.video.gateway
        try:
            call.video.send(0, rtp(6, 1, b"sdp-socket"))
            latched = await next_event(session, SourceLatched)
            assert latched.address == ("127.0.0.1", call.video.ports[0])  # type: ignore[union-attr]
            plain, _ = await receive(call.lync.streams[0].received)
            assert plain.endswith(b"sdp-socket")
            stranger.send(0, rtp(5, 2, b"intruder"))
            stranger.send(0, b"not rtp at all")
            call.video.send(0, rtp(6, 2, b"sdp-socket-2"))
            plain, _ = await receive(call.lync.streams[0].received)
            assert plain.endswith(b"sdp-socket-2")
            await call.lync.send(0, rtp(1000, 2, b"to-the-endpoint"))
            data, _, _ = await receive(call.video.received)
            assert data.endswith(b"to-the-endpoint")
            counters = session.counters()[0].video
            assert counters.dropped_source == 1 and counters.packets_in == 4
            assert counters.dropped_malformed == 1  # the stranger's garbage
            assert stranger.received.empty()
        finally:
            stranger.close()


async def test_hold_resume_and_adding_video() -> None:
    async with call_setup(["audio"]) as (call, pool, _):
        await call.offer_answer(["audio"])
        session = call.session
        await next_event(session, MediaConnected)
        assert pool.ports_in_use == 4 + 2  # a voice call holds only the audio stream's ports

        await call.offer_answer(["audio"], direction="sendonly")  # Lync holds
        await call.lync.send(0, rtp(1000, 1, b"music-on-hold"))
        data, _, _ = await receive(call.video.received)
        assert data.endswith(b"music-on-hold")
        call.video.send(0, rtp(9, 1, b"must-not-pass"))
        call.video.send(0, rtcp_rr(9, 1000), component=2)  # RTCP still flows on hold
        plain, component = await receive(call.lync.streams[0].received, component=2)
        assert component == 2
        # Each component has its own relay (on worker threads maybe): the RTP drop is
        # counted independently of the RTCP that arrived, so wait for it.
        await until(lambda: session.counters()[0].video.dropped_direction == 1,
                    "the held RTP counted as dropped by direction", WAIT)

        await call.offer_answer(["audio"], direction="inactive")
        await call.lync.send(0, rtp(1000, 2, b"inactive"))
        call.video.send(0, rtcp_rr(9, 1000), component=2)
        await receive(call.lync.streams[0].received, component=2)
        await until(lambda: session.counters()[0].microsoft.dropped_direction == 1,
                    "the inactive RTP counted as dropped by direction", WAIT)

        await call.offer_answer(["audio"])  # resume
        call.video.send(0, rtp(9, 2, b"resumed"))
        plain, _ = await receive(call.lync.streams[0].received)
        assert plain.endswith(b"resumed")

        # Upgrade to video by re-INVITE: a second lease, a new ICE agent, media flows.
        await call.lync.add_stream("video")
        await call.offer_answer(["audio", "video"])
        assert (await next_event(session, MediaConnected)).stream == 1  # type: ignore[union-attr]
        assert pool.ports_in_use == 8 + 2 * 2
        call.video.send(1, rtp(77, 1, b"video!"))
        plain, _ = await receive(call.lync.streams[1].received)
        assert plain.endswith(b"video!")
    assert pool.ports_in_use == 0


async def test_ice_failure_raises_media_failed() -> None:
    async with running_server() as turn:
        address = ("127.0.0.1", server_port(turn))
        settings = MediaSettings(microsoft_address=GATEWAY, video_address=GATEWAY,
                                 ice=IceSettings(connect_timeout=1.0))
        pool = free_pool()
        session = MediaSession("call-fail", pool, settings)
        lync = LyncPeer()  # host candidates on 127.0.0.1, but it never runs its checks
        await lync.add_stream("audio")
        video = VideoPeer()
        await video.open()
        offer = lync.offer()
        await lync.close()  # its sockets are gone: every check from us goes unanswered
        await session.prepare(["audio"])
        video_offer = to_standard(offer, session.video_plan())
        video_answer = video.answer(video_offer)
        answer = to_microsoft(video_answer, session.microsoft_plan(), answer_to=offer)
        await session.apply(microsoft_local=answer, microsoft_remote=offer,
                            video_local=video_offer, video_remote=video_answer)
        failed = await next_event(session, MediaFailed)
        assert failed.reason == "ice processing failed"  # type: ignore[union-attr]
        assert all(ipaddress.ip_address(h) in LOOPBACK
                   for h, _ in session.streams[0].ice.destinations)  # type: ignore[union-attr]
        await session.close()
        assert isinstance(await next_event(session, MediaClosed), MediaClosed)
        video.close()
        assert pool.ports_in_use == 0
        del address


async def test_pool_exhaustion_and_failed_bind_release_everything() -> None:
    settings = MediaSettings(microsoft_address=GATEWAY, video_address=GATEWAY)
    pool = free_pool(ports=8)
    first = MediaSession("a", pool, settings)
    await first.prepare(["audio", "video"])
    assert pool.ports_free == 0
    second = MediaSession("b", pool, settings)
    with pytest.raises(PortPoolExhausted):
        await second.prepare(["audio"])
    assert pool.calls_refused == 1
    await first.close()
    assert pool.ports_free == 8

    # A port of the lease is taken by someone else: the bind fails, the lease comes back.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((GATEWAY, pool.settings.first_port + 3))  # audio video-leg RTCP
    try:
        third = MediaSession("c", pool, settings)
        with pytest.raises(OSError):
            await third.prepare(["audio"])
        assert pool.ports_in_use == 0 and third.streams == []
    finally:
        squatter.close()


async def dropped(session: MediaSession, count: int) -> None:
    """Wait until the first stream's video leg has refused ``count`` packets (by source)."""
    for _ in range(int(WAIT / 0.01)):
        if session.counters()[0].video.dropped_source >= count:
            break
        await asyncio.sleep(0.01)
    assert session.counters()[0].video.dropped_source == count


async def test_a_stranger_sending_before_the_call_never_latches_in_strict_mode() -> None:
    """Issue 12: a stranger that sent to the video-leg port first took 72 of 81 packets.
    STRICT: nothing latches before the endpoint's SDP, then only its host does."""
    async with call_setup(["audio"]) as (call, pool, _):
        session = call.session
        await session.prepare(["audio"])
        stream = session.streams[0]
        assert stream is not None
        stranger = VideoPeer(host="127.0.0.5")
        await stranger.open()
        stranger.gateway = {0: (GATEWAY, stream.video.ports)}
        try:
            for seq in range(3):
                stranger.send(0, rtp(5, seq, b"intruder-early"))
            await dropped(session, 3)
            await call.offer_answer(["audio"])
            await next_event(session, MediaConnected)
            stranger.send(0, rtp(5, 4, b"intruder-during"))
            call.video.send(0, rtp(6, 1, b"endpoint"))
            latched = await next_event(session, SourceLatched)
            assert latched.address == ("127.0.0.1", call.video.ports[0])  # type: ignore[union-attr]
            plain, _ = await receive(call.lync.streams[0].received)
            assert plain.endswith(b"endpoint")
            await dropped(session, 4)
            assert call.lync.streams[0].received.empty()
        finally:
            stranger.close()


async def test_a_report_about_an_ssrc_seen_only_in_rtp_is_unmapped() -> None:
    async with call_setup(["audio"]) as (call, pool, _):
        await call.offer_answer(["audio"])
        await next_event(call.session, MediaConnected)
        call.video.send(0, rtp(0xDEADBEEF, 7, b"from-video"))
        plain, _ = await receive(call.lync.streams[0].received)
        await call.lync.send(0, rtcp_rr(LYNC_SSRC["audio"][0], ssrc_of(plain)), component=2)
        data, _, _ = await receive(call.video.received, component=2)
        assert data == rtcp_rr(LYNC_SSRC["audio"][0], 0xDEADBEEF)
