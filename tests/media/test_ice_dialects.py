"""The gateway's ICE leg speaks the dialect of its peer, on loopback: a plain aioice agent
(RFC 5389), the lab's Lync client in [MS-ICE2] version 2 (the default) and in RFC 5389 (its
older behaviour); both ICE roles; the dialect logged once per leg."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lab.lync.client_media import ClientIce, IceServers
from media.ice_leg import IceLeg, IceSettings, to_sdp_candidate
from media.ms_stun import StunDialect
from tests.media.peers import aioice_peer
from tests.media.test_ice_leg import HOST, free_pair

CLIENT = "127.0.1.10"
WAIT = 15.0


async def filled(*lists: list[bytes]) -> None:
    """Until every list has an entry (they are filled by datagram callbacks: no event)."""
    async def poll() -> None:
        while not all(lists):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), WAIT)


async def _leg(controlling: bool) -> IceLeg:
    leg = IceLeg(HOST, free_pair(), IceSettings(connect_timeout=WAIT), ufrag="gw01",
                 pwd="g" * 24, controlling=controlling)
    await leg.gather()
    return leg


@pytest.mark.parametrize("gateway_controlling", [True, False])
async def test_plain_aioice_peer_is_answered_in_rfc5389(gateway_controlling: bool,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    caplog.set_level(logging.INFO, logger="media.ms_stun")
    leg = await _leg(gateway_controlling)
    peer = await aioice_peer(leg, controlling=not gateway_controlling)
    received: list[bytes] = []
    leg.on_media = lambda data, component: received.append(data)
    try:
        theirs = [to_sdp_candidate(c) for c in peer.local_candidates]
        await asyncio.wait_for(asyncio.gather(
            leg.connect(peer.local_username, peer.local_password, theirs),
            peer.connect()), WAIT)
        assert leg.stun_policy.peer is StunDialect.RFC5389
        assert leg.stun_policy.peer_version is None
        await peer.sendto(b"\x80hello", 1)
        assert leg.send(b"\x80back", 1)
        assert await asyncio.wait_for(peer.recvfrom(), WAIT) == (b"\x80back", 1)
        await filled(received)
        assert received == [b"\x80hello"]
    finally:
        await leg.close()
        await peer.close()
    lines = [r.getMessage() for r in caplog.records if "STUN dialect" in r.getMessage()]
    assert lines and all("rfc5389" in line for line in lines)


@pytest.mark.parametrize("dialect", list(StunDialect))
@pytest.mark.parametrize("gateway_controlling", [True, False])
async def test_lab_client_dialect_is_the_one_the_leg_speaks(dialect: StunDialect,
                                                            gateway_controlling: bool) -> None:
    leg = await _leg(gateway_controlling)
    received: list[bytes] = []
    leg_received: list[bytes] = []
    leg.on_media = lambda data, component: leg_received.append(data)
    client = ClientIce(CLIENT, IceServers(), controlling=not gateway_controlling,
                       on_media=lambda data, component: received.append(data),
                       stun_dialect=dialect)
    try:
        await client.gather()
        await asyncio.wait_for(asyncio.gather(
            leg.connect(client.local_username, client.local_password, client.sdp_candidates),
            client.run(leg.ufrag, leg.pwd, leg.local_candidates, WAIT)), WAIT)
        assert leg.stun_policy.peer is dialect
        assert client.stun_policy.peer is dialect
        expected_version = 2 if dialect is StunDialect.MS_ICE2 else None
        assert leg.stun_policy.peer_version == expected_version
        assert leg.send(b"\x80to-client", 1)
        assert client.send_media(b"\x80to-gateway", 1)
        await filled(received, leg_received)
        assert received == [b"\x80to-client"] and leg_received == [b"\x80to-gateway"]
    finally:
        await leg.close()
        await client.close()


async def test_pinned_ms_ice2_client_refuses_rfc5389_checks() -> None:
    """A real [MS-ICE2] client verifies integrity only its own way: a pinned lab client does
    not answer an RFC 5389 agent (so the lab never hides a gateway that fails to adapt)."""
    leg = IceLeg(HOST, free_pair(), IceSettings(connect_timeout=2.0, stun_dialect="rfc5389"),
                 ufrag="gw01", pwd="g" * 24, controlling=True)
    await leg.gather()
    client = ClientIce(CLIENT, IceServers(), controlling=False,
                       on_media=lambda data, component: None, stun_dialect=StunDialect.MS_ICE2)
    try:
        await client.gather()
        with pytest.raises((ConnectionError, TimeoutError)):
            await asyncio.wait_for(asyncio.gather(
                leg.connect(client.local_username, client.local_password,
                            client.sdp_candidates),
                client.run(leg.ufrag, leg.pwd, leg.local_candidates, 2.0)), WAIT)
        assert client.stun_policy.peer is None
    finally:
        await leg.close()
        await client.close()


def test_stun_dialect_setting_is_checked() -> None:
    with pytest.raises(ValueError):
        IceSettings(stun_dialect="ms-ice3")
