"""Issue 12, defect 3: a stranger sending to the gateway's video-leg port before and during a
call took the stream (72 of 81 packets when it sent first), and its packets were encrypted
and forwarded to Microsoft.

The whole lab (Lync client alice -> FE -> gateway -> CUCM -> endpoint 3001, ICE and SRTP
toward Microsoft, plain RTP toward the endpoint) with a UDP socket on another loopback
address sending RTP to the call's video-leg ports from the moment they are bound (before
the endpoint's answer and first packet) and while media flows. With the default latching
(STRICT) the leg latches to the endpoint, every stranger packet is dropped (counted), none
is forwarded; media flows both ways; afterwards the gateway holds no call, port or socket.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from lab.topology import Lab

STRANGER = "127.0.9.9"
WAIT = 15.0


def stranger_rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5EEDBEEF) + b"STRANGER" * 20


async def test_a_stranger_cannot_take_the_video_leg(
    lab: Lab, lync_client: Callable[[str], Awaitable[Any]], sip_endpoint: Any
) -> None:
    assert lab.gateway is not None
    gateway = lab.gateway
    alice = await lync_client("alice")
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind((STRANGER, 0))
    stranger.setblocking(False)
    try:
        placing = asyncio.ensure_future(alice.call("3001@video.example.com"))
        # The video-leg ports of the call, as soon as the gateway has bound them.
        legs = []
        async with asyncio.timeout(WAIT):
            while not legs:
                for call in gateway.calls.values():
                    if call.media is not None and call.media.streams:
                        legs = [s.video for s in call.media.streams if s is not None]
                        session = call.media
                await asyncio.sleep(0.001)
        sent = 0

        def spray() -> None:
            nonlocal sent
            for leg in legs:
                for port in leg.ports:
                    stranger.sendto(stranger_rtp(sent), (leg.host, port))
                    sent += 1

        spray()  # before the endpoint's answer and first packet
        handle = await placing
        await handle.wait_connected(WAIT)
        for _ in range(20):  # during the call, while media flows
            spray()
            await asyncio.sleep(0.01)
        media = await handle.wait_media(both_ways=True, timeout=WAIT)
        assert media.packets_received > 0
        answered = lab.callee_of(handle.call_id, "3001")
        assert answered is not None
        assert (await answered.wait_media(both_ways=True, timeout=WAIT)).packets_received > 0
        for leg in legs:
            for latch in leg.latches:
                assert latch.latched is None or latch.latched[0] != STRANGER, latch
            assert legs[0].latches[0].latched is not None
        refused = sum(c.video.dropped_source for c in session.counters())
        assert refused == sent, (refused, sent)
        await handle.hangup()
    finally:
        stranger.close()
    async with asyncio.timeout(WAIT):
        while gateway.calls or gateway.pool.ports_in_use or gateway.pool.bound_ports:
            await asyncio.sleep(0.05)
