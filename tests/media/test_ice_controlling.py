"""The gateway as the ICE-controlling side (it made the offer toward Microsoft): the answerer
starts its checks as soon as it sends its answer, so they reach the gateway before the
gateway has applied that answer. Those early checks must be answered in the controlling
role; when they were answered as controlled, the role-conflict repair (RFC 8445 §7.3.1.1)
could leave the Lync side connected and the gateway waiting for a nomination that had
already come and gone: nothing sent toward Microsoft (``packets_out: 0``).

The calls run the way the B2BUA runs a delayed-offer call (``gateway.sdp_bridge``): our
offer to Microsoft, Microsoft's answer, the video side's offer/answer, then
``MediaSession.apply(ice_controlling=True)``. The Lync side is
``lab.lync.client_media.ClientIce`` (controlled: it answered), either relay-only through an
A/V Edge TURN server (david) or with host candidates only (alice). All on loopback.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest

from lab.lync.client_media import ClientIce, IceServers
from media.events import MediaConnected, MediaFailed
from media.ice_leg import IceLeg, IceSettings, TurnServerSettings
from media.ms_dialect import EncryptionPolicy, read_stream
from media.rewrite import SdpPlan, StreamPlan, build_delayed_offer, to_microsoft, to_standard
from media.sdp import SessionDescription, parse_sdp
from media.session import MediaSession, MediaSettings
from tests.media.peers import LyncPeer, VideoPeer, rtp, ssrc_of, until
from tests.media.test_ice_leg import free_pair
from tests.media.test_session import GATEWAY, free_pool
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

WAIT = 5.0
DMZ_TURN = "127.0.4.1"
EDGE_TURN = "127.0.1.2"
DAVID = "127.0.1.20"
"""The external client: its media only leaves through the Edge relay."""
ALICE = "127.0.1.10"
"""The internal client: host candidates only."""
KINDS = ["audio", "video"]
TIE_BREAKER_MAX = 2**64 - 1


@dataclass
class LyncAnswerer:
    """The Lync side of a call the gateway offered: answers, then starts its checks at once
    (as a Lync client does when it sends its 200 OK), before the gateway applies."""

    host: str
    servers: IceServers
    agents: list[ClientIce] = field(default_factory=list)
    received: asyncio.Queue[tuple[int, bytes]] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _sink(self, index: int) -> Callable[[bytes, int], None]:
        def sink(data: bytes, component: int) -> None:
            if component == 1:
                self.received.put_nowait((index, data))
        return sink

    async def answer(self, offer: SessionDescription) -> SessionDescription:
        lines = ["v=0", f"o=- 1 1 IN IP4 {self.host}", "s=session", f"c=IN IP4 {self.host}",
                 "t=0 0"]
        for index, media in enumerate(offer.media):
            agent = ClientIce(self.host, self.servers, controlling=False,
                              on_media=self._sink(index))
            await agent.gather()
            self.agents.append(agent)
            rtp_c = next(c for c in agent.local_candidates if c.component == 1)
            rtcp_c = next(c for c in agent.local_candidates if c.component == 2)
            pt = media.formats[0]
            lines += [f"m={media.kind} {rtp_c.port} RTP/AVP {pt}", f"c=IN IP4 {rtp_c.host}",
                      f"a=ice-ufrag:{agent.local_username}",
                      f"a=ice-pwd:{agent.local_password}"]
            lines += [f"a=candidate:{c.to_sdp()}" for c in agent.local_candidates]
            lines.append(f"a=rtcp:{rtcp_c.port}")
            lines += [f"a={a}" for a in media.attributes
                      if a.name == "rtpmap" and (a.value or "").split()[0] == pt]
            lines.append("a=encryption:rejected")
        answer = parse_sdp("\r\n".join(lines) + "\r\n")
        for index, agent in enumerate(self.agents):
            ours = read_stream(offer, index)
            assert ours.ice_ufrag is not None and ours.ice_pwd is not None
            self.tasks.append(asyncio.create_task(
                agent.run(ours.ice_ufrag, ours.ice_pwd, ours.candidates, WAIT)))
        return answer

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for agent in self.agents:
            await agent.close()



def checks_answered(leg: IceLeg, peer: ClientIce) -> bool:
    """Whether ``leg`` has answered a connectivity check from ``peer``: the only STUN the
    leg sends to the peer's addresses before it runs its own checks is a response."""
    peer_addresses = {(c.host, c.port) for c in peer.local_candidates}
    return bool(leg.destinations & peer_addresses)


