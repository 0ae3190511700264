"""Transport limits against hostile or careless peers (issue 12, defect 4), over real
sockets on loopback, on the asyncio loop and on uvloop: a slowloris peer is closed by the
message deadline, the connection caps close the oldest idle connection (one that never
carried a message first) or refuse, and a peer that never reads is closed once the bytes
queued for it pass the cap. After each probe a normal request is still served and no
task is left behind."""

from __future__ import annotations

import asyncio
import resource
import socket

import pytest

from certs.pki import LabPKI
from sip.message import Request, make_response
from sip.transport import (
    Transport,
    TransportAddress,
    TransportError,
    TransportManager,
    TransportSettings,
)
from tests.sip.test_transport import (  # noqa: F401  (the two-loop fixture)
    Peer,
    Runner,
    expect_request,
    run,
    sip_request,
)

WAIT = 5.0


async def assert_still_served(server: TransportManager, listening: TransportAddress) -> None:
    """A fresh connection's OPTIONS reaches the server and its answer comes back."""
    peer = await Peer.connect(listening)
    try:
        await peer.write(sip_request(call_id="after@127.0.0.1"))
        received = await asyncio.wait_for(expect_request(server), WAIT)
        assert isinstance(received.message, Request)
        assert received.message.call_id == "after@127.0.0.1"
        await server.send(
            make_response(received.message, 200),
            received.source,
            connection_id=received.connection.id,
        )
        response = await asyncio.wait_for(peer.response(), WAIT)
        assert response.status == 200
    finally:
        await peer.close()


async def wait_closed_by_server(peer: Peer) -> None:
    """The server closes the connection (EOF or reset), sending nothing."""
    try:
        data = await asyncio.wait_for(peer.reader.read(65536), WAIT)
    except ConnectionResetError:
        return
    assert data == b"", f"expected the server to close, got {data[:80]!r}"


