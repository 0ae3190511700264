"""Acceptance: what `gateway run` refuses, what its broker forwards, and how its zone status
follows a neighbor (issue 5, "Tests that must pass").

- An INVITE over mutual TLS from an address that is not a trusted host -> 403 with a reason.
- No search rule matches -> 404.
- max_calls=2 (``--set b2bua.max_calls=2``) with two SIPp calls held up: the third INVITE
  -> 503 with Retry-After and a reason, and the two held calls still complete.
- A MESSAGE from the trusted FE reaches the IM&P stand-in (a SipStack over mutual TLS with
  the "imp" certificate) and its 200 comes back.
- A monitored zone whose peer (a SipStack answering OPTIONS) goes away turns from Active to
  a failure on /status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.pki import LabPKI
from sip.message import Request, make_response, new_branch, new_tag
from sip.stack import SipStack, StackHandlers
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from tests.gateway.conftest import (
    IMP_HOST,
    MONITORED_HOST,
    TRUSTED_SOURCE,
    UNTRUSTED_SOURCE,
    RunningGateway,
    Scenario,
    counters,
    cucm_behind_fe_tunnel,
    require_peers,
    run_gateway,
    start_scenario,
    tls_exchange,
)

pytestmark = pytest.mark.peer

SDP_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sdp" / "lync2013_av_offer.mime"
ZONE = "Monitored Neighbor"
STATUS_WAIT = 15.0


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    with run_gateway(pki, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def lync_invite(to: str, *, source: str = TRUSTED_SOURCE) -> bytes:
    """An FE INVITE with the Lync multipart SDP sample as its body."""
    head, _, body = SDP_SAMPLE.read_text().partition("\n\n")
    content_type = head.partition(":")[2].strip()
    payload = body.replace("\n", "\r\n").encode()
    lines = [
        f"INVITE sip:{to};transport=tls SIP/2.0",
        f"Via: SIP/2.0/TLS {source}:5061;branch={new_branch()}",
        "Max-Forwards: 70",
        f'From: "Alice Parkes" <sip:alice.parkes@example.com>;tag={new_tag()}',
        f"To: <sip:{to}>",
        f"Call-ID: {new_tag()}@{source}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:alice.parkes@{source}:5061;transport=tls>",
        "Supported: ms-dialog-route-set-update",
        "ms-keep-alive: UAC;hop-hop=yes",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def simple_message(to: str, text: bytes, *, source: str = TRUSTED_SOURCE) -> bytes:
    lines = [
        f"MESSAGE sip:{to} SIP/2.0",
        f"Via: SIP/2.0/TLS {source}:5061;branch={new_branch()}",
        "Max-Forwards: 70",
        f"From: <sip:alice.parkes@example.com>;tag={new_tag()}",
        f"To: <sip:{to}>",
        f"Call-ID: {new_tag()}@{source}",
        "CSeq: 1 MESSAGE",
        "Content-Type: text/plain; charset=UTF-8",
        f"Content-Length: {len(text)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + text


# ---------------------------------------------------------------------------------------


async def test_untrusted_source_gets_403(gateway: RunningGateway, pki: LabPKI) -> None:
    responses = await tls_exchange(
        pki,
        gateway.microsoft,
        lync_invite("3001@video.example.com", source=UNTRUSTED_SOURCE),
        source=UNTRUSTED_SOURCE,
    )
    final = responses[-1]
    assert final.status == 403, gateway.log()
    assert UNTRUSTED_SOURCE in final.reason or "trusted" in final.reason.lower(), final.reason


async def test_no_search_rule_gives_404(gateway: RunningGateway, pki: LabPKI) -> None:
    responses = await tls_exchange(pki, gateway.microsoft, lync_invite("9999@nowhere.example.org"))
    assert responses[-1].status == 404, gateway.log()


async def test_broker_message_reaches_the_imp_node(gateway: RunningGateway, pki: LabPKI) -> None:
    seen: asyncio.Queue[Request] = asyncio.Queue()
    imp = SipStack(transport_settings=TransportSettings(outbound_ports=None))

    def answer(tx: ServerTransaction, request: Request) -> None:
        seen.put_nowait(request)
        imp.send_response(tx, make_response(request, 200, to_tag=new_tag()))

    imp.handlers = StackHandlers(on_request=answer)
    try:
        await imp.listen(Transport.TLS, IMP_HOST, gateway.ports.imp, ssl=pki.server_context("imp"))
        request = simple_message("3001@video.example.com", b"hello IM&P")
        responses = await tls_exchange(pki, gateway.microsoft, request)
        async with asyncio.timeout(5):
            forwarded = await seen.get()
    finally:
        await imp.close()
    assert responses[-1].status == 200, gateway.log()
    assert forwarded.method == "MESSAGE"
    assert forwarded.body == b"hello IM&P"
    assert forwarded.max_forwards == 69
    # The gateway's Via sits on top of the FE's.
    assert len(forwarded.via) == 2
    assert forwarded.via[1].host == TRUSTED_SOURCE


def _zone(status: dict[str, Any]) -> dict[str, Any]:
    for zone in status["zones"]:
        if zone["name"] == ZONE:
            found: dict[str, Any] = zone
            return found
    raise AssertionError(f"no zone {ZONE!r} in {status['zones']}")


async def test_zone_turns_from_active_to_failed(gateway: RunningGateway) -> None:
    peer = SipStack(transport_settings=TransportSettings(outbound_ports=None))

    def answer(tx: ServerTransaction, request: Request) -> None:
        peer.send_response(tx, make_response(request, 200, to_tag=new_tag()))

    peer.handlers = StackHandlers(on_request=answer)
    try:
        await peer.listen(Transport.TCP, MONITORED_HOST, gateway.ports.monitored)
        active = await asyncio.to_thread(
            gateway.wait_status, lambda s: _zone(s)["alive"], STATUS_WAIT, f"{ZONE} alive"
        )
        assert _zone(active)["status"] == "Active"
    finally:
        await peer.close()
    failed = await asyncio.to_thread(
        gateway.wait_status, lambda s: not _zone(s)["alive"], STATUS_WAIT, f"{ZONE} failed"
    )
    status = _zone(failed)["status"]
    assert status != "Active" and status, failed


# ---------------------------------------------------------------------------------------


def test_call_over_max_calls_gets_503(pki: LabPKI, tmp_path: Path) -> None:
    require_peers()
    held = 2
    with run_gateway(pki, tmp_path, overrides=["b2bua.max_calls=2"]) as gateway:
        with cucm_behind_fe_tunnel(gateway, pki, tmp_path, calls=held) as (served, tunnel):
            # Two calls held up 6 s before their hold and BYE.
            caller = start_scenario(
                Scenario(
                    "lync_fe_uac.xml",
                    calls=held,
                    remote=(tunnel.host, tunnel.port),
                    service="3001",
                    rate=10,
                    limit=held,
                    duration_ms=6000,
                ),
                tmp_path,
            )
            try:
                gateway.wait_status(
                    lambda s: s["capacity"]["active"] >= held, 10.0, f"{held} active calls"
                )
                responses = asyncio.run(
                    tls_exchange(pki, gateway.microsoft, lync_invite("3001@video.example.com"))
                )
                placed = caller.result(40)
            finally:
                caller.stop()
            answered = served.result(20)
        log = gateway.log()
    final = responses[-1]
    assert final.status == 503, log
    assert final.headers.get("Retry-After") is not None, final.encode().decode()
    # "503 Service Unavailable: call limit of 2 reached": the reason says why.
    assert "limit" in final.reason.lower() or "call" in final.reason.lower(), final.reason
    # The refusal left the two calls alone.
    assert counters(placed)["successful"] == held, placed.describe() + log
    assert counters(answered)["successful"] == held, answered.describe() + log
