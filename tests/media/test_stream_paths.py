"""Which packet path a stream's components take, and media on each: the relay hub once ICE
runs on a host pair and nobody taps the legs; the Python path (``relay.feed``) through a
TURN-relayed pair or while the call log records; the switch between them as ICE upgrades.
Real sockets on loopback, aioice on the far side, the project's TURN server; every test on
both relay implementations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from lab.lync.client_media import ClientIce, IceServers
from media.ice_leg import IceLeg, IceSettings, TurnServerSettings
from media.ms_dialect import SsrcRange
from media.relay import native_available
from media.rtp_leg import RtpLeg
from media.stream import MediaStream
from tests.media.peers import VideoPeer, rtp, until
from tests.media.test_ice_leg import free_pair
from tests.media.test_ice_nomination import ALICE, DMZ_TURN, GATEWAY, WAIT, hold_host_path
from tests.media.test_stream import m
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

IMPLS = ["python"] + (["native"] if native_available() else [])


class Rig:
    def __init__(self, stream: MediaStream, alice: ClientIce, endpoint: VideoPeer) -> None:
        self.stream, self.alice, self.endpoint = stream, alice, endpoint
        self.at_alice: asyncio.Queue[bytes] = asyncio.Queue()
        alice.on_media = lambda data, component: self.at_alice.put_nowait(data)

    async def both_ways(self, tag: bytes) -> None:
        """Alice -> endpoint and endpoint -> alice, RTP (component 1)."""
        assert self.alice.send_media(rtp(1, 1, b"to-endpoint-" + tag), 1)
        while True:
            data, _, component = await asyncio.wait_for(self.endpoint.received.get(), WAIT)
            if component == 1 and data.endswith(b"to-endpoint-" + tag):
                break
        self.endpoint.send(0, rtp(2, 1, b"to-alice-" + tag))
        while not (await asyncio.wait_for(self.at_alice.get(), WAIT)).endswith(
                b"to-alice-" + tag):
            pass


@asynccontextmanager
async def rig(impl: str) -> AsyncIterator[Rig]:
    """A stream (gateway controlled, host + TURN relay candidates; plain RTP both sides),
    alice (aioice, controlling, host only) and a plain RTP endpoint; offer/answer applied."""
    async with running_server(listen=DMZ_TURN) as turn:
        ice = IceLeg(GATEWAY, free_pair(), IceSettings(
            turn_servers=(TurnServerSettings((DMZ_TURN, server_port(turn)), USER, PASSWORD),),
            connect_timeout=WAIT), ufrag="gwuf", pwd="g" * 24, turn_ports=[free_pair()],
            controlling=False)
        video = RtpLeg(GATEWAY, free_pair())
        stream = MediaStream(0, "audio", ice, video, SsrcRange(100, 199), impl=impl)
        alice = ClientIce(ALICE, IceServers(), controlling=True, on_media=lambda d, c: None)
        endpoint = VideoPeer()
        try:
            await stream.open()
            await alice.gather()
            await endpoint.open()
            endpoint.gateway = {0: (GATEWAY, video.ports)}
            stream.apply(m(), m(), m(), m(), None, (endpoint.host, endpoint.ports[0]),
                         (endpoint.host, endpoint.ports[1]))
            yield Rig(stream, alice, endpoint)
        finally:
            endpoint.close()
            await alice.close()
            await stream.aclose()
            assert stream.bound_ports == 0


async def connect(r: Rig) -> None:
    ice = r.stream.ice
    checks = asyncio.ensure_future(
        ice.connect(r.alice.local_username, r.alice.local_password, r.alice.sdp_candidates))
    await r.alice.run(ice.ufrag, ice.pwd, ice.local_candidates, WAIT)
    await checks


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_host_pair_runs_on_the_hub(impl: str) -> None:
    async with rig(impl) as r:
        assert r.stream.fast == [False, False]  # no pair yet: the Python path
        await connect(r)
        await until(lambda: r.stream.ice.selected_type == "host", "a host pair", WAIT)
        assert r.stream.fast[0]
        await r.both_ways(b"hub")
        ms, video = r.stream.counters()
        assert ms.packets_in >= 1 and ms.packets_out >= 1
        assert video.packets_in >= 1 and video.packets_out >= 1


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_turn_relayed_pair_takes_the_python_path_until_the_host_pair_wins(
        impl: str) -> None:
    async with rig(impl) as r:
        release = hold_host_path(r.stream.ice)  # the host path is slow: ICE ends on TURN
        await connect(r)
        assert r.stream.ice.selected_type == "relay"
        assert r.stream.fast[0] is False
        await r.both_ways(b"turn")  # through aioice's TURN client, relay.feed in between

        assert release() > 0
        await until(lambda: r.stream.ice.selected_type == "host", "the upgrade to host", WAIT)
        await until(lambda: r.stream.fast[0], "the hub taking component 1", WAIT)
        await r.both_ways(b"host")


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_tapped_leg_keeps_the_python_path_until_the_tap_is_gone(impl: str) -> None:
    """The operator's page records a call's first packets by wrapping the legs' ``on_media``
    and ``send`` (gateway.call_log): while wrapped, every packet passes through them."""
    async with rig(impl) as r:
        seen: list[bytes] = []
        inner = r.stream.video.on_media
        assert inner is not None

        def tap(data: bytes, component: int) -> None:
            seen.append(data)
            inner(data, component)

        r.stream.video.on_media = tap
        await connect(r)
        await until(lambda: r.stream.ice.selected_type == "host", "a host pair", WAIT)
        await r.both_ways(b"tapped")
        assert r.stream.fast == [False, False] and seen
        r.stream.video.on_media = inner  # the capture is full
        await r.both_ways(b"untapped")
        await until(lambda: r.stream.fast[0], "the hub taking component 1", WAIT)
        count = len(seen)
        await r.both_ways(b"hub")
        assert len(seen) == count
