"""RFC 3261 §18.2.1 / RFC 3581: the server transport stamps received/rport on the top Via."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sip.errors import ParseError
from sip.message import Request, parse_message
from sip.transport import ReceivedMessage, Transport, TransportManager, stamp_received

INVITE = (
    "OPTIONS sip:3001@video.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {sent_by};branch=z9hG4bK776asdhds{rport}, "
    "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:3001@video.example.com>\r\n"
    "From: <sip:alice@example.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


def request(sent_by: str, rport: str = "") -> Request:
    message = parse_message(INVITE.format(sent_by=sent_by, rport=rport).encode())
    assert isinstance(message, Request)
    return message


def test_received_added_when_sent_by_differs() -> None:
    req = request("pc33.example.com:5060")
    stamp_received(req, "127.0.0.7", 40000)
    assert req.top_via.received == "127.0.0.7"
    assert req.top_via.rport is None and not req.top_via.has_rport
    # the second Via (same header line, comma list) is kept, in order
    assert [v.host for v in req.via] == ["pc33.example.com", "10.0.0.9"]
    assert parse_message(req.encode()).top_via.received == "127.0.0.7"


def test_nothing_added_when_sent_by_matches() -> None:
    req = request("127.0.0.7:5060")
    before = req.encode()
    stamp_received(req, "127.0.0.7", 5060)
    assert req.encode() == before


def test_rport_filled_and_received_always_with_it() -> None:
    req = request("127.0.0.7:5060", rport=";rport")
    stamp_received(req, "127.0.0.7", 40001)
    assert req.top_via.rport == 40001
    assert req.top_via.received == "127.0.0.7"


def test_bad_top_via_is_a_parse_error() -> None:
    req = request("pc33.example.com")
    req.headers.set("Via", "SIP/2.0/UDP")
    with pytest.raises(ParseError):
        stamp_received(req, "127.0.0.7", 1)


async def test_udp_listener_stamps_the_request_it_delivers() -> None:
    got: asyncio.Future[ReceivedMessage] = asyncio.get_running_loop().create_future()
    async with TransportManager(on_message=lambda m: got.done() or got.set_result(m)) as manager:
        bound = await manager.listen(Transport.UDP, "127.0.0.1", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.sendto(
                INVITE.format(sent_by="client.invalid:5060", rport=";rport").encode(),
                (bound.host, bound.port),
            )
            received = await asyncio.wait_for(got, 5)
    assert isinstance(received.message, Request)
    assert received.message.top_via.received == "127.0.0.1"
    assert received.message.top_via.rport == port


def test_source_host_follows_a_concrete_listen_address() -> None:
    from sip.transport import source_host_of

    assert source_host_of("127.0.2.1") == "127.0.2.1"
    assert source_host_of("[::1]") == "::1"
    assert source_host_of("0.0.0.0") is None
    assert source_host_of("::") is None
    assert source_host_of("fe.example.com") is None