@asynccontextmanager
async def gateway_session(dmz: tuple[str, int]) -> AsyncIterator[MediaSession]:
    settings = MediaSettings(
        microsoft_address=GATEWAY, video_address=GATEWAY,
        ice=IceSettings(turn_servers=(TurnServerSettings(dmz, USER, PASSWORD),),
                        connect_timeout=WAIT))
    session = MediaSession(f"controlling-{random.getrandbits(32)}", free_pool(), settings)
    try:
        yield session
    finally:
        await session.close()


async def gateway_offers_call(session: MediaSession, lync: LyncAnswerer, video: VideoPeer, *,
                              tie_breakers: tuple[int, int] | None = None) -> None:
    """Run one call up to ``MediaConnected`` on every stream, with media both ways.

    ``tie_breakers`` (gateway's, Lync's) pins the values aioice otherwise draws at random,
    which decide who gives way in a role conflict."""
    await session.prepare(KINDS)
    if tie_breakers is not None:
        for stream in session.streams:
            assert stream is not None
            stream.ice.agent._tie_breaker = tie_breakers[0]
    ms_offer = parse_sdp(bytes(build_delayed_offer(
        session.microsoft_plan(encryption=EncryptionPolicy.DO_NOT_SUPPORT))))
    ms_answer = await lync.answer(ms_offer)
    if tie_breakers is not None:
        for agent in lync.agents:
            agent._tie_breaker = tie_breakers[1]
    # The answerer's checks reach us before we apply its answer (the race that failed).
    for stream, agent in zip(session.streams, lync.agents, strict=True):
        assert stream is not None
        await until(partial(checks_answered, stream.ice, agent), "early checks", WAIT)
    video_offer = parse_sdp(bytes(to_standard(ms_answer, session.video_plan(
        encryption=EncryptionPolicy.DO_NOT_SUPPORT))))
    video_answer = video.answer(video_offer)
    await session.apply(microsoft_local=ms_offer, microsoft_remote=ms_answer,
                        video_local=video_offer, video_remote=video_answer,
                        ice_controlling=True)
    connected: dict[int, MediaConnected] = {}
    async with asyncio.timeout(WAIT + 1):
        while len(connected) < len(KINDS):
            event = await session.events.get()
            assert not isinstance(event, MediaFailed), event
            if isinstance(event, MediaConnected):
                connected[event.stream] = event
    await asyncio.gather(*lync.tasks)  # the Lync side completed too

    for index, stream in enumerate(session.streams):
        assert stream is not None
        # Both ends agree on the pair, and the gateway stayed controlling.
        assert stream.ice.agent.ice_controlling
        ours = stream.ice.agent._nominated[1]
        theirs = lync.agents[index]._nominated[1]
        assert (ours.local_addr, ours.remote_addr) == (theirs.remote_addr, theirs.local_addr)
        # Endpoint -> gateway -> Lync: the gateway sends on the nominated pair.
        video.send(index, rtp(7000 + index, 1, b"to-lync-%d" % index))
        got_index, data = await asyncio.wait_for(lync.received.get(), WAIT)
        assert got_index == index and data.endswith(b"to-lync-%d" % index)
        ours_range = stream.ssrc_range
        assert ours_range is not None
        assert ours_range.first <= ssrc_of(data) <= ours_range.last  # mapped for Microsoft
        assert stream.counters()[0].packets_out >= 1
        # Lync -> gateway -> endpoint.
        assert lync.agents[index].send_media(rtp(1000 + index, 1, b"to-video-%d" % index), 1)
        while True:
            packet, _, component = await asyncio.wait_for(video.received.get(), WAIT)
            if component == 1 and packet.endswith(b"to-video-%d" % index):
                break


@asynccontextmanager
async def call_parts(host: str, servers: IceServers
                     ) -> AsyncIterator[tuple[LyncAnswerer, VideoPeer]]:
    lync = LyncAnswerer(host, servers)
    video = VideoPeer()
    await video.open()
    try:
        yield lync, video
    finally:
        await lync.close()
        video.close()


@asynccontextmanager
async def turn_servers(**dmz: object) -> AsyncIterator[tuple[tuple[str, int], IceServers]]:
    """The gateway's DMZ TURN and the A/V Edge TURN david relays through."""
    async with running_server(listen=DMZ_TURN, **dmz) as dmz_turn, \
            running_server(listen=EDGE_TURN) as edge_turn:
        edge = IceServers(turn=(EDGE_TURN, server_port(edge_turn)), turn_username=USER,
                          turn_password=PASSWORD, relay_only=True)
        yield (DMZ_TURN, server_port(dmz_turn)), edge


