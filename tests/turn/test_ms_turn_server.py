"""MS-TURN through the asyncio adapters on real loopback sockets: UDP and TCP framing (on the
A/V Edge's extra TCP port too), Send / Data indication, Set Active Destination and then
unencapsulated data both ways, beside an RFC 8656 allocation on the same listener; an
allocation made over TCP relays TCP byte streams (connections opened from the relay, peers
connecting to it held until permitted).

The client here is built from our own codec; libnice's interoperability is
``test_ms_turn_libnice.py``'s job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from tests.peers.procs import random_free_port
from turn import ms_turn, stun
from turn.auth import mras_credentials
from turn.ms_turn import MsAttr, MsType

from .helpers import authed, running_server, server_port, stun_client

SECRET = "edge-fe-shared-key"


class MsClient:
    """A minimal MS-TURN client over a UDP socket or a framed TCP stream."""

    def __init__(self, *, tcp: bool) -> None:
        self.tcp = tcp
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.udp: socket.socket | None = None
        creds = mras_credentials(SECRET, "david@example.com", time.time())
        self.username = base64.b64decode(creds.username)
        self.password = base64.b64decode(creds.password)
        self.key = b""
        self.realm = b""
        self.connection_id = b""
        self.sequence = 0

    async def connect(self, port: int) -> None:
        if self.tcp:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.connect(("127.0.0.1", port))
            self.udp.setblocking(False)

    async def send_raw(self, data: bytes, kind: int = ms_turn.FRAME_CONTROL) -> None:
        if self.writer is not None:
            self.writer.write(ms_turn.frame(kind, data))
            await self.writer.drain()
        else:
            assert self.udp is not None
            await asyncio.get_running_loop().sock_sendall(self.udp, data)

    async def receive(self, timeout: float = 5.0) -> tuple[int, bytes]:
        if self.reader is not None:
            header = await asyncio.wait_for(self.reader.readexactly(4), timeout)
            length = int.from_bytes(header[2:4], "big")
            assert header[1] == 0
            return header[0], await asyncio.wait_for(self.reader.readexactly(length), timeout)
        assert self.udp is not None
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.udp, 2048), timeout)
        return (ms_turn.FRAME_CONTROL if ms_turn.is_ms_turn(data) else ms_turn.FRAME_DATA), data

    async def receive_data_indication(self) -> tuple[tuple[str, int], bytes | None]:
        """The next message, which must be a Data indication: (the peer it names, its DATA)."""
        kind, raw = await self.receive()
        msg = ms_turn.parse(raw)
        assert msg.msg_type == MsType.DATA_INDICATION and kind == ms_turn.FRAME_CONTROL
        remote = msg.get(MsAttr.REMOTE_ADDRESS)
        assert remote is not None
        return ms_turn.unpack_address(remote), msg.get(MsAttr.DATA)

    async def request(self, msg_type: int, attrs: list[tuple[int, bytes]], *, key: bool) -> Any:
        tid = os.urandom(16)
        await self.send_raw(ms_turn.encode(msg_type, tid, attrs, key=self.key if key else None))
        while True:
            kind, data = await self.receive()
            if kind == ms_turn.FRAME_CONTROL:
                msg = ms_turn.parse(data)
                if msg.transaction_id == tid:
                    return msg

    def auth(self, nonce: bytes | None = None) -> list[tuple[int, bytes]]:
        attrs = [(int(MsAttr.USERNAME), self.username), (int(MsAttr.REALM), self.realm)]
        if nonce is not None:
            attrs.append((int(MsAttr.NONCE), nonce))
        return attrs

    def next_sequence(self) -> tuple[int, bytes]:
        self.sequence += 1
        return int(MsAttr.MS_SEQUENCE_NUMBER), ms_turn.pack_sequence(
            self.connection_id, self.sequence
        )

    async def allocate(self) -> tuple[str, int]:
        version = (int(MsAttr.MS_VERSION), ms_turn.pack_u32(1))
        first = await self.request(MsType.ALLOCATE_REQUEST, [version], key=False)
        assert first.msg_type == MsType.ALLOCATE_ERROR
        assert ms_turn.unpack_error_code(first.get(MsAttr.ERROR_CODE))[0] == 401
        self.realm, nonce = first.get(MsAttr.REALM), first.get(MsAttr.NONCE)
        self.key = ms_turn.long_term_key(self.username, self.realm, self.password)
        ok = await self.request(MsType.ALLOCATE_REQUEST, [version, *self.auth(nonce)], key=True)
        assert ok.msg_type == MsType.ALLOCATE_RESPONSE, ok
        assert ok.check_integrity(self.key)
        self.connection_id = ms_turn.unpack_sequence(ok.get(MsAttr.MS_SEQUENCE_NUMBER))[0]
        return ms_turn.unpack_address(ok.get(MsAttr.MAPPED_ADDRESS))

    async def send_to(self, peer: tuple[str, int], data: bytes) -> None:
        attrs = [
            *self.auth(),
            (int(MsAttr.DESTINATION_ADDRESS), ms_turn.pack_address(peer)),
            self.next_sequence(),
            (int(MsAttr.DATA), data),
        ]
        tid = os.urandom(16)
        await self.send_raw(ms_turn.encode(MsType.SEND_REQUEST, tid, attrs, key=self.key))

    async def set_active_destination(self, peer: tuple[str, int]) -> Any:
        attrs = [
            *self.auth(),
            self.next_sequence(),
            (int(MsAttr.DESTINATION_ADDRESS), ms_turn.pack_address(peer)),
        ]
        return await self.request(MsType.SET_ACTIVE_DESTINATION_REQUEST, attrs, key=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.udp is not None:
            self.udp.close()


@contextlib.asynccontextmanager
async def ms_client(port: int, *, tcp: bool) -> AsyncIterator[MsClient]:
    """An MsClient connected to ``port``, closed on leaving."""
    client = MsClient(tcp=tcp)
    await client.connect(port)
    try:
        yield client
    finally:
        client.close()


async def _relay_both_ways(client: MsClient, relay: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    peer_addr = peer.getsockname()
    try:
        # Send request -> the peer gets the data from the relay address
        await client.send_to(peer_addr, b"hello peer")
        data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
        assert data == b"hello peer" and source == relay
        # the peer answers -> Data indication 0x0115 naming the peer
        await loop.sock_sendto(peer, b"hello client", relay)
        assert await client.receive_data_indication() == (peer_addr, b"hello client")
        # Set Active Destination -> data travels unencapsulated both ways
        answer = await client.set_active_destination(peer_addr)
        assert answer.msg_type == MsType.SET_ACTIVE_DESTINATION_RESPONSE
        assert answer.check_integrity(client.key)
        rtp = b"\x80\x60" + os.urandom(40)
        await client.send_raw(rtp, ms_turn.FRAME_DATA)
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
        assert data == rtp
        await loop.sock_sendto(peer, rtp[::-1], relay)
        assert await client.receive() == (ms_turn.FRAME_DATA, rtp[::-1])
    finally:
        peer.close()


async def _relay_streams_both_ways(client: MsClient, relay: tuple[str, int]) -> None:
    """A TCP relayed address: a Send opens a connection from the relay IP to the peer and
    writes DATA into it; the peer's bytes come back as Data indications naming it; after Set
    Active Destination, 0x03 frames carry the stream both ways."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    listener = await asyncio.start_server(
        lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0
    )
    peer_addr = listener.sockets[0].getsockname()[:2]
    try:
        await client.send_to(peer_addr, b"\x00\x05hello")  # RFC 4571 framing, as ICE-TCP
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        source = writer.get_extra_info("peername")[:2]
        assert source[0] == relay[0] and source != relay  # relay IP, fresh port (ICE-TCP active)
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x00\x05hello"
        writer.write(b"\x00\x06answer")
        assert await client.receive_data_indication() == (peer_addr, b"\x00\x06answer")
        answer = await client.set_active_destination(peer_addr)
        assert answer.msg_type == MsType.SET_ACTIVE_DESTINATION_RESPONSE
        chunk = b"\x00\x2a" + os.urandom(42)
        await client.send_raw(chunk, ms_turn.FRAME_DATA)
        assert await asyncio.wait_for(reader.readexactly(len(chunk)), 5) == chunk
        writer.write(chunk[::-1])
        assert await client.receive() == (ms_turn.FRAME_DATA, chunk[::-1])
        # a second Send to the same peer reuses its connection: no new accept
        await client.send_to(peer_addr, b"\x00\x01!")
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"\x00\x01!"
        assert accepted.empty()
        writer.close()
    finally:
        listener.close()


