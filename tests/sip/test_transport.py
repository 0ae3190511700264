"""SIP transports over real sockets on 127.0.0.0/8, on both the asyncio loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop

from sip.framing import KeepAlive, StreamFramer
from sip.message import Request, Response, make_response, parse_message
from sip.port_range import DEFAULT_OUTBOUND_PORTS, PortRange
from sip.transport import (
    ConnectionInfo,
    ReceivedMessage,
    Transport,
    TransportAddress,
    TransportError,
    TransportManager,
    TransportSettings,
)

T = TypeVar("T")

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine function on a fresh loop of each kind (10 s cap).

    Fails the test when anything reached the loop's exception handler: no exception
    may escape from a listener into the event loop.
    """

    def runner(main: Callable[[], Awaitable[T]]) -> T:
        escaped: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[request.param]) as asyncio_runner:
            asyncio_runner.get_loop().set_exception_handler(lambda _, ctx: escaped.append(ctx))

            async def capped() -> T:
                return await asyncio.wait_for(main(), 10)

            result = asyncio_runner.run(capped())
        assert escaped == [], f"exceptions escaped into the event loop: {escaped}"
        return result

    return runner


def sip_request(
    method: str = "OPTIONS",
    *,
    transport: str = "TCP",
    branch: str = "z9hG4bK-1",
    call_id: str = "call-1@127.0.0.1",
    body: bytes = b"",
    extra: str = "",
) -> bytes:
    """A raw request, as a peer would write it."""
    head = (
        f"{method} sip:gateway@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:gateway@video.example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Peer:
    """A raw TCP client: writes bytes as given, reads framed messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer()

    @classmethod
    async def connect(cls, address: TransportAddress, **kwargs: Any) -> Peer:
        reader, writer = await asyncio.open_connection(address.host, address.port, **kwargs)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_item(self) -> bytes | KeepAlive | None:
        """The next message or keep-alive; None at EOF."""
        while True:
            item = self.framer.next_message()
            if item is not None:
                return item
            data = await self.reader.read(65536)
            if not data:
                return None
            self.framer.feed(data)

    async def response(self) -> Response:
        item = await self.next_item()
        assert isinstance(item, bytes), f"expected a message, got {item!r}"
        message = parse_message(item)
        assert isinstance(message, Response)
        return message

    @property
    def local(self) -> tuple[str, int]:
        name = self.writer.get_extra_info("sockname")
        return (name[0], name[1])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def manager(
    settings: TransportSettings | None = None, **kwargs: Any
) -> AsyncIterator[TransportManager]:
    async with TransportManager(settings, **kwargs) as transport_manager:
        yield transport_manager


class UdpPeer(asyncio.DatagramProtocol):
    """A raw UDP peer: sends bytes as given, queues what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait(data)

    @classmethod
    async def open(cls) -> UdpPeer:
        loop = asyncio.get_running_loop()
        peer = cls()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: peer, local_addr=("127.0.0.1", 0)
        )
        peer.transport = transport
        return peer

    def send(self, data: bytes, address: TransportAddress) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (address.host, address.port))

    async def exchange(self, data: bytes, address: TransportAddress) -> bytes:
        self.send(data, address)
        return await self.received.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def expect_request(transport_manager: TransportManager) -> ReceivedMessage:
    received = await transport_manager.receive()
    assert isinstance(received.message, Request)
    return received


# -- types ---------------------------------------------------------------------------


def test_transport_enum_and_address() -> None:
    assert not Transport.UDP.reliable
    assert Transport.TCP.reliable and Transport.TLS.reliable
    assert Transport.parse("tls") is Transport.TLS
    assert Transport.TLS.default_port == 5061 and Transport.TCP.default_port == 5060
    with pytest.raises(ValueError, match="unknown SIP transport"):
        Transport.parse("SCTP")
    address = TransportAddress(Transport.TCP, "127.0.0.1", 5060)
    assert address.reliable
    assert str(address) == "TCP:127.0.0.1:5060"
    assert str(TransportAddress(Transport.UDP, "::1", 5060)) == "UDP:[::1]:5060"
    assert address == TransportAddress(Transport.TCP, "127.0.0.1", 5060)
    assert hash(address) == hash(TransportAddress(Transport.TCP, "127.0.0.1", 5060))
    with pytest.raises(AttributeError):
        address.port = 1  # type: ignore[misc]


