"""A check the peer refuses (an unsigned 401 from a real aioice agent, RFC 8489 §9.1.3) is
settled at once: sent again in the other dialect while the peer's is unknown, or the pair
fails when every dialect was refused (RFC 8445 §7.2.5.2.4), never left to retransmission.

aioice's retransmission timer (RETRY_RTO) is raised to 5 s here, so an answer that was
ignored shows as a leg still waiting after 2 s instead of one the next retransmission
happens to rescue."""

from __future__ import annotations

import asyncio
import time

import aioice.stun
import pytest
from aioice import Connection

from media.ice_leg import IceLeg, IceSettings, to_sdp_candidate
from media.ms_stun import StunDialect
from tests.media.test_ice_leg import HOST, free_pair

SETTLED = 2.0


@pytest.fixture(autouse=True)
def slow_retransmissions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 5.0)


async def _answering_peer() -> Connection:
    """A plain aioice agent that only answers checks (its connect never runs)."""
    peer = Connection(ice_controlling=False, components=1)
    peer._local_candidates += await peer.get_component_candidates(1, addresses=["127.0.0.1"])
    peer._local_candidates_start = peer._local_candidates_end = True
    return peer


async def _leg() -> IceLeg:
    leg = IceLeg(HOST, free_pair(), IceSettings(connect_timeout=10.0), ufrag="gw01",
                 pwd="g" * 24, controlling=True)
    await leg.gather()
    return leg


async def test_check_refused_in_ms_ice2_is_sent_again_in_rfc5389_at_once() -> None:
    leg, peer = await _leg(), await _answering_peer()
    peer.remote_username, peer.remote_password = leg.ufrag, leg.pwd
    try:
        assert leg.stun_policy.peer is None  # so the first check goes out as [MS-ICE2]
        start = time.monotonic()
        await asyncio.wait_for(
            leg.connect(peer.local_username, peer.local_password,
                        [to_sdp_candidate(c) for c in peer.local_candidates]), SETTLED)
        assert time.monotonic() - start < SETTLED
        assert leg.stun_policy.peer is StunDialect.RFC5389
    finally:
        await leg.close()
        await peer.close()


async def test_check_refused_in_every_dialect_fails_the_pair_at_once() -> None:
    leg, peer = await _leg(), await _answering_peer()
    peer.remote_username, peer.remote_password = leg.ufrag, leg.pwd
    try:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(
                leg.connect(peer.local_username, "wrong-password-of-22ch",
                            [to_sdp_candidate(c) for c in peer.local_candidates]), SETTLED)
        assert leg.stun_policy.peer is None
    finally:
        await leg.close()
        await peer.close()
