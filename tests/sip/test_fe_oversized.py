"""The lab FE's SIP stack after an oversized message (issue 12, defect 5): alice calls a
video user; the far side of the FE's trunk (standing where the gateway is, with the
gateway's certificate) answers with a 2,500 m-line SDP (over 64 KB). The FE passes it
over, keeps every connection, refuses alice's call at once (480 from its failed
transaction, no Timer B wait), and alice is still reachable through the FE afterwards; an
oversized request on the trunk gets 413 and the trunk connection keeps working. The same
after a connection storm on the FE's listener.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from certs.pki import LabPKI
from lab.lync.client import CallRefused
from lab.lync.config import FrontEndConfig, StaticRoute
from lab.lync.topology import MicrosoftSide
from sip.message import Request, make_response
from sip.stack import Hop, SipStack, StackHandlers
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportAddress, TransportSettings
from sip.uri import URI
from tests.sip.helpers import make_request

TRUNK_HOST = "127.0.2.1"  # an address in the gateway certificate
TRUNK_NAME = "lyncexp.video.example.com"
M_LINES = 2500
STORM = 600


def huge_answer() -> bytes:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.2.1", "s=-", "c=IN IP4 127.0.2.1", "t=0 0"]
    for index in range(M_LINES):
        lines += [f"m=audio {20000 + 2 * index} RTP/AVP 0", "a=rtpmap:0 PCMU/8000"]
    body = ("\r\n".join(lines) + "\r\n").encode()
    assert len(body) > 65536
    return body


@pytest.fixture
async def trunk(pki: LabPKI) -> AsyncIterator[tuple[SipStack, TransportAddress]]:
    """The far end of the FE's static route: answers every INVITE with a huge 200."""
    stack = SipStack(
        transport_settings=TransportSettings(outbound_ports=None, source_host=TRUNK_HOST),
        tls_client=pki.client_context("gateway"),
    )

    def on_request(transaction: ServerTransaction, request: Request) -> None:
        if request.method == "INVITE":
            response = make_response(
                request, 200, to_tag="far", body=huge_answer(), content_type="application/sdp"
            )
            response.headers.add("Contact", f"<sip:far@{TRUNK_HOST};transport=tls>")
            stack.send_response(transaction, response)
        else:
            stack.respond(transaction, 200)

    stack.handlers = StackHandlers(on_request=on_request)
    address = await stack.listen(
        Transport.TLS, TRUNK_HOST, 0, ssl=pki.server_context("gateway", require_client_cert=True)
    )
    try:
        yield stack, address
    finally:
        await stack.close()


async def test_fe_refuses_an_oversized_answer_and_alice_stays_reachable(
    pki: LabPKI, trunk: tuple[SipStack, TransportAddress]
) -> None:
    far, address = trunk
    route = StaticRoute("video.example.com", address, tls_name=TRUNK_NAME)
    fe_config = replace(FrontEndConfig(), static_routes=(route,))
    async with MicrosoftSide.run(pki, fe=fe_config, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        fe_transports = side.fe.stack.transports
        before = {info.id for info in fe_transports.connections()}
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = await alice.call("3001@video.example.com")
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected(timeout=10)
        assert refused.value.status == 480, refused.value
        assert loop.time() - started < 5  # the FE did not wait for Timer B (32 s)
        assert fe_transports.counters.oversized >= 1
        # alice's connection (and the FE's listener) survived: she is still reachable.
        assert before <= {info.id for info in fe_transports.connections()}
        david = await side.client("david", video=False)  # no Edge: registers to the FE
        to_alice = await david.call("alice.parkes@example.com")
        incoming = await asyncio.wait_for(alice.incoming_calls.get(), 10)
        await to_alice.wait_connected()
        assert incoming is not None
        await to_alice.hangup()

        # An oversized request from the trunk: 413 on the same connection, which then
        # carries the next request.
        trunk_connection = far.transports.connections()[0]
        hop = Hop(
            Transport.TLS,
            trunk_connection.remote.host,
            trunk_connection.remote.port,
            connection_id=trunk_connection.id,
            server_hostname="fe.example.com",
        )
        big = make_request(
            "MESSAGE",
            uri="sip:alice.parkes@example.com",
            transport="TLS",
            via_host=TRUNK_HOST,
            call_id="big@127.0.2.1",
            extra=(("Content-Type", "text/plain"),),
        )
        big.body = b"x" * 70000
        response = await asyncio.wait_for(far.send_request(big, hop), 10)
        assert response.status == 413, response
        options = make_request(
            "OPTIONS",
            uri="sip:fe.example.com",
            transport="TLS",
            via_host=TRUNK_HOST,
            call_id="after@127.0.2.1",
        )
        options.uri = URI.parse(f"sip:{side.fe.listener.host}:{side.fe.listener.port}")
        response = await asyncio.wait_for(far.send_request(options, hop), 10)
        assert response.status != 413
        assert [c.id for c in far.transports.connections()] == [trunk_connection.id]


async def test_alice_stays_reachable_through_a_connection_storm_on_the_fe(pki: LabPKI) -> None:
    # 600 connections to the FE's TLS listener from one address that never send a
    # ClientHello: past 512 (the per-source default) the oldest of them are dropped; alice
    # (another address, a proven connection) keeps hers and is called through the FE.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < STORM + 300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, STORM + 600), hard))
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        david = await side.client("david", video=False)
        listener = side.fe.listener
        fe_transports = side.fe.stack.transports
        before = {info.id for info in fe_transports.connections()}
        storm: list[socket.socket] = []
        loop = asyncio.get_running_loop()
        try:
            for _ in range(STORM):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                await loop.sock_connect(sock, (listener.host, listener.port))
                storm.append(sock)
            async with asyncio.timeout(10):
                while fe_transports.counters.evicted < STORM - 512:
                    await asyncio.sleep(0.05)
            assert fe_transports.stream_count <= 512 + len(before)
            assert before <= {info.id for info in fe_transports.connections()}
            to_alice = await david.call("alice.parkes@example.com")
            await asyncio.wait_for(alice.incoming_calls.get(), 10)
            await to_alice.wait_connected()
            await to_alice.hangup()
        finally:
            for sock in storm:
                sock.close()