async def test_ms_turn_over_udp_beside_rfc_8656() -> None:
    async with running_server(ms_turn_secret=SECRET) as server:
        port = server_port(server)
        async with ms_client(port, tcp=False) as client:
            relay = await client.allocate()
            await _relay_both_ways(client, relay)
            async with stun_client("127.0.0.1", port) as rfc:
                answer = await authed(
                    rfc,
                    stun.Method.ALLOCATE,
                    [(int(stun.Attr.REQUESTED_TRANSPORT), b"\x11\0\0\0")],
                )
                assert answer.cls == stun.Class.RESPONSE
                assert server.stats().allocations == 2


async def test_ms_turn_over_the_extra_tcp_port() -> None:
    extra = random_free_port("127.0.0.1", socket.SOCK_STREAM)
    async with running_server(ms_turn_secret=SECRET, tcp_ports=(extra,)) as server:
        assert ("tcp", "127.0.0.1", extra) in server.addresses
        assert ("udp", "127.0.0.1", extra) not in server.addresses
        async with ms_client(extra, tcp=True) as client:
            relay = await client.allocate()
            (alloc,) = server.core.allocations.values()
            assert alloc.ms is not None and alloc.five_tuple.server[1] == extra
            assert alloc.transport.name == "TCP" and server.stats().tcp_allocations == 1
            await _relay_streams_both_ways(client, relay)
        for _ in range(100):  # the control connection closed: the allocation goes with it
            if not server.core.allocations:
                break
            await asyncio.sleep(0.02)
        assert server.stats().allocations == 0
        assert not server._ms_streams  # the peer connections went with it


