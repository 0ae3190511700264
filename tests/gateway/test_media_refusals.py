"""Issue 12: the gateway forwarded an offer with thousands of m= lines. An INVITE from the
trusted FE (mutual TLS) whose SDP has more m= lines than the gateway relays is refused with
488 and a reason, counted in /metrics under its reason, and leaves no call and no port."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from certs.pki import LabPKI
from gateway.sdp_bridge import MAX_MEDIA_LINES
from sip.message import new_branch, new_tag
from tests.gateway.conftest import (
    TRUSTED_SOURCE,
    RunningGateway,
    require_peers,
    run_gateway,
    tls_exchange,
)

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    with run_gateway(pki, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def invite_with_media_lines(count: int, to: str = "3001@video.example.com") -> bytes:
    source = TRUSTED_SOURCE
    lines = ["v=0", f"o=- 1 1 IN IP4 {source}", "s=session", f"c=IN IP4 {source}", "t=0 0"]
    for index in range(count):
        lines += [f"m=audio {20000 + 2 * index} RTP/SAVP 0", "a=rtpmap:0 PCMU/8000",
                  "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx"]
    body = ("\r\n".join(lines) + "\r\n").encode()
    head = [
        f"INVITE sip:{to};transport=tls SIP/2.0",
        f"Via: SIP/2.0/TLS {source}:5061;branch={new_branch()}",
        "Max-Forwards: 70",
        f"From: <sip:alice.parkes@example.com>;tag={new_tag()}",
        f"To: <sip:{to}>",
        f"Call-ID: {new_tag()}@{source}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:alice.parkes@{source}:5061;transport=tls>",
        "Content-Type: application/sdp",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def refused(gateway: RunningGateway, reason: str) -> float:
    text = gateway.metrics()
    match = re.search(rf'^gateway_calls_refused_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    assert match is not None, text
    return float(match[1])


@pytest.mark.parametrize("count", [MAX_MEDIA_LINES + 1, 400])
async def test_an_offer_with_too_many_m_lines_gets_488_and_is_counted(
    gateway: RunningGateway, pki: LabPKI, count: int
) -> None:
    before = refused(gateway, "too_many_media_lines")
    responses = await tls_exchange(pki, gateway.microsoft, invite_with_media_lines(count))
    final = responses[-1]
    assert final.status == 488, gateway.log()
    assert f"{count} m= lines" in final.reason and str(MAX_MEDIA_LINES) in final.reason
    assert refused(gateway, "too_many_media_lines") == before + 1
    status = gateway.status()
    assert not status["calls"] and status["port_pool"]["in_use"] == 0
    assert status["port_pool"]["bound"] == 0
