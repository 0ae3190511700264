"""The adapter's per-packet paths (``UdpListener`` / ``UdpRelay``) relay and refuse
exactly what ``TurnCore`` says: unknown channel, expired permission or channel, a peer
never permitted, an expired allocation. Transports are recorders: the sockets are the
boundary, the adapter and core are real."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
from dataclasses import dataclass
from typing import Any

import pytest

from turn import stun
from turn.allocation import Allocation
from turn.core import TurnCore
from turn.fast_udp import DatagramSender
from turn.fastpath import ENV, native_hub_type
from turn.server import TurnServer
from turn.stun import Attr, Class, Method
from turn.udp_protocols import UdpListener

from .helpers import authed, running_server, server_port, stun_client
from .test_core import PEER, Client, ft, make_core
from .test_coturn import run_uclient, totals


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


def frame(number: int, payload: bytes) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload


@dataclass
class Wired:
    """A server whose client holds an allocation, a permission for PEER and channel 0x4000,
    with recording transports toward the client and the peer."""

    now: float
    core: TurnCore
    client: Client
    alloc: Allocation
    server: TurnServer
    to_client: Recorder
    to_peer: Recorder


def wired(loop: asyncio.AbstractEventLoop) -> Wired:
    now = loop.time()
    core = make_core()
    client = Client(core, ft())
    client.allocate(now=now)
    client.permit(PEER, now)
    client.channel_bind(0x4000, PEER, now)
    server = TurnServer(core.config, core)
    server._loop = loop
    return Wired(now, core, client, core.allocations[client.ft], server, Recorder(), Recorder())


async def test_fast_paths_relay_and_refuse_as_the_core_does() -> None:
    loop = asyncio.get_running_loop()
    w = wired(loop)
    now, core, client, alloc, server = w.now, w.core, w.client, w.alloc, w.server
    to_client, to_peer = w.to_client, w.to_peer
    server._udp[client.ft.server] = to_client  # type: ignore[assignment]
    server._relay_udp[alloc.id] = to_peer  # type: ignore[assignment]
    server._udp_raw[client.ft.server] = to_client.sendto  # type: ignore[assignment]
    server._relay_raw[alloc.id] = to_peer.sendto  # type: ignore[assignment]
    listener = UdpListener(server, client.ft.server)
    relay = server._udp_relay(alloc, loop)

    def both_ways(number: int, peer: tuple[str, int], at: float) -> tuple[bool, bool]:
        """(fast path relayed to the peer, fast path relayed to the client), with the core's
        own verdict for the same packet, at the same time, checked to agree."""
        to_peer.sent.clear()
        to_client.sent.clear()
        data = frame(number, b"ping")
        core_out = core.channel_data_from_client(client.ft, data, at)
        core_in = core.data_from_peer(alloc, peer, b"pong", at)
        listener.time = relay.time = lambda: at  # type: ignore[method-assign]
        listener.datagram_received(data, client.ft.client)
        relay.datagram_received(b"pong", peer)
        assert (core_out is not None) == bool(to_peer.sent)
        assert (core_in is not None) == bool(to_client.sent)
        if core_out is not None:
            assert to_peer.sent == [(b"ping", core_out[1])]
        if core_in is not None:
            assert to_client.sent == [(core_in, client.ft.client)]
        return bool(to_peer.sent), bool(to_client.sent)

    assert both_ways(0x4000, PEER, now + 1) == (True, True)  # bound channel: ChannelData
    assert to_client.sent == [(frame(0x4000, b"pong"), client.ft.client)]
    assert both_ways(0x4001, PEER, now + 1) == (False, True)  # unknown channel dropped
    other = ("127.0.0.2", 6000)  # never permitted (denied peer)
    assert both_ways(0x4000, other, now + 1) == (True, False)
    assert both_ways(0x4000, PEER, now + 301) == (False, False)  # permission expired
    assert both_ways(0x4000, PEER, now + 700) == (False, False)  # allocation expired


async def test_a_refused_socket_send_falls_back_to_the_transport() -> None:
    """A full socket buffer (or an ICMP error) on the direct send: the datagram goes
    through the transport instead, which queues it or reports the error."""
    loop = asyncio.get_running_loop()
    w = wired(loop)
    client, alloc, server = w.client, w.alloc, w.server
    to_client, to_peer = w.to_client, w.to_peer

    def full(data: bytes, addr: Any) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    server._udp[client.ft.server] = to_client  # type: ignore[assignment]
    server._relay_udp[alloc.id] = to_peer  # type: ignore[assignment]
    server._udp_raw[client.ft.server] = full
    server._relay_raw[alloc.id] = full
    listener = UdpListener(server, client.ft.server)
    relay = server._udp_relay(alloc, loop)
    listener.datagram_received(frame(0x4000, b"ping"), client.ft.client)
    relay.datagram_received(b"pong", PEER)
    assert to_peer.sent == [(b"ping", PEER)]
    assert to_client.sent == [(frame(0x4000, b"pong"), client.ft.client)]


# -- the batched path (turn.fast_udp): a real server, coturn's client -------------------------

FAST_MODES = ["python", "off", *(["native"] if native_hub_type() is not None else [])]


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("turnutils_uclient") is None, reason="coturn not installed")
@pytest.mark.parametrize("mode", FAST_MODES)
async def test_uclient_relays_with_zero_loss_on_each_udp_path(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """turnutils_uclient over ChannelData and over Send/Data indications, client to client
    through the server, with the hub (native or its Python twin) or the transports: nothing
    lost, the hub forwarded the channels itself, and the server's counters include it."""
    monkeypatch.setenv(ENV, mode)
    async with running_server() as server:
        fast = server._fast
        assert (fast is not None) == (mode != "off")
        port = server_port(server)
        outputs = await asyncio.gather(run_uclient(port, "-y"), run_uclient(port, "-y", "-s"))
        sent_total = 0
        for output in outputs:
            sent, received, lost = totals(output)
            assert sent > 0 and received == sent and lost == 0, output[-2000:]
            sent_total += sent
        if fast is not None:
            # each channel message crosses the server twice (to the peer relay, to the client)
            assert fast.hub.stats()["fast"] >= 2 * totals(outputs[0])[0]
        stats = server.stats()
        assert stats.packets_to_peer >= sent_total and stats.packets_to_client >= sent_total
        assert stats.bytes_to_peer >= 120 * sent_total and stats.auth_failures == 0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# (server and peer host, a host never permitted, the allowed peers)
