"""SipStack / UserAgent over real loopback sockets: request/response on UDP, TCP and TLS,
retransmission by the one timer, Timer F and transport failures surfacing as
SipTimeoutError, 481/483/420 from the UA core, and a stack that survives bad input."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from certs.pki import LabPKI
from sip.message import Request, make_response, new_branch, parse_message
from sip.stack import Hop, SipStack, SipTimeoutError, StackHandlers
from sip.timers import TimerSettings
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI
from sip.useragent import UserAgent

HOST = "127.0.0.1"
FAST = TimerSettings(t1=0.02, t2=0.08, t4=0.1, timer_d=0.1)
NO_RANGE = TransportSettings(outbound_ports=None)


def options(stack_ua: UserAgent, target: Hop, **headers: str) -> Request:
    request = stack_ua.new_request("OPTIONS", URI("sip", user="b", host=target.host), target)
    for name, value in headers.items():
        request.headers.set(name.replace("_", "-"), value)
    return request


async def ua_pair(
    transport: Transport, pki: LabPKI | None = None, timers: TimerSettings = FAST
) -> tuple[UserAgent, UserAgent, Hop]:
    client = SipStack(
        timers=timers,
        transport_settings=NO_RANGE,
        tls_client=pki.client_context("gateway") if pki else None,
    )
    server = SipStack(timers=timers, transport_settings=NO_RANGE)
    context = pki.server_context("endpoint", require_client_cert=False) if pki else None
    await client.listen(transport, HOST, 0, ssl=context)
    bound = await server.listen(transport, HOST, 0, ssl=context)
    a = UserAgent(client, user="a", domain="example.com")
    b = UserAgent(server, user="b", domain="example.com")
    return (
        a,
        b,
        Hop(transport, bound.host, bound.port, server_hostname="endpoint.video.example.com"),
    )


@pytest.fixture
async def udp_pair() -> AsyncIterator[tuple[UserAgent, UserAgent, Hop]]:
    a, b, hop = await ua_pair(Transport.UDP)
    yield a, b, hop
    await a.stack.close()
    await b.stack.close()


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP, Transport.TLS])
async def test_options_round_trip(transport: Transport, pki: LabPKI) -> None:
    a, b, hop = await ua_pair(transport, pki if transport is Transport.TLS else None)
    try:
        async with asyncio.timeout(5):
            response = await a.stack.send_request(options(a, hop), hop)
        assert response.status == 200
        assert "INVITE" in (response.headers.get("Allow") or "")
        assert response.headers.get("Accept") == "application/sdp"
    finally:
        await a.stack.close()
        await b.stack.close()


async def test_provisionals_go_to_the_callback_and_async_handlers_answer() -> None:
    seen: list[int] = []

    async def answer(tx: ServerTransaction, request: Request) -> None:
        server.send_response(tx, make_response(request, 180, to_tag="t1"))
        await asyncio.sleep(0)
        server.send_response(tx, make_response(request, 486, to_tag="t1"))

    client = SipStack(timers=FAST, transport_settings=NO_RANGE)
    server = SipStack(StackHandlers(on_request=answer), timers=FAST, transport_settings=NO_RANGE)
    try:
        await client.listen(Transport.UDP, HOST)
        bound = await server.listen(Transport.UDP, HOST)
        hop = Hop.of(bound)
        ua = UserAgent(client, user="a", domain="example.com")
        invite = ua.new_request("INVITE", URI("sip", user="b", host=HOST, port=bound.port), hop)
        async with asyncio.timeout(5):
            final = await client.send_request(
                invite, hop, on_provisional=lambda r: seen.append(r.status)
            )
        assert seen == [180]
        assert final.status == 486
    finally:
        await client.close()
        await server.close()


async def raw_udp() -> tuple[
    asyncio.DatagramTransport, asyncio.Queue[tuple[bytes, tuple[str, int]]]
]:
    queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            queue.put_nowait((data, addr))

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Sink, local_addr=(HOST, 0)
    )
    return transport, queue


@asynccontextmanager
async def ua_toward_raw_udp() -> AsyncIterator[
    tuple[asyncio.DatagramTransport, asyncio.Queue[tuple[bytes, tuple[str, int]]], SipStack,
          UserAgent, Hop]
]:
    """A UA on a FAST-timer UDP stack and the hop of a raw UDP sink that answers nothing
    unless the test makes it."""
    sink, queue = await raw_udp()
    port = sink.get_extra_info("sockname")[1]
    stack = SipStack(timers=FAST, transport_settings=NO_RANGE)
    try:
        await stack.listen(Transport.UDP, HOST)
        ua = UserAgent(stack, user="a", domain="example.com")
        yield sink, queue, stack, ua, Hop(Transport.UDP, HOST, port)
    finally:
        sink.close()
        await stack.close()


async def test_timer_retransmits_then_late_answer_is_taken() -> None:
    """The one timer drives Timer E: the request is resent until the peer answers."""
    async with ua_toward_raw_udp() as (sink, queue, stack, ua, hop):
        pending = stack.start_request(options(ua, hop), hop)
        async with asyncio.timeout(5):
            first, source = await queue.get()
            second, _ = await queue.get()  # Timer E fired: same request again
        assert first == second
        sink.sendto(make_response(parse_message(first), 200).encode(), source)  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            response = await pending.final
        assert response.status == 200


async def test_unanswered_request_raises_timeout() -> None:
    async with ua_toward_raw_udp() as (_, queue, stack, ua, hop):
        async with asyncio.timeout(5):  # Timer F = 64 * 20 ms
            with pytest.raises(SipTimeoutError, match="Timer B/F") as caught:
                await stack.send_request(options(ua, hop), hop)
        assert not caught.value.transport_error
        assert caught.value.request.method == "OPTIONS"
        assert queue.qsize() >= 3  # retransmitted on the way
        assert stack.layer.get_timer() is None or stack.layer.transactions == []


async def test_connection_refused_raises_transport_timeout() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    stack = SipStack(timers=FAST, transport_settings=NO_RANGE)
    try:
        await stack.listen(Transport.TCP, HOST)
        ua = UserAgent(stack, user="a", domain="example.com")
        hop = Hop(Transport.TCP, HOST, port)
        async with asyncio.timeout(5):
            with pytest.raises(SipTimeoutError) as caught:
                await stack.send_request(options(ua, hop), hop)
        assert caught.value.transport_error
        assert caught.value.reason is not None and "refused" in caught.value.reason.lower()
        assert caught.value.reason in str(caught.value)
    finally:
        await stack.close()


async def test_request_in_unknown_dialog_gets_481(
    udp_pair: tuple[UserAgent, UserAgent, Hop],
) -> None:
    a, _, hop = udp_pair
    bye = a.new_request("BYE", URI("sip", user="b", host=HOST), hop)
    bye.headers.set("To", "<sip:b@example.com>;tag=nosuchdialog")
    async with asyncio.timeout(5):
        response = await a.stack.send_request(bye, hop)
    assert response.status == 481


async def test_max_forwards_zero_gets_483(udp_pair: tuple[UserAgent, UserAgent, Hop]) -> None:
    a, _, hop = udp_pair
    async with asyncio.timeout(5):
        response = await a.stack.send_request(options(a, hop, Max_Forwards="0"), hop)
    assert response.status == 483


async def test_unsupported_require_gets_420(udp_pair: tuple[UserAgent, UserAgent, Hop]) -> None:
    a, _, hop = udp_pair
    async with asyncio.timeout(5):
        response = await a.stack.send_request(options(a, hop, Require="100rel, foo"), hop)
    assert response.status == 420
    assert response.headers.get("Unsupported") == "100rel, foo"


async def test_unknown_method_gets_501(udp_pair: tuple[UserAgent, UserAgent, Hop]) -> None:
    a, _, hop = udp_pair
    request = a.new_request("PUBLISH", URI("sip", user="b", host=HOST), hop)
    async with asyncio.timeout(5):
        response = await a.stack.send_request(request, hop)
    assert response.status == 501
    assert "OPTIONS" in (response.headers.get("Allow") or "")


async def test_failing_handler_answers_500_and_keeps_serving() -> None:
    calls = 0

    def handler(tx: ServerTransaction, request: Request) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("TU bug")
        server.send_response(tx, make_response(request, 200))

    client = SipStack(timers=FAST, transport_settings=NO_RANGE)
    server = SipStack(StackHandlers(on_request=handler), timers=FAST, transport_settings=NO_RANGE)
    try:
        await client.listen(Transport.UDP, HOST)
        hop = Hop.of(await server.listen(Transport.UDP, HOST))
        ua = UserAgent(client, user="a", domain="example.com")
        async with asyncio.timeout(5):
            first = await client.send_request(options(ua, hop), hop)
            second = await client.send_request(options(ua, hop), hop)
        assert (first.status, second.status) == (500, 200)
    finally:
        await client.close()
        await server.close()


async def test_malformed_requests_never_stop_the_stack(
    udp_pair: tuple[UserAgent, UserAgent, Hop],
) -> None:
    a, _, hop = udp_pair
    sink, queue = await raw_udp()
    try:
        # Broken requests are answered 400 (by the transport or the stack), never fatal.
        garbage = (
            b"INVITE sip:b@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\n\r\n"
        )
        sink.sendto(garbage, (hop.host, hop.port))
        mismatch = options(a, hop)
        mismatch.headers.set("CSeq", "1 INVITE")
        mismatch.headers.set(
            "Via", f"SIP/2.0/UDP {HOST}:{sink.get_extra_info('sockname')[1]};branch={new_branch()}"
        )
        sink.sendto(mismatch.encode(), (hop.host, hop.port))
        sink.sendto(b"\x00\xff garbage \r\n\r\n", (hop.host, hop.port))
        statuses = []
        async with asyncio.timeout(5):
            for _ in range(2):
                data, _ = await queue.get()
                statuses.append(data.split(b" ", 2)[1])
            assert statuses == [b"400", b"400"]
            response = await a.stack.send_request(options(a, hop), hop)
        assert response.status == 200
    finally:
        sink.close()
