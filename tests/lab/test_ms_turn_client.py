"""The lab client's MS-TURN allocation (lab.lync.ms_turn_client) against our A/V Edge TURN
server on loopback: MRAS credentials, Send / Data indication, Set Active Destination, refresh,
release, and the refusals a client must surface."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lab.lync.ms_turn_client import (
    MsTurnError,
    MsTurnSession,
    create_ms_turn_endpoint,
    create_ms_turn_stream_endpoint,
)
from tests.peers.procs import random_free_udp_range
from turn.allocation import FiveTuple, OpenRelay, SendToClient, SendToPeer, Transport
from turn.auth import mras_credentials
from turn.config import TurnConfig
from turn.core import TurnCore
from turn.ms_turn import MsMessage
from turn.server import TurnServer

SECRET = "lab-mras-key"
REALM = "example.com"


@contextlib.asynccontextmanager
async def edge_turn(**changes: Any) -> AsyncIterator[TurnServer]:
    config = TurnConfig(listen="127.0.0.1", ports=(0, 0), realm=REALM,
                        relay_ports=random_free_udp_range("127.0.0.1", 10),
                        ms_turn_secret=SECRET, users=(("static", "static-pw"),),
                        allow_peers=("127.0.0.0/8",))
    server = TurnServer(config.replace(**changes))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def udp_address(server: TurnServer) -> tuple[str, int]:
    return next((h, p) for t, h, p in server.addresses if t == "udp")


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, (addr[0], addr[1])))


def mras(identity: str = "david.jones@example.com", lifetime: int = 3600) -> tuple[bytes, bytes]:
    """The raw username / password a client uses: MRAS's base64 decoded."""
    creds = mras_credentials(SECRET, identity, time.time(), lifetime)
    return base64.b64decode(creds.username), base64.b64decode(creds.password)


async def wait_stats(server: TurnServer, **expected: int) -> None:
    async def reached() -> None:
        while any(getattr(server.stats(), k) != v for k, v in expected.items()):
            await asyncio.sleep(0.02)
    await asyncio.wait_for(reached(), 5)


async def test_allocates_with_mras_credentials_relays_both_ways_and_releases() -> None:
    async with edge_turn() as server:
        username, password = mras()
        transport, inner = await create_ms_turn_endpoint(
            Receiver, server=udp_address(server), username=username, password=password,
            local_host="127.0.0.1")
        assert isinstance(inner, Receiver)
        relayed = transport.get_extra_info("sockname")
        assert relayed[0] == "127.0.0.1" and relayed[1] > 0
        assert transport.get_extra_info("related_address")[0] == "127.0.0.1"
        assert server.stats().allocations == 1

        loop = asyncio.get_running_loop()
        peer_transport, peer = await loop.create_datagram_endpoint(
            Receiver, local_addr=("127.0.0.1", 0))
        peer_address = peer_transport.get_extra_info("sockname")[:2]
        try:
            # Send requests: the peer sees the payload from the relayed address.
            transport.sendto(b"hello peer", peer_address)
            data, source = await asyncio.wait_for(peer.received.get(), 5)
            assert (data, source) == (b"hello peer", relayed)
            # The peer answers: a Data indication, unwrapped for the inner protocol.
            peer_transport.sendto(b"hello client", relayed)
            assert await asyncio.wait_for(inner.received.get(), 5) == (
                b"hello client", peer_address)

            # Set Active Destination: from then on data travels unencapsulated.
            await transport.set_active_destination(peer_address)
            transport.sendto(b"raw out", peer_address)
            assert await asyncio.wait_for(peer.received.get(), 5) == (b"raw out", relayed)
            peer_transport.sendto(b"raw in", relayed)
            assert await asyncio.wait_for(inner.received.get(), 5) == (b"raw in", peer_address)
            stats = server.stats()
            assert stats.packets_to_peer == 2 and stats.packets_to_client == 2

            # A refresh keeps the same relay (and the sequence numbers keep growing).
            refreshed = await transport.protocol.allocate()
            assert refreshed.relayed == relayed
            transport.sendto(b"after refresh", peer_address)
            assert (await asyncio.wait_for(peer.received.get(), 5))[0] == b"after refresh"
        finally:
            peer_transport.close()
        await transport.closed()
        await wait_stats(server, allocations=0)


async def test_static_account_allocates_too() -> None:
    async with edge_turn() as server:
        transport, _ = await create_ms_turn_endpoint(
            Receiver, server=udp_address(server), username=b"static", password=b"static-pw",
            local_host="127.0.0.1")
        assert server.stats().allocations == 1
        await transport.closed()
        await wait_stats(server, allocations=0)


@pytest.mark.parametrize("case", ["expired", "other-key", "wrong-password"])
async def test_refused_credentials_raise_and_leave_nothing(case: str) -> None:
    async with edge_turn() as server:
        if case == "expired":
            username, password = mras(lifetime=-10)
        elif case == "other-key":
            creds = mras_credentials("not-the-edge-key", "david.jones@example.com", time.time())
            username, password = (base64.b64decode(creds.username),
                                  base64.b64decode(creds.password))
        else:
            username, password = mras()[0], b"guess"
        with pytest.raises(MsTurnError, match="401"):
            await create_ms_turn_endpoint(
                Receiver, server=udp_address(server), username=username, password=password,
                local_host="127.0.0.1")
        stats = server.stats()
        assert stats.allocations == 0 and stats.auth_failures == 1