async def test_tcp_peer_connecting_first_is_held_until_the_client_sends_to_it() -> None:
    """ICE checks cross: a peer may connect to the TCP relayed address before the client's
    Send installs its permission. Its bytes wait, unread, and arrive once the client sends
    to its IP; a peer the client never sends to is closed after ``connect_timeout``."""
    async with running_server(ms_turn_secret=SECRET, connect_timeout=1.0) as server:
        async with ms_client(server_port(server), tcp=True) as client:
            relay = await client.allocate()
            reader, writer = await asyncio.open_connection(*relay)
            writer.write(b"\x00\x05early")
            await writer.drain()
            with contextlib.suppress(TimeoutError):  # nothing relayed before the permission
                kind, raw = await client.receive(timeout=0.3)
                raise AssertionError(f"relayed before a permission: {raw!r}")
            await client.send_to(("127.0.0.1", 9), b"\x00\x01x")  # permits 127.0.0.1
            peer = writer.get_extra_info("sockname")[:2]
            assert await client.receive_data_indication() == (peer, b"\x00\x05early")
            writer.close()
    async with running_server(ms_turn_secret=SECRET, connect_timeout=0.5) as server:
        async with ms_client(server_port(server), tcp=True) as client:
            relay = await client.allocate()
            reader, writer = await asyncio.open_connection(*relay)
            writer.write(b"\x00\x05never")
            try:  # closed (reset: its bytes were never read), never relayed
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
            assert server.stats().bytes_to_client == 0
            writer.close()


async def test_tcp_relay_connect_failure_leaves_no_stream() -> None:
    async with running_server(ms_turn_secret=SECRET) as server:
        async with ms_client(server_port(server), tcp=True) as client:
            await client.allocate()
            closed = random_free_port("127.0.0.1", socket.SOCK_STREAM)  # nobody listens
            await client.send_to(("127.0.0.1", closed), b"\x00\x01x")
            (alloc,) = server.core.allocations.values()
            assert alloc.ms is not None
            for _ in range(100):
                if not alloc.ms.streams and not server._ms_streams:
                    break
                await asyncio.sleep(0.02)
            assert not alloc.ms.streams and not server._ms_streams