FAMILIES = {
    "ipv4": ("127.0.0.1", "127.0.0.2", ("127.0.0.1/32",)),
    "ipv6": ("::1", "::1", ("::1/128",)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", FAST_MODES)
async def test_server_relays_bound_channels_and_refuses_the_rest_on_each_udp_path(
    mode: str, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server on loopback: a bound channel relays both ways; ChannelData on an unbound
    channel and datagrams from a host never permitted are dropped. A dropped datagram is sent
    just before an accepted one on the same path, so the first datagram to arrive tells."""
    if family == "ipv6" and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    host, stranger_host, allowed = FAMILIES[family]
    monkeypatch.setenv(ENV, mode)
    loop = asyncio.get_running_loop()
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    peer = socket.socket(af, socket.SOCK_DGRAM)
    stranger = socket.socket(af, socket.SOCK_DGRAM)
    peer.bind((host, 0))
    stranger.bind((stranger_host, 0))
    for s in (peer, stranger):
        s.setblocking(False)
    try:
        async with running_server(listen=host, allow_peers=allowed) as server, stun_client(
            host, server_port(server)
        ) as c:
            ok = await authed(c, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")])
            value = ok.get(Attr.XOR_RELAYED_ADDRESS)
            assert value is not None, ok
            relay = stun.unpack_xor_address(value, ok.transaction_id)
            tid = os.urandom(12)
            bind = [
                (Attr.CHANNEL_NUMBER, struct.pack("!HH", 0x4000, 0)),
                (Attr.XOR_PEER_ADDRESS, stun.pack_xor_address(peer.getsockname(), tid)),
            ]
            assert (await authed(c, Method.CHANNEL_BIND, bind, tid=tid)).cls == Class.RESPONSE
            for _ in range(3):
                c.transport.sendto(frame(0x4001, b"unbound"))
                c.transport.sendto(frame(0x4000, b"to peer"))
                data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
                assert (data, source[:2]) == (b"to peer", relay)
                if family == "ipv4":
                    stranger.sendto(b"stranger", relay)
                else:  # ::1 is the peer's host: another port of it is a Data indication
                    stranger.sendto(b"other port", relay)
                    indication = stun.parse(await asyncio.wait_for(c.other.get(), 5))
                    assert indication.get(Attr.DATA) == b"other port"
                peer.sendto(b"to client", relay)
                assert await asyncio.wait_for(c.other.get(), 5) == frame(0x4000, b"to client")
            if server._fast is not None:
                assert server._fast.hub.stats()["fast"] >= 6
            stats = server.stats()
            indications = 3 if family == "ipv6" else 0
            assert (stats.packets_to_peer, stats.packets_to_client) == (3, 3 + indications)
    finally:
        peer.close()
        stranger.close()


async def test_a_full_socket_buffer_queues_in_order_until_writable() -> None:
    """DatagramSender (what the server sends with on hub-polled sockets, and where the hub
    hands what sendmmsg could not send): past a full buffer it queues, and drains in order once
    the socket takes datagrams again. A Unix datagram socket stands in for a full UDP buffer,
    which loopback UDP never reports."""
    loop = asyncio.get_running_loop()
    name = f"\0turnbatch-{os.getpid()}-{os.urandom(4).hex()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(name)
    receiver.setblocking(False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sender = DatagramSender(sock, loop)
    try:
        count = 2000  # past net.unix.max_dgram_qlen (512 by default)
        for i in range(count):
            sender.sendto(b"%d" % i, name)
        assert sender._queue, "the receiver's queue never filled"
        got = [await asyncio.wait_for(loop.sock_recv(receiver, 64), 5) for _ in range(count)]
        assert got == [b"%d" % i for i in range(count)] and not sender._queue
    finally:
        sender.close()
        receiver.close()
