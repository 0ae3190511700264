"""What the status page says when a neighbor zone's OPTIONS probe fails."""

from __future__ import annotations

import asyncio
import socket

from gateway.zone_monitor import _probe_failure
from sip.message import Request, parse_message
from sip.stack import Hop, SipStack, SipTimeoutError
from sip.timers import TimerSettings
from sip.transport import Transport, TransportAddress, TransportSettings
from sip.uri import URI
from sip.useragent import UserAgent

REQUEST = parse_message(
    b"OPTIONS sip:127.0.3.1:5061 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.2.1;branch=z9hG4bKx\r\n"
    b"From: <sip:gateway@video.example.com>;tag=1\r\nTo: <sip:127.0.3.1>\r\n"
    b"Call-ID: z\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
assert isinstance(REQUEST, Request)
TLS_PEER = TransportAddress(Transport.TLS, "127.0.3.1", 5061)


def test_timeout_refused_tls_and_other_reasons() -> None:
    assert _probe_failure(TLS_PEER, SipTimeoutError("x", REQUEST)) == (
        "No response from 127.0.3.1:5061 (timeout)"
    )
    refused = SipTimeoutError(
        "x", REQUEST, transport_error=True, reason="cannot connect to x: Connection refused"
    )
    assert _probe_failure(TLS_PEER, refused) == "Connection refused by 127.0.3.1:5061"
    tls = SipTimeoutError(
        "x",
        REQUEST,
        transport_error=True,
        reason="cannot connect to TLS:127.0.3.1:5061: certificate verify failed: Hostname mismatch",
    )
    assert _probe_failure(TLS_PEER, tls) == (
        "TLS negotiation failure: certificate verify failed: Hostname mismatch"
    )
    other = SipTimeoutError("x", REQUEST, transport_error=True, reason="No route to host")
    assert _probe_failure(TLS_PEER, other) == "No route to host"


async def test_a_real_refused_connection_reads_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    timers = TimerSettings(t1=0.02, t2=0.08, t4=0.1, timer_d=0.1)
    stack = SipStack(timers=timers, transport_settings=TransportSettings(outbound_ports=None))
    try:
        await stack.listen(Transport.TCP, "127.0.0.1")
        agent = UserAgent(stack, user="gateway", domain="video.example.com")
        hop = Hop(Transport.TCP, "127.0.0.1", port)
        request = agent.new_request("OPTIONS", URI("sip", host="127.0.0.1", port=port), hop)
        async with asyncio.timeout(5):
            try:
                await stack.send_request(request, hop)
            except SipTimeoutError as error:
                caught = error
    finally:
        await stack.close()
    peer = TransportAddress(Transport.TCP, "127.0.0.1", port)
    assert _probe_failure(peer, caught) == f"Connection refused by 127.0.0.1:{port}"