# -- UDP -----------------------------------------------------------------------------


def test_udp_round_trip(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server, manager() as client:
            listening = await server.listen(Transport.UDP, "127.0.0.1", 0)
            assert listening.port != 0 and listening.transport is Transport.UDP
            request = parse_message(sip_request(transport="UDP"))
            sent_on = await client.send(request, listening)
            received = await expect_request(server)
            assert received.message.call_id == "call-1@127.0.0.1"
            assert received.source.transport is Transport.UDP
            assert received.source.port == sent_on.local.port
            assert received.connection.local == listening
            assert isinstance(received.message, Request)
            await server.send(make_response(received.message, 200), received.source)
            answer = await client.receive()
            assert isinstance(answer.message, Response) and answer.message.status == 200
            assert answer.source == listening

    run(main)


def test_udp_malformed_request_gets_400_and_listener_keeps_serving(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server:
            listening = await server.listen(Transport.UDP, "127.0.0.1", 0)
            peer = await UdpPeer.open()
            try:
                bad = sip_request(transport="UDP").replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
                # The broken CSeq is echoed as received, so read the reply as text.
                reply = (await peer.exchange(bad, listening)).decode()
                status_line = reply.split("\r\n", 1)[0]
                assert status_line.startswith("SIP/2.0 400 ")
                assert "cseq" in status_line.lower()
                assert "\r\nCall-ID: call-1@127.0.0.1\r\n" in reply
                assert ";branch=z9hG4bK-1" in reply
                good = sip_request(transport="UDP", call_id="good@127.0.0.1")
                peer.send(good, listening)
                received = await expect_request(server)
                assert received.message.call_id == "good@127.0.0.1"
            finally:
                peer.close()

    run(main)


def test_udp_oversize_gets_413(run: Runner) -> None:
    async def main() -> None:
        async with manager(TransportSettings(max_message_size=1500)) as server:
            listening = await server.listen(Transport.UDP, "127.0.0.1", 0)
            peer = await UdpPeer.open()
            try:
                big = sip_request(transport="UDP", body=b"v=0\r\n" + b"a=x\r\n" * 400)
                reply = parse_message(await peer.exchange(big, listening))
                assert isinstance(reply, Response) and reply.status == 413
                small = sip_request(transport="UDP", call_id="small@127.0.0.1")
                peer.send(small, listening)
                assert (await expect_request(server)).message.call_id == "small@127.0.0.1"
            finally:
                peer.close()

    run(main)


def test_udp_malformed_response_is_dropped_and_logged(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with manager() as server:
            listening = await server.listen(Transport.UDP, "127.0.0.1", 0)
            peer = await UdpPeer.open()
            try:
                bad_response = b"SIP/2.0 abc OK\r\nVia: SIP/2.0/UDP 127.0.0.1\r\n\r\n"
                peer.send(bad_response, listening)
                good = sip_request(transport="UDP", call_id="after@127.0.0.1")
                peer.send(good, listening)
                # Datagrams on loopback arrive in order: the first delivery is the good one.
                assert (await expect_request(server)).message.call_id == "after@127.0.0.1"
                assert server._queue.empty()
            finally:
                peer.close()

    with caplog.at_level(logging.WARNING, logger="sip.transport"):
        run(main)
    assert any("dropped malformed message" in r.getMessage() for r in caplog.records)


# -- TCP framing -----------------------------------------------------------------------


def test_tcp_byte_by_byte_two_in_one_write_and_body(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                first = sip_request(call_id="bytewise@127.0.0.1")
                for index in range(len(first)):
                    await peer.write(first[index : index + 1])
                received = await expect_request(server)
                assert received.message.call_id == "bytewise@127.0.0.1"
                assert received.data == first
                assert received.source == TransportAddress(Transport.TCP, *peer.local)

                # A body holding a blank line must not end the message early.
                body = b"v=0\r\n\r\ns=-\r\n"
                two = sip_request(call_id="one@127.0.0.1", body=body) + sip_request(
                    call_id="two@127.0.0.1"
                )
                await peer.write(two)
                one = await expect_request(server)
                assert one.message.call_id == "one@127.0.0.1"
                assert one.message.body == body
                assert (await expect_request(server)).message.call_id == "two@127.0.0.1"
                assert one.connection.id == received.connection.id
            finally:
                await peer.close()

    run(main)


def test_response_goes_back_on_the_inbound_connection(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                await peer.write(sip_request())
                received = await expect_request(server)
                assert isinstance(received.message, Request)
                used = await server.send(make_response(received.message, 200), received.source)
                assert used.id == received.connection.id
                assert not used.outbound
                response = await peer.response()
                assert response.status == 200 and response.call_id == "call-1@127.0.0.1"
                assert len(server.connections()) == 1
            finally:
                await peer.close()

    run(main)


def test_outbound_connection_reused_and_source_port_in_range(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server, manager() as client:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            # Concurrent sends to a new peer must share one connection.
            infos = await asyncio.gather(
                *(
                    client.send(sip_request(call_id=f"c{index}@127.0.0.1"), listening)
                    for index in range(3)
                )
            )
            later = await client.send(sip_request(call_id="c3@127.0.0.1"), listening)
            assert {info.id for info in infos} == {later.id}
            assert later.outbound and later.remote == listening
            assert later.local.port in DEFAULT_OUTBOUND_PORTS
            sources = {(await expect_request(server)).source for _ in range(4)}
            assert sources == {TransportAddress(Transport.TCP, "127.0.0.1", later.local.port)}
            assert len(server.connections()) == 1
            assert client.find_connection(listening) == later

            # A request from the server to the client's source reuses the client's connection.
            received_on_client: list[ConnectionInfo] = []
            source = next(iter(sources))
            await server.send(sip_request(call_id="back@127.0.0.1"), source)
            back = await expect_request(client)
            received_on_client.append(back.connection)
            assert back.connection.id == later.id

    run(main)


def free_port_pair() -> tuple[socket.socket, int]:
    """A bound socket on port p and the free port p + 1 (both on 0.0.0.0)."""
    for _ in range(50):
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.bind(("0.0.0.0", 0))
        port = held.getsockname()[1]
        if port < 65535:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("0.0.0.0", port + 1))
            except OSError:
                held.close()
                continue
            finally:
                probe.close()
            return held, port
        held.close()
    raise RuntimeError("no pair of adjacent free ports")


def test_source_port_skips_ports_in_use_and_reports_exhaustion(run: Runner) -> None:
    held, busy = free_port_pair()

    async def main() -> None:
        settings = TransportSettings(outbound_ports=PortRange(busy, busy + 1))
        async with manager() as server, manager(settings) as client:
            first = await server.listen(Transport.TCP, "127.0.0.1", 0)
            second = await server.listen(Transport.TCP, "127.0.0.2", 0)
            info = await client.send(sip_request(), first)
            assert info.local.port == busy + 1
            assert (await expect_request(server)).source.port == busy + 1
            # Both ports of the range are now taken (held socket, first connection).
            with pytest.raises(TransportError, match="no free source port"):
                await client.send(sip_request(), second)

    try:
        run(main)
    finally:
        held.close()


def test_connection_refused_raises_transport_error(run: Runner) -> None:
    async def main() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
        probe.close()  # bound but never listening: nothing accepts there
        async with manager(TransportSettings(outbound_ports=None)) as client:
            target = TransportAddress(Transport.TCP, "127.0.0.1", closed_port)
            with pytest.raises(TransportError, match="cannot connect"):
                await client.send(sip_request(), target)
            assert client.connections() == []

    run(main)


# -- keep-alive and idle -----------------------------------------------------------------


def test_crlf_ping_gets_pong_and_request_still_served(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                await peer.write(b"\r\n\r\n")
                peer.framer.awaiting_pong = True
                assert await peer.next_item() is KeepAlive.PONG
                # A ping split across two writes is still one ping.
                await peer.write(b"\r\n")
                await peer.write(b"\r\n")
                peer.framer.awaiting_pong = True
                assert await peer.next_item() is KeepAlive.PONG
                await peer.write(sip_request(call_id="after-ping@127.0.0.1"))
                assert (await expect_request(server)).message.call_id == "after-ping@127.0.0.1"
            finally:
                await peer.close()

    run(main)


async def keepalive_peer(
    answer: bool, pings: asyncio.Queue[bytes]
) -> tuple[asyncio.Server, TransportAddress]:
    """A raw TCP server that records pings and answers them with a pong when told to."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = StreamFramer()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                framer.feed(data)
                while (item := framer.next_message()) is not None:
                    if item is KeepAlive.PING:
                        pings.put_nowait(b"\r\n\r\n")
                        if answer:
                            writer.write(b"\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, TransportAddress(Transport.TCP, "127.0.0.1", port)


def test_keepalive_sender_pings_and_keeps_answered_connection(run: Runner) -> None:
    async def main() -> None:
        pings: asyncio.Queue[bytes] = asyncio.Queue()
        server, address = await keepalive_peer(answer=True, pings=pings)
        closed: asyncio.Queue[ConnectionInfo] = asyncio.Queue()
        settings = TransportSettings(keepalive_interval=0.05, keepalive_timeout=0.5)
        try:
            async with manager(settings, on_connection_closed=closed.put_nowait) as client:
                info = await client.send(sip_request(), address)
                # Several pings answered in turn, with time past the pong timeout.
                for _ in range(3):
                    assert await pings.get() == b"\r\n\r\n"
                stream = client._table.streams[info.id][0]
                assert stream.pongs_received >= 2
                assert client.connection(info.id) is not None and closed.empty()
        finally:
            server.close()

    run(main)


def test_keepalive_without_pong_closes_connection(run: Runner) -> None:
    async def main() -> None:
        pings: asyncio.Queue[bytes] = asyncio.Queue()
        server, address = await keepalive_peer(answer=False, pings=pings)
        closed: asyncio.Queue[ConnectionInfo] = asyncio.Queue()
        settings = TransportSettings(keepalive_interval=0.05, keepalive_timeout=0.2)
        try:
            async with manager(settings, on_connection_closed=closed.put_nowait) as client:
                info = await client.send(sip_request(), address)
                assert await pings.get() == b"\r\n\r\n"
                gone = await closed.get()
                assert gone.id == info.id
                assert client.connection(info.id) is None
        finally:
            server.close()

    run(main)


def test_idle_connection_is_closed(run: Runner) -> None:
    async def main() -> None:
        closed: asyncio.Queue[ConnectionInfo] = asyncio.Queue()
        settings = TransportSettings(idle_timeout=0.2)
        async with manager(settings, on_connection_closed=closed.put_nowait) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                await peer.write(sip_request())
                received = await expect_request(server)
                assert await peer.next_item() is None  # EOF: the server closed it
                assert (await closed.get()).id == received.connection.id
                assert server.connections() == []
            finally:
                await peer.close()

    run(main)


# -- malformed input on streams ----------------------------------------------------------


def test_tcp_malformed_request_gets_400_and_connection_keeps_serving(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                bad = sip_request().replace(b"Max-Forwards: 70", b"Max-Forwards: lots")
                await peer.write(bad)
                response = await peer.response()
                assert response.status == 400
                assert "max-forwards" in response.reason.lower()
                await peer.write(sip_request(call_id="next@127.0.0.1"))
                assert (await expect_request(server)).message.call_id == "next@127.0.0.1"
            finally:
                await peer.close()

    run(main)


def test_tcp_unframeable_stream_gets_400_then_closes_only_that_connection(run: Runner) -> None:
    async def main() -> None:
        closed: asyncio.Queue[ConnectionInfo] = asyncio.Queue()
        async with manager(on_connection_closed=closed.put_nowait) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            bystander = await Peer.connect(listening)
            peer = await Peer.connect(listening)
            try:
                await bystander.write(sip_request(call_id="bystander@127.0.0.1"))
                assert (await expect_request(server)).message.call_id == "bystander@127.0.0.1"
                no_length = sip_request().replace(b"Content-Length: 0\r\n", b"")
                await peer.write(no_length)
                response = await peer.response()
                assert response.status == 400 and "content-length" in response.reason.lower()
                assert await peer.next_item() is None
                await closed.get()
                # The other connection and the listener still serve.
                await bystander.write(sip_request(call_id="still@127.0.0.1"))
                assert (await expect_request(server)).message.call_id == "still@127.0.0.1"
                fresh = await Peer.connect(listening)
                await fresh.write(sip_request(call_id="fresh@127.0.0.1"))
                assert (await expect_request(server)).message.call_id == "fresh@127.0.0.1"
                await fresh.close()
            finally:
                await peer.close()
                await bystander.close()

    run(main)


def test_tcp_oversize_gets_413_and_listener_keeps_serving(run: Runner) -> None:
    async def main() -> None:
        async with manager(TransportSettings(max_message_size=2000)) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                await peer.write(sip_request(body=b"x" * 5000))
                response = await peer.response()
                assert response.status == 413
                # The length was known: the body was passed over, the connection kept.
                await peer.write(sip_request(call_id="same@127.0.0.1", body=b"v=0\r\n"))
                assert (await expect_request(server)).message.call_id == "same@127.0.0.1"
                assert server.counters.oversized == 1
            finally:
                await peer.close()
            fresh = await Peer.connect(listening)
            try:
                await fresh.write(sip_request(call_id="fits@127.0.0.1", body=b"v=0\r\n"))
                assert (await expect_request(server)).message.call_id == "fits@127.0.0.1"
            finally:
                await fresh.close()

    run(main)


def test_handler_exception_does_not_stop_listener(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        seen: asyncio.Queue[ReceivedMessage] = asyncio.Queue()

        def handler(received: ReceivedMessage) -> None:
            seen.put_nowait(received)
            if received.message.call_id == "boom@127.0.0.1":
                raise RuntimeError("handler bug")

        async with manager(on_message=handler) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            peer = await Peer.connect(listening)
            try:
                await peer.write(sip_request(call_id="boom@127.0.0.1"))
                await peer.write(sip_request(call_id="fine@127.0.0.1"))
                assert (await seen.get()).message.call_id == "boom@127.0.0.1"
                assert (await seen.get()).message.call_id == "fine@127.0.0.1"
            finally:
                await peer.close()

    with caplog.at_level(logging.ERROR, logger="sip.transport"):
        run(main)
    assert any("message handler failed" in r.getMessage() for r in caplog.records)


def test_ipv6_loopback_tcp_and_udp(run: Runner) -> None:
    async def main() -> None:
        async with manager() as server, manager(TransportSettings(outbound_ports=None)) as client:
            for transport in (Transport.UDP, Transport.TCP):
                listening = await server.listen(transport, "::1", 0)
                assert listening.host == "::1"
                sent = await client.send(
                    sip_request(transport=transport.value, call_id=f"v6-{transport.value}"),
                    listening,
                )
                received = await expect_request(server)
                assert received.message.call_id == f"v6-{transport.value}"
                assert received.source.host == "::1"
                assert received.source.port == sent.local.port

    run(main)
