"""SipStack's observer sees every message sent and received, as the bytes on the wire."""

from __future__ import annotations

import asyncio

from sip.message import Request, Response, parse_message
from sip.transport import Transport, TransportAddress
from tests.sip.test_stack import options, ua_pair


async def test_observer_sees_both_directions_with_wire_bytes() -> None:
    a, b, hop = await ua_pair(Transport.TCP)
    seen: list[tuple[bool, str, TransportAddress, TransportAddress, bytes]] = []

    def observer(
        sent: bool,
        message: Request | Response,
        local: TransportAddress,
        remote: TransportAddress,
        data: bytes,
    ) -> None:
        label = message.method if isinstance(message, Request) else str(message.status)
        seen.append((sent, label, local, remote, data))

    def broken(*_: object) -> None:
        raise RuntimeError("an observer bug must not cost the call")

    a.stack.observer = observer
    b.stack.observer = broken
    try:
        async with asyncio.timeout(5):
            response = await a.stack.send_request(options(a, hop), hop)
        assert response.status == 200
    finally:
        await a.stack.close()
        await b.stack.close()
    assert [(sent, label) for sent, label, *_ in seen] == [(True, "OPTIONS"), (False, "200")]
    request_seen, response_seen = seen
    assert request_seen[3] == TransportAddress(Transport.TCP, hop.host, hop.port)
    assert request_seen[2].transport is Transport.TCP and request_seen[2].host == "127.0.0.1"
    assert response_seen[3].port == hop.port  # it came back on the same connection
    sent_request = parse_message(request_seen[4])
    assert isinstance(sent_request, Request) and sent_request.method == "OPTIONS"
    assert isinstance(parse_message(response_seen[4]), Response)