async def test_denied_peer_is_not_relayed() -> None:
    async with edge_turn(allow_peers=()) as server:  # loopback peers denied
        username, password = mras()
        transport, _ = await create_ms_turn_endpoint(
            Receiver, server=udp_address(server), username=username, password=password,
            local_host="127.0.0.1")
        transport.sendto(b"to a denied peer", ("127.0.0.1", 9))
        await wait_stats(server, peers_denied=1)
        assert server.stats().packets_to_peer == 0
        with pytest.raises(MsTurnError, match="403"):
            await transport.set_active_destination(("127.0.0.1", 9))
        await transport.closed()
        await wait_stats(server, allocations=0)


async def test_no_answer_is_an_error() -> None:
    loop = asyncio.get_running_loop()
    silent, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    try:
        with pytest.raises(MsTurnError, match="did not answer"):
            await asyncio.wait_for(create_ms_turn_endpoint(
                Receiver, server=silent.get_extra_info("sockname")[:2], username=b"u",
                password=b"p", local_host="127.0.0.1", retransmissions=(0.05, 0.1, 0.2)), 5)
    finally:
        silent.close()


def test_session_against_the_server_core_in_memory() -> None:
    """The client's sans-IO session and the server's sans-IO core, bytes passed by hand and
    time given: challenge, allocation, a Send, a refresh after the nonce went stale (438,
    then accepted), a replayed Send refused (dropped), the release."""
    core = TurnCore(TurnConfig(listen="127.0.0.1", ports=(3478, 3478), realm=REALM,
                               relay_ports=(50000, 50010), ms_turn_secret=SECRET,
                               allow_peers=("127.0.0.0/8",), nonce_lifetime=60))
    ft = FiveTuple(Transport.UDP, ("127.0.0.1", 40000), ("127.0.0.1", 3478))
    username, password = mras()
    session = MsTurnSession(username, password)
    now = 1000.0

    def exchange(request: bytes) -> MsMessage:
        actions = core.handle_stun(request, ft, now)
        for action in actions:
            if isinstance(action, OpenRelay):
                actions = core.relay_opened(action.allocation, now)
        (reply,) = [a for a in actions if isinstance(a, SendToClient)]
        answer = session.incoming(reply.data, ft.server, ft.server)
        assert isinstance(answer, MsMessage)
        return answer

    assert not session.allocate_answer(exchange(session.allocate()[1]))  # 401: realm, nonce
    assert session.allocate_answer(exchange(session.allocate()[1]))
    assert session.allocated is not None and session.allocated.relayed[0] == "127.0.0.1"
    (alloc,) = core.allocations.values()
    send = session.send(b"rtp", ("127.0.0.1", 9000))
    (out,) = core.handle_stun(send, ft, now)
    assert isinstance(out, SendToPeer) and (out.peer, out.data) == (("127.0.0.1", 9000), b"rtp")
    assert core.handle_stun(send, ft, now) == []  # the same sequence number again: dropped
    now += 120  # the nonce is stale now: the refresh gets 438 with a new one, then passes
    assert not session.allocate_answer(exchange(session.allocate()[1]))
    assert session.allocate_answer(exchange(session.allocate()[1]))
    assert alloc.expiry > now
    assert session.allocate_answer(exchange(session.allocate(lifetime=0)[1]))
    assert not core.allocations


@pytest.mark.parametrize("pseudo_tls", [False, True], ids=["framed", "pseudo-tls"])
async def test_over_tcp_gets_a_tcp_relay_and_relays_the_peer_stream_both_ways(
        pseudo_tls: bool) -> None:
    """Where UDP is blocked a client reaches the A/V Edge over TCP (on 443 pseudo-TLS first):
    the relayed address is then a TCP one, a Send opens a connection from the relay IP to
    the peer, the peer's bytes come back from it, Set Active Destination then 0x03 frames;
    the release removes the allocation and its peer connection."""
    async with edge_turn() as server:
        tcp = next((h, p) for t, h, p in server.addresses if t == "tcp")
        username, password = mras()
        transport, inner = await create_ms_turn_stream_endpoint(
            Receiver, server=tcp, username=username, password=password,
            local_host="127.0.0.1", pseudo_tls=pseudo_tls)
        assert isinstance(inner, Receiver)
        relayed = transport.get_extra_info("sockname")
        (alloc,) = server.core.allocations.values()
        assert alloc.transport is Transport.TCP and alloc.relay_port == relayed[1]
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        listener = await asyncio.start_server(
            lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0)
        peer = listener.sockets[0].getsockname()[:2]
        try:
            transport.sendto(b"\x00\x05hello", peer)  # one RFC 4571 frame, as ICE-TCP
            reader, writer = await asyncio.wait_for(accepted.get(), 5)
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x00\x05hello"
            writer.write(b"\x00\x02hi")
            assert await asyncio.wait_for(inner.received.get(), 5) == (b"\x00\x02hi", peer)
            await transport.set_active_destination(peer)
            transport.sendto(b"\x00\x03raw", peer)
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x00\x03raw"
            writer.write(b"\x00\x03out")
            assert await asyncio.wait_for(inner.received.get(), 5) == (b"\x00\x03out", peer)
            await transport.closed()
            await wait_stats(server, allocations=0)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # its connection closed
            writer.close()
        finally:
            listener.close()


async def test_a_real_tls_server_on_443_is_not_taken_for_the_a_v_edge() -> None:
    """Pseudo-TLS wants a ServerHello back; anything else ends the attempt with an error."""
    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x15\x03\x01\x00\x02\x02\x28")  # a TLS alert
        await writer.drain()

    listener = await asyncio.start_server(not_tls, "127.0.0.1", 0)
    try:
        with pytest.raises(MsTurnError, match="not a TLS 1.0 handshake"):
            await create_ms_turn_stream_endpoint(
                Receiver, server=listener.sockets[0].getsockname()[:2], username=b"u",
                password=b"p", local_host="127.0.0.1", pseudo_tls=True, timeout=5)
    finally:
        listener.close()