async def test_malformed_ms_turn_over_tcp_closes_only_that_connection() -> None:
    async with running_server(ms_turn_secret=SECRET) as server:
        port = server_port(server)
        good = MsClient(tcp=True)
        await good.connect(port)
        bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            wrong = bytearray(ms_turn.encode(MsType.ALLOCATE_REQUEST, os.urandom(16), []))
            wrong[24:28] = b"\0\0\0\0"  # MAGIC-COOKIE with a wrong value
            bad_writer.write(ms_turn.frame(ms_turn.FRAME_CONTROL, bytes(wrong)))
            await bad_writer.drain()
            assert await asyncio.wait_for(bad_reader.read(), 5) == b""  # closed, no answer
            await good.allocate()
            assert server.stats().allocations == 1
        finally:
            bad_writer.close()
            good.close()


async def test_standard_clients_relay_with_zero_loss_beside_a_live_ms_turn_allocation() -> None:
    """coturn's turnutils_uclient and aioice on the server that is holding an MS-TURN
    allocation with an active destination: standard TURN is unaffected, and the MS-TURN
    allocation still relays afterwards."""
    from aioice import turn as aioice_turn

    from .helpers import PASSWORD, USER
    from .test_coturn import MODES, run_uclient, totals
    from .test_server import Echo, Receiver

    loop = asyncio.get_running_loop()
    async with running_server(ms_turn_secret=SECRET) as server:
        port = server_port(server)
        ms = MsClient(tcp=False)
        await ms.connect(port)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        try:
            relay = await ms.allocate()
            answer = await ms.set_active_destination(peer.getsockname())
            assert answer.msg_type == MsType.SET_ACTIVE_DESTINATION_RESPONSE
            if shutil.which("turnutils_uclient"):
                for mode in ("udp-channels", "udp-send-indications", "tcp-control"):
                    sent, received, lost = totals(await run_uclient(port, *MODES[mode]))
                    assert sent > 0 and received == sent and lost == 0, mode
            turn_transport, receiver = await aioice_turn.create_turn_endpoint(
                Receiver, ("127.0.0.1", port), USER, PASSWORD
            )
            echo = echo_transport.get_extra_info("sockname")
            for i in range(20):
                turn_transport.sendto(b"ping %d" % i, echo)
                data, addr = await asyncio.wait_for(receiver.queue.get(), 3)
                assert (data, addr) == (b"echo:ping %d" % i, echo)
            turn_transport.close()
            await ms.send_raw(b"\x80still here", ms_turn.FRAME_DATA)
            data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
            assert (data, source) == (b"\x80still here", relay)
        finally:
            echo_transport.close()
            peer.close()
            ms.close()


async def test_pseudo_tls_then_ms_turn_on_the_extra_tcp_port() -> None:
    """[MS-TURN] 2.1.3: a TLS 1.0 ClientHello offering only 0x0018, our ServerHello +
    ServerHelloDone, then plain MS-TURN frames; a real TLS ClientHello is closed."""
    extra = random_free_port("127.0.0.1", socket.SOCK_STREAM)
    async with running_server(ms_turn_secret=SECRET, tcp_ports=(extra,)) as server:
        hello = b"\x03\x01" + os.urandom(32) + b"\x00" + b"\x00\x02\x00\x18" + b"\x01\x00"
        handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
        record = b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake
        async with ms_client(extra, tcp=True) as client:
            assert client.writer is not None and client.reader is not None
            client.writer.write(record[:7])  # in pieces, as TCP may deliver it
            await client.writer.drain()
            client.writer.write(record[7:])
            reply = await asyncio.wait_for(client.reader.readexactly(5), 5)
            assert reply[:3] == b"\x16\x03\x01"
            body = await client.reader.readexactly(int.from_bytes(reply[3:5], "big"))
            assert body[0] == 0x02 and body[-4:] == b"\x0e\x00\x00\x00"
            assert body[4 + 2 + 32 + 1 + 32 : 4 + 2 + 32 + 1 + 32 + 3] == b"\x00\x18\x00"
            await client.allocate()
            assert server.stats().allocations == 1
        real = record.replace(b"\x00\x02\x00\x18", b"\x00\x02\x13\x01")
        reader, writer = await asyncio.open_connection("127.0.0.1", extra)
        writer.write(real)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
