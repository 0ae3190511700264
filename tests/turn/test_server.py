"""The asyncio TurnServer over real loopback sockets, driven by aioice's TURN client."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest
from aioice import stun as aioice_stun
from aioice import turn as aioice_turn

from turn import stun
from turn.auth import long_term_key
from turn.stun import Attr, Method

from .helpers import (
    PASSWORD,
    REALM,
    USER,
    authed,
    error_code,
    running_server,
    server_port,
    stun_client,
)

UDP_TRANSPORT = [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")]


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aioice_client_allocates_and_relays_to_udp_echo_peer(transport: str) -> None:
    loop = asyncio.get_running_loop()
    async with running_server() as server:
        echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        echo = echo_transport.get_extra_info("sockname")
        try:
            turn_transport, receiver = await aioice_turn.create_turn_endpoint(
                Receiver, ("127.0.0.1", server_port(server)), USER, PASSWORD, transport=transport
            )
            relayed = turn_transport.get_extra_info("sockname")
            low, high = server.config.relay_ports
            assert relayed[0] == "127.0.0.1" and low <= relayed[1] <= high
            for i in range(20):
                turn_transport.sendto(b"ping %d" % i, echo)
                data, addr = await asyncio.wait_for(receiver.queue.get(), 3)
                assert (data, addr) == (b"echo:ping %d" % i, echo)
            stats = server.stats()
            assert stats.allocations == 1 and stats.channels == 1 and stats.permissions == 1
            assert stats.packets_to_peer == 20 and stats.packets_to_client == 20
            assert stats.bytes_to_peer == sum(len(b"ping %d" % i) for i in range(20))
            turn_transport.close()
            for _ in range(100):  # the Refresh(0) round trip
                if server.stats().allocations == 0:
                    break
                await asyncio.sleep(0.02)
            assert server.stats().allocations == 0
        finally:
            echo_transport.close()


async def test_aioice_wrong_password_is_refused_401() -> None:
    async with running_server() as server:
        with pytest.raises(aioice_stun.TransactionFailed) as info:
            await aioice_turn.create_turn_endpoint(
                Receiver, ("127.0.0.1", server_port(server)), USER, "not-the-password"
            )
        assert info.value.response.error_code == 401
        assert server.stats().auth_failures == 1 and server.stats().allocations == 0


async def test_refusals_over_udp() -> None:
    async with running_server(allow_peers=(), user_quota=1) as server:
        port = server_port(server)
        async with stun_client("127.0.0.1", port) as c:
            no_creds = await c.request(Method.ALLOCATE, UDP_TRANSPORT)
            assert error_code(no_creds) == 401 and no_creds.get(Attr.NONCE)
            wrong = await authed(c, Method.ALLOCATE, UDP_TRANSPORT, password="nope")
            assert error_code(wrong) == 401
            stale_nonce = server.core.auth.make_nonce(asyncio.get_running_loop().time() - 10_000)
            key = long_term_key(USER, REALM, PASSWORD)
            auth = [
                (Attr.USERNAME, USER.encode()),
                (Attr.REALM, REALM.encode()),
                (Attr.NONCE, stale_nonce),
            ]
            assert (
                error_code(await c.request(Method.ALLOCATE, UDP_TRANSPORT + auth, key=key)) == 438
            )
            assert error_code(await authed(c, Method.ALLOCATE, [])) == 400
            ok = await authed(c, Method.ALLOCATE, UDP_TRANSPORT)
            assert ok.cls == stun.Class.RESPONSE
            for host in ("127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"):
                tid = os.urandom(12)
                peer = [(Attr.XOR_PEER_ADDRESS, stun.pack_xor_address((host, 9), tid))]
                refused = await authed(c, Method.CREATE_PERMISSION, peer, tid=tid)
                assert error_code(refused) == 403, host
            assert server.stats().peers_denied == 3
        async with stun_client("127.0.0.1", port) as other:
            assert error_code(await authed(other, Method.ALLOCATE, UDP_TRANSPORT)) == 486


async def test_bad_packets_never_stop_listeners() -> None:
    loop = asyncio.get_running_loop()
    async with running_server() as server:
        port = server_port(server)
        junk = [
            b"",
            b"\x00",
            os.urandom(3),
            os.urandom(19),
            b"\x40\x00\xff\xff",
            b"\x00\x01\x00\x08" + os.urandom(40),
            struct.pack("!HHI12s", 0x0001, 4, stun.COOKIE, os.urandom(12)) + b"\x00\x06\x00\x40",
            os.urandom(1400),
        ]
        async with stun_client("127.0.0.1", port) as c:
            for data in junk:
                c.transport.sendto(data)
            # A malformed request with the cookie gets its 400; the listener still answers Binding.
            tid = os.urandom(12)
            c.transport.sendto(
                struct.pack("!HHI12s", 0x0003, 8, stun.COOKIE, tid) + b"\x00\x19\x00\x10abcd"
            )
            fut = loop.create_future()
            c.waiters[tid] = fut
            assert error_code(await asyncio.wait_for(fut, 3)) == 400
            binding = await c.request(Method.BINDING, [])
            mapped = stun.unpack_xor_address(
                binding.get(Attr.XOR_MAPPED_ADDRESS) or b"", binding.transaction_id
            )
            assert mapped == c.transport.get_extra_info("sockname")
        # TCP: garbage closes that connection only.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xff" * 64)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(stun.encode(Method.BINDING, stun.Class.REQUEST, os.urandom(12), []))
        header = await asyncio.wait_for(reader.readexactly(20), 3)
        body = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", header[2:4])[0]), 3)
        assert stun.parse(header + body).cls == stun.Class.RESPONSE
        writer.close()


async def test_listens_on_any_loopback_address_and_port_range() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.4.1", 0))
    base = probe.getsockname()[1]
    probe.close()
    try:
        async with running_server(listen="127.0.4.1", ports=(base, base + 1)) as server:
            assert {(t, p) for t, _, p in server.addresses} == {
                ("udp", base),
                ("tcp", base),
                ("udp", base + 1),
                ("tcp", base + 1),
            }
            for port in (base, base + 1):
                async with stun_client("127.0.4.1", port) as c:
                    ok = await authed(c, Method.ALLOCATE, UDP_TRANSPORT)
                    relayed = stun.unpack_xor_address(
                        ok.get(Attr.XOR_RELAYED_ADDRESS) or b"", ok.transaction_id
                    )
                    assert relayed[0] == "127.0.4.1"
    except OSError as exc:  # another run took base+1 in the meantime
        pytest.skip(f"port range busy: {exc}")


async def test_stop_deletes_allocations_and_frees_relay_ports() -> None:
    async with running_server() as server:
        async with stun_client("127.0.0.1", server_port(server)) as c:
            ok = await authed(c, Method.ALLOCATE, UDP_TRANSPORT)
            relayed = stun.unpack_xor_address(
                ok.get(Attr.XOR_RELAYED_ADDRESS) or b"", ok.transaction_id
            )
            assert server.stats().allocations == 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(relayed)  # the relay socket is closed
    finally:
        sock.close()
