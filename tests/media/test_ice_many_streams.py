"""Many streams running ICE at once through the relay seam (``MediaStream``: aioice over
each component's relay), against plain aioice agents on loopback that control, nominate
and complete on their first success (as a Lync client does): every gateway leg connects
within the timeout, on both relay implementations. The benchmark saw most of 80 legs time
out when its peers stopped answering once their own checks were done (bench/media_relay.py);
here the peers keep answering, as real ones do, so a gateway-side loss or stall of STUN
under the burst (callback queue, hub batches, check pacing) would show."""

from __future__ import annotations

import asyncio
import time

import pytest
from aioice import Connection

from media.ice_leg import IceLeg, IceSettings, to_sdp_candidate
from media.ms_dialect import SsrcRange
from media.relay import native_available
from media.rtp_leg import RtpLeg
from media.stream import MediaStream
from tests.media.peers import VideoPeer, aioice_peer
from tests.media.test_ice_leg import free_pair
from tests.media.test_ice_nomination import GATEWAY
from tests.media.test_stream import m

IMPLS = ["python"] + (["native"] if native_available() else [])
STREAMS = 60
TIMEOUT = 20.0
"""The gateway legs' ICE timeout; the whole burst must finish within it."""


@pytest.mark.parametrize("impl", IMPLS)
async def test_sixty_streams_checking_at_once_all_connect(impl: str) -> None:
    endpoint = VideoPeer()
    await endpoint.open()
    streams: list[MediaStream] = []
    peers: list[Connection] = []
    try:
        for index in range(STREAMS):
            ice = IceLeg(GATEWAY, free_pair(), IceSettings(connect_timeout=TIMEOUT),
                         ufrag=f"gw{index:03d}", pwd="g" * 24, controlling=False)
            stream = MediaStream(index, "audio", ice, RtpLeg(GATEWAY, free_pair()),
                                 SsrcRange(100, 199), impl=impl)
            streams.append(stream)
            await stream.open()
            stream.apply(m(), m(), m(), m(), None, (endpoint.host, endpoint.ports[0]),
                         (endpoint.host, endpoint.ports[1]))
            peers.append(await aioice_peer(ice, controlling=True))
        start = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(
            *(s.ice.connect(p.local_username, p.local_password,
                            [to_sdp_candidate(c) for c in p.local_candidates])
              for s, p in zip(streams, peers, strict=True)),
            *(p.connect() for p in peers), return_exceptions=True), TIMEOUT + 5)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"{len(failed)} of {2 * STREAMS} agents failed: {failed[:3]!r}"
        assert time.monotonic() - start < TIMEOUT
        assert all(s.ice.selected_type == "host" for s in streams)
    finally:
        endpoint.close()
        for peer in peers:
            await peer.close()
        for stream in streams:
            await stream.aclose()
