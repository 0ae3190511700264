"""Issue 12, defect 1: a session closed while ``prepare`` is still gathering (a CANCEL a few
milliseconds after the INVITE) must close whatever the set-up opens, and its ports must go
back to the pool only once their sockets are closed.

Real sockets on loopback: our TURN server behind a UDP relay that holds each datagram for
a while, so that gathering is still in progress when the session is closed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from media.ice_leg import IceSettings, TurnServerSettings
from media.port_pool import PortPool, PortPoolSettings, PortUnit
from media.session import MediaSession, MediaSettings
from sip.errors import LocalProtocolError
from tests.peers.procs import random_free_udp_range
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

GATEWAY = "127.0.2.1"
DELAY = 0.15
"""Seconds the relay holds each datagram toward and from the TURN server."""
WAIT = 10.0


class SlowRelay(asyncio.DatagramProtocol):
    """Forwards datagrams to ``server`` and its answers back, each ``DELAY`` late."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.clients: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self.seen = asyncio.Event()
        """Set at the first datagram from a client (gathering has started)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.set()
        asyncio.get_running_loop().create_task(self._forward(data, (addr[0], addr[1])))

    async def _forward(self, data: bytes, client: tuple[str, int]) -> None:
        await asyncio.sleep(DELAY)
        upstream = self.clients.get(client)
        if upstream is None:
            relay = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    loop = asyncio.get_running_loop()
                    loop.call_later(DELAY, relay._back, data, client)

            upstream, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Back, local_addr=("127.0.0.1", 0), remote_addr=self.server)
            self.clients[client] = upstream
        upstream.sendto(data)

    def _back(self, data: bytes, client: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, client)

    def close(self) -> None:
        for upstream in self.clients.values():
            upstream.close()
        if self.transport is not None:
            self.transport.close()


@asynccontextmanager
async def slow_turn() -> AsyncIterator[tuple[SlowRelay, MediaSettings]]:
    async with running_server() as turn:
        loop = asyncio.get_running_loop()
        _, relay = await loop.create_datagram_endpoint(
            lambda: SlowRelay(("127.0.0.1", server_port(turn))), local_addr=("127.0.0.1", 0))
        assert relay.transport is not None
        address = relay.transport.get_extra_info("sockname")[:2]
        settings = MediaSettings(
            microsoft_address=GATEWAY, video_address=GATEWAY,
            ice=IceSettings(turn_servers=(TurnServerSettings(address, USER, PASSWORD),)))
        try:
            yield relay, settings
        finally:
            relay.close()


def unbound(host: str, ports: range) -> list[int]:
    """The ports of ``ports`` that something still holds (bind fails)."""
    held = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                held.append(port)
    return held


@pytest.mark.parametrize("rounds", [3])
async def test_close_during_prepare_closes_everything_and_frees_the_ports(rounds: int) -> None:
    first, last = random_free_udp_range(GATEWAY, 40)
    pool = PortPool(PortPoolSettings(first, last))
    tasks_before = len(asyncio.all_tasks())
    async with slow_turn() as (relay, settings):
        for n in range(rounds):
            relay.seen.clear()
            session = MediaSession(f"cancelled-{n}", pool, settings)
            prepare = asyncio.create_task(session.prepare(["audio", "video"]))
            await asyncio.wait_for(relay.seen.wait(), WAIT)  # the TURN Allocate is on its way
            assert not prepare.done()
            await asyncio.wait_for(session.close(), WAIT)
            with pytest.raises(LocalProtocolError):
                await asyncio.wait_for(prepare, WAIT)
            assert session.streams == [] and session.bound_ports == 0
            assert (pool.ports_in_use, pool.bound_ports, pool.held_back) == (0, 0, 0)
            assert unbound(GATEWAY, range(first, last + 1)) == []
        # The pool still serves a whole call afterwards, and it closes cleanly.
        session = MediaSession("after", pool, settings)
        await asyncio.wait_for(session.prepare(["audio", "video"]), WAIT)
        assert pool.ports_in_use == 2 * (4 + 2) and pool.bound_ports == 2 * (4 + 2)
        await session.close()
        assert (pool.ports_in_use, pool.bound_ports) == (0, 0)
        assert unbound(GATEWAY, range(first, last + 1)) == []
    for _ in range(50):  # aioice's and the relay's tasks finish on their own turns
        if len(asyncio.all_tasks()) <= tasks_before:
            break
        await asyncio.sleep(0.02)
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_a_lease_with_a_socket_still_bound_is_kept_out_of_the_pool() -> None:
    first, last = random_free_udp_range(GATEWAY, 8)
    pool = PortPool(PortPoolSettings(first, last))
    bound = [2]
    lease = pool.allocate("call", [PortUnit.STREAM], probe=lambda: bound[0])
    assert pool.bound_ports == 2
    assert not pool.release(lease) and pool.ports_in_use == 4 and pool.held_back == 1
    bound[0] = 0
    assert pool.release(lease) and pool.ports_in_use == 0
    bound[0] = 2
    held = pool.allocate("call", [PortUnit.STREAM], probe=lambda: bound[0])
    assert not pool.release(held) and pool.ports_in_use == 4
    assert pool.reclaim() == 0
    bound[0] = 0  # the sockets closed later: the next allocation (or reclaim) frees them
    pool.allocate("next", [PortUnit.STREAM])
    assert pool.ports_in_use == 4 and len(pool.leases) == 1