@pytest.mark.parametrize("tie_breakers", [(0, TIE_BREAKER_MAX), (TIE_BREAKER_MAX, 0)],
                         ids=["gateway-gives-way", "lync-gives-way"])
async def test_early_checks_from_a_relay_only_answerer(tie_breakers: tuple[int, int]) -> None:
    # gateway-gives-way is the failing case: answered as controlled, the gateway's lower
    # tie-breaker made it answer 487 and the Lync side turned controlling.
    async with turn_servers() as (dmz, edge), gateway_session(dmz) as session, \
            call_parts(DAVID, edge) as (lync, video):
        await gateway_offers_call(session, lync, video, tie_breakers=tie_breakers)
        for agent in lync.agents:
            assert not agent.ice_controlling  # it answered: it stays controlled


async def test_twenty_calls_to_a_relay_only_client() -> None:
    # The lab's report: 3 of 12 endpoint -> david calls without media toward david.
    async with turn_servers() as (dmz, edge):
        for _ in range(20):
            async with gateway_session(dmz) as session, \
                    call_parts(DAVID, edge) as (lync, video):
                await gateway_offers_call(session, lync, video)


async def test_dmz_turn_refusing_the_client_leaves_the_host_pair_working() -> None:
    # The DMZ TURN refuses permissions toward alice (403 on the gateway's ChannelBind), so
    # every pair from the gateway's relay candidates fails; the host pair carries the call.
    async with turn_servers(allow_peers=(f"{EDGE_TURN}/32", "127.0.2.0/24")) as (dmz, _):
        for _ in range(10):
            async with gateway_session(dmz) as session, \
                    call_parts(ALICE, IceServers()) as (lync, video):
                await gateway_offers_call(session, lync, video,
                                          tie_breakers=(0, TIE_BREAKER_MAX))
                for stream in session.streams:
                    assert stream is not None
                    assert stream.ice.selected_type == "host"
                    assert stream.ice.remote_rtp is not None
                    assert stream.ice.remote_rtp[0] == ALICE


async def test_an_answer_sets_the_controlled_role_before_it_leaves() -> None:
    # Microsoft offered: the gateway's legs, controlling while only an offer could reach
    # them, are controlled as soon as apply() returns, before the checks task first runs
    # and before the answer could reach Microsoft.
    lync = LyncPeer(host=ALICE)
    video = VideoPeer()
    await video.open()
    async with turn_servers() as (dmz, _), gateway_session(dmz) as session:
        try:
            await lync.add_stream("audio")
            ms_offer = lync.offer()
            await session.prepare(["audio"])
            stream = session.streams[0]
            assert stream is not None and stream.ice.controlling
            video_offer = parse_sdp(bytes(to_standard(ms_offer, session.video_plan())))
            video_answer = video.answer(video_offer)
            ms_answer = parse_sdp(bytes(to_microsoft(
                video_answer, session.microsoft_plan(), answer_to=ms_offer)))
            await session.apply(microsoft_local=ms_answer, microsoft_remote=ms_offer,
                                video_local=video_offer, video_remote=video_answer,
                                ice_controlling=False)
            assert not stream.ice.controlling
            assert stream.connect_task is not None and not stream.connect_task.done()
            await asyncio.wait_for(lync.start(ms_answer), WAIT)
            event = await asyncio.wait_for(session.events.get(), WAIT)
            assert isinstance(event, MediaConnected), event
            assert not stream.ice.controlling and lync.streams[0].conn.ice_controlling
        finally:
            await lync.close()
            video.close()


async def test_set_role_keeps_the_role_checks_were_answered_in() -> None:
    # Once a check has been answered (here: the peer's, before connect), changing the role
    # would start a conflict of our own: the role stays (a warning says so).
    async with turn_servers() as (_, edge), call_parts(DAVID, edge) as (lync, _):
        port = free_pair()
        leg = IceLeg(GATEWAY, port, IceSettings(), ufrag="abcd", pwd="e" * 24)
        try:
            await leg.gather()
            plan = SdpPlan(GATEWAY, (StreamPlan(
                "audio", port, rtcp_port=port + 1, ice_ufrag=leg.ufrag, ice_pwd=leg.pwd,
                candidates=leg.local_candidates),), encryption=EncryptionPolicy.DO_NOT_SUPPORT)
            await lync.answer(parse_sdp(bytes(build_delayed_offer(plan))))
            await until(lambda: checks_answered(leg, lync.agents[0]), "early checks", WAIT)
            leg.set_role(False)
            assert leg.controlling
        finally:
            await leg.close()