def own_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def test_slowloris_is_closed_by_the_message_deadline(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        # The idle timeout is long: only the deadline can close the trickling peer, and
        # each byte it sends must not postpone it.
        settings = TransportSettings(outbound_ports=None, idle_timeout=60.0, message_timeout=0.6)
        async with TransportManager(settings) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            tasks = own_tasks()
            slow = await Peer.connect(listening)
            keeper = await Peer.connect(listening)  # RFC 5626 pings: whole items, kept
            loop = asyncio.get_running_loop()
            started = loop.time()
            data = sip_request(call_id="slow@127.0.0.1")
            sent = 0
            try:
                while sent < len(data):
                    try:
                        await slow.write(data[sent : sent + 1])
                    except ConnectionError:
                        break
                    sent += 1
                    keeper.framer.awaiting_pong = True
                    await keeper.write(b"\r\n\r\n")
                    await asyncio.wait_for(keeper.next_item(), WAIT)  # the pong
                    if server.counters.message_deadline:
                        break
                    await asyncio.sleep(0.1)  # the peer's pace: one byte per 100 ms
                    if loop.time() - started > WAIT:
                        break
                await wait_closed_by_server(slow)
                elapsed = loop.time() - started
                assert 0.5 <= elapsed < 2.0, elapsed
                assert sent < len(data)
                assert server.counters.message_deadline == 1
                assert server._queue.empty()
                # The keep-alive peer is still connected and served.
                await keeper.write(sip_request(call_id="keeper@127.0.0.1"))
                received = await asyncio.wait_for(expect_request(server), WAIT)
                assert received.message.call_id == "keeper@127.0.0.1"
            finally:
                await slow.close()
                await keeper.close()
            await assert_still_served(server, listening)
            assert own_tasks() <= tasks

    run(main)


def test_per_source_cap_closes_the_oldest_silent_connection_first(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        settings = TransportSettings(
            outbound_ports=None, max_connections=64, max_connections_per_source=4
        )
        async with TransportManager(settings) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            tasks = own_tasks()
            proven = await Peer.connect(listening)  # the oldest, but it carried a message
            await proven.write(sip_request(call_id="proven@127.0.0.1"))
            await asyncio.wait_for(expect_request(server), WAIT)
            storm = [await Peer.connect(listening) for _ in range(12)]
            try:
                # 13 connections, 4 allowed: the 9 oldest silent ones were closed in turn.
                for peer in storm[:9]:
                    await wait_closed_by_server(peer)
                await asyncio.sleep(0)
                assert server.counters.evicted == 9 and server.counters.refused == 0
                assert len(server.connections()) == 4
                await proven.write(sip_request(call_id="proven-2@127.0.0.1"))
                received = await asyncio.wait_for(expect_request(server), WAIT)
                assert received.message.call_id == "proven-2@127.0.0.1"
                # The newest silent ones are still open.
                for peer in storm[9:]:
                    assert not peer.reader.at_eof()
            finally:
                for peer in [proven, *storm]:
                    await peer.close()
            await assert_still_served(server, listening)
            assert own_tasks() <= tasks

    run(main)


def test_total_cap_refuses_when_nothing_inbound_can_be_closed(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with TransportManager(TransportSettings(outbound_ports=None)) as far:
            far_address = await far.listen(Transport.TCP, "127.0.0.1", 0)
            settings = TransportSettings(outbound_ports=None, max_connections=2)
            async with TransportManager(settings) as server:
                listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
                # Two outbound connections (to two listeners) fill the cap; they are ours,
                # never closed for an inbound one.
                other = await far.listen(Transport.TCP, "127.0.0.2", 0)
                for target, n in ((far_address, 1), (other, 2)):
                    await server.send(sip_request(call_id=f"out{n}@127.0.0.1"), target)
                    await asyncio.wait_for(expect_request(far), WAIT)
                assert server.stream_count == 2
                refused = await Peer.connect(listening)
                try:
                    await wait_closed_by_server(refused)
                finally:
                    await refused.close()
                assert server.counters.refused == 1 and server.counters.evicted == 0
                assert server.stream_count == 2
                # A slot freed, the next one is served.
                for info in server.connections():
                    server.close_connection(info.id)
                for _ in range(100):
                    if server.stream_count == 0:
                        break
                    await asyncio.sleep(0.01)
                await assert_still_served(server, listening)

    run(main)


def test_a_peer_that_never_reads_is_closed_at_the_unsent_cap(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        cap = 256 * 1024
        settings = TransportSettings(outbound_ports=None, max_unsent_bytes=cap)
        async with TransportManager(settings) as server:
            listening = await server.listen(Transport.TCP, "127.0.0.1", 0)
            tasks = own_tasks()
            # A client whose receive buffer is small and that never reads.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (listening.host, listening.port))
            try:
                sock.send(sip_request(call_id="deaf@127.0.0.1"))
                received = await asyncio.wait_for(expect_request(server), WAIT)
                assert isinstance(received.message, Request)
                big = make_response(received.message, 200)
                big.headers.add("X-Pad", "p" * 60000)
                data = big.encode()
                before = _rss_kb()
                sent = 0
                with_error = False
                for _ in range(2000):  # up to 120 MB if nothing stopped it
                    try:
                        await server.send(
                            data, received.source, connection_id=received.connection.id
                        )
                    except TransportError:
                        with_error = True
                        break
                    sent += len(data)
                    if server.counters.slow_reader:
                        break
                    await asyncio.sleep(0)
                assert server.counters.slow_reader == 1, (sent, with_error)
                assert sent < 8 * 1024 * 1024, sent  # stopped near the cap, not at 120 MB
                assert _rss_kb() - before < 20 * 1024
                for _ in range(100):
                    if not server.connections():
                        break
                    await asyncio.sleep(0.01)
                assert server.connections() == []
            finally:
                sock.close()
            await assert_still_served(server, listening)
            assert own_tasks() <= tasks

    run(main)


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_an_oversized_final_response_fails_its_transaction_at_once(run: Runner) -> None:  # noqa: F811
    # RFC 3261 §18.3: a response over the limit cannot be answered; its length is known,
    # so the body is passed over and the connection kept; its client transaction fails
    # at once as a transport error (a proxy answers upstream; no ACK for an unread 2xx).
    from sip.framing import StreamFramer
    from sip.message import parse_message
    from sip.stack import Hop, SipStack, SipTimeoutError
    from tests.sip.helpers import make_request

    async def main() -> None:
        framer = StreamFramer()
        answered: list[str] = []

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                framer.feed(data)
                while (item := framer.next_message()) is not None:
                    if not isinstance(item, bytes):
                        continue
                    request = parse_message(item)
                    assert isinstance(request, Request)
                    answered.append(request.method)
                    response = make_response(request, 200, to_tag="callee")
                    if request.method == "INVITE":
                        response = make_response(
                            request,
                            200,
                            to_tag="callee",
                            body=b"v=0\r\n" + b"m=audio 9 RTP/AVP 0\r\n" * 4000,
                            content_type="application/sdp",
                        )
                    writer.write(response.encode())

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        hop = Hop(Transport.TCP, "127.0.0.1", port)
        try:
            async with SipStack(transport_settings=TransportSettings(outbound_ports=None)) as ua:
                tasks = own_tasks()
                invite = make_request("INVITE", transport="TCP", via_port=5060)
                with pytest.raises(SipTimeoutError) as failed:
                    await asyncio.wait_for(ua.send_request(invite, hop), WAIT)
                assert failed.value.transport_error
                assert failed.value.reason is not None and "over the limit" in failed.value.reason
                assert ua.transports.counters.oversized == 1
                # The same connection carries the next request.
                (connection,) = ua.transports.connections()
                options = make_request("OPTIONS", transport="TCP", call_id="next@127.0.0.1")
                response = await asyncio.wait_for(ua.send_request(options, hop), WAIT)
                assert response.status == 200
                assert [c.id for c in ua.transports.connections()] == [connection.id]
                assert answered == ["INVITE", "OPTIONS"]  # no ACK for the unread 2xx
                ours = {t for t in own_tasks() if ".peer" not in repr(t.get_coro())}
                assert ours <= tasks
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_tls_handshakes_count_toward_the_cap_and_the_oldest_is_dropped(
    run: Runner,  # noqa: F811
    pki: LabPKI,
) -> None:
    # Connections that never send a ClientHello hold a slot only until a newer connection
    # needs it (before their handshake timeout): the oldest handshake is dropped first.
    async def main() -> None:
        settings = TransportSettings(
            outbound_ports=None, max_connections_per_source=3, tls_handshake_timeout=30.0
        )
        async with TransportManager(settings) as server:
            context = pki.server_context("endpoint", require_client_cert=True)
            listening = await server.listen(Transport.TLS, "127.0.0.1", 0, ssl=context)
            silent = [await Peer.connect(listening) for _ in range(6)]
            try:
                for peer in silent[:3]:
                    await wait_closed_by_server(peer)
                assert server.counters.evicted == 3 and server.stream_count == 3
                # A real client still gets in (taking the slot of the oldest silent one).
                client = await Peer.connect(
                    listening,
                    ssl=pki.client_context("gateway"),
                    server_hostname="endpoint.video.example.com",
                )
                try:
                    await client.write(sip_request(call_id="tls@127.0.0.1"))
                    received = await asyncio.wait_for(expect_request(server), WAIT)
                    assert received.message.call_id == "tls@127.0.0.1"
                    await wait_closed_by_server(silent[3])
                finally:
                    await client.close()
            finally:
                for peer in silent:
                    await peer.close()

    run(main)
