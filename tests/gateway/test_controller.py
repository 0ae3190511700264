"""Call control through the running gateway: delayed offer, the From rewrite, ICE failure,
a 2xx never ACKed, and REFER from the video side (the Microsoft client transferred)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from certs.pki import LabPKI
from gateway.call import EndedCall, Outcome
from gateway.calls.refusals import ICE_FAILURE_TEXT
from gateway.metrics import CallResult
from lab.endpoint import Endpoint
from media.sdp import SessionDescription, parse_sdp
from sip.dialog import Dialog
from sip.headers import Address
from sip.message import Request
from sip.stack import SipStack
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI
from sip.useragent import UserAgent
from tests.gateway.test_runtime import (
    FAST,
    GATEWAY_HOST,
    WAIT,
    Lab,
    MsCall,
    endpoint_port,
    make_lab,
    only_call,
    start_endpoint,
    wait_for,
)

__all__ = ["make_lab"]  # the fixture, re-exported for pytest


def plain_answer(offer: SessionDescription, host: str, port: int) -> bytes:
    """A plain RTP answer taking the first codec of each offered m= line."""
    lines = ["v=0", f"o=- 7 7 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    for index, media in enumerate(offer.media):
        codecs = media.codecs()
        if not media.port or not codecs:
            lines.append(f"m={media.kind} 0 {media.proto} {' '.join(media.formats)}")
            continue
        first = codecs[0]
        lines.append(f"m={media.kind} {port + 2 * index} RTP/AVP {first.payload_type}")
        lines += [f"a={a}" for a in first.attributes()]
    return ("\r\n".join(lines) + "\r\n").encode()


def transfer_target_zone(target: Endpoint) -> str:
    """Config for a second CUCM zone where 3002@video.example.com (``target``) lives."""
    return f"""
[[zones]]
name = "CUCM Two"
peers = ["127.0.3.1"]
port = {endpoint_port(target)}
transport = "tcp"
monitor = false

[[search_rules]]
name = "3002 on CUCM Two"
priority = 50
pattern_type = "exact"
pattern = "3002@video.example.com"
target = "CUCM Two"
"""


async def refer_to_3002(lab: Lab, transferor: Endpoint) -> tuple[MsCall, Any]:
    """Microsoft calls 3001 (``transferor``); once the call is connected, 3001 REFERs it to
    3002 and gets 202. Returns the FE's call and 3001's call."""
    ms_call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and ms_call is not None
    old = only_call(transferor)
    await asyncio.wait_for(old.confirmed.wait(), WAIT)
    await wait_for(lambda: next(iter(lab.gateway.calls.values())).state.value
                   == "connected", "connected")
    assert old.dialog is not None
    refer, hop = transferor.dialog_request(
        old.dialog, "REFER", headers=(("Refer-To", "<sip:3002@video.example.com>"),))
    answer = await asyncio.wait_for(transferor.stack.send_request(refer, hop), WAIT)
    assert answer.status == 202
    return ms_call, old


async def video_ua(host: str = "127.0.3.1") -> UserAgent:
    stack = SipStack(timers=FAST, transport_settings=TransportSettings(
        outbound_ports=None, source_host=host))
    await stack.listen(Transport.TCP, host, 0)
    return UserAgent(stack, user="room", domain="video.example.com")


async def test_delayed_offer_from_the_video_side(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    ua = await video_ua()
    try:
        hop = lab.video_hop
        request = ua.new_request("INVITE", URI.parse("sip:alice.parkes@example.com"), hop)
        assert not request.body
        pending = ua.stack.start_request(request, hop)
        ms_call = await asyncio.wait_for(lab.fe.incoming.get(), WAIT)
        # Microsoft never sees an INVITE without SDP: the pre-configured codec list.
        offer = ms_call.remote
        assert offer is not None
        assert [m.kind for m in offer.media] == ["audio", "video"]
        assert {c.name for c in offer.media[0].codecs()} >= {"G722", "PCMU", "PCMA"}
        assert any(c.name == "X-H264UC" for c in offer.media[1].codecs())
        assert offer.media[0].proto == "RTP/SAVP" and offer.media[0].get("ice-ufrag")
        # The 200 to the video side carries our offer (Microsoft's answer, rewritten).
        response = await asyncio.wait_for(pending.response(), WAIT)
        assert response.status == 200
        video_offer = parse_sdp(response.body)
        assert "crypto" not in str(video_offer) and "candidate" not in str(video_offer)
        assert video_offer.connection is not None
        assert video_offer.connection.address == GATEWAY_HOST
        dialog = Dialog.create_uac(request, response)
        ua.dialogs.add(dialog, hop)
        ua.send_ack(dialog, pending.transaction, plain_answer(video_offer, "127.0.3.1", 43000),
                    "application/sdp")
        await wait_for(lambda: lab.gateway.calls and next(iter(lab.gateway.calls.values()))
                       .state.value == "connected", "connected after the ACK's answer")
        call = next(iter(lab.gateway.calls.values()))
        assert call.media is not None
        stream = call.media.streams[0]
        assert stream is not None
        # The video leg now knows where the endpoint receives (from the ACK's answer).
        bye = await asyncio.wait_for(ua.send_in_dialog(dialog, "BYE"), WAIT)
        assert bye.status == 200
        await asyncio.wait_for(ms_call.ended.wait(), WAIT)
    finally:
        await ua.stack.close()


async def test_from_holding_only_an_ip_is_rewritten_toward_microsoft(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    ua = await video_ua()
    try:
        hop = lab.video_hop
        body = plain_answer(parse_sdp(
            b"v=0\r\no=- 1 1 IN IP4 127.0.3.1\r\ns=-\r\nc=IN IP4 127.0.3.1\r\nt=0 0\r\n"
            b"m=audio 43000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"), "127.0.3.1", 43000)
        request = ua.new_request("INVITE", URI.parse("sip:david.jones@example.com"), hop,
                                 body=body, content_type="application/sdp")
        request.headers.set("From", "<sip:10.10.2.1>;tag=ipfrom1")
        pending = ua.stack.start_request(request, hop)
        ms_call = await asyncio.wait_for(lab.fe.incoming.get(), WAIT)
        assert str(ms_call.invite.from_.uri) == "sip:10.10.2.1@video.example.com"
        assert ms_call.invite.from_.tag not in (None, "ipfrom1")  # the B2BUA's own tag
        response = await asyncio.wait_for(pending.response(), WAIT)
        assert response.status == 200
        # The video side still sees its own From.
        assert response.from_ == Address.parse("<sip:10.10.2.1>;tag=ipfrom1")
        dialog = Dialog.create_uac(request, response)
        ua.dialogs.add(dialog, hop)
        ua.send_ack(dialog, pending.transaction)
        assert (await asyncio.wait_for(ua.send_in_dialog(dialog, "BYE"), WAIT)).status == 200
    finally:
        await ua.stack.close()


async def test_ice_failure_clears_both_legs_with_the_reason(
        make_lab: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    lab: Lab = await make_lab(options={"ice_timeout": 0.5})
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    video_call = only_call(lab.endpoint)
    # The FE's candidates lead nowhere: the checks time out and the gateway BYEs both legs.
    await asyncio.wait_for(call.ended.wait(), WAIT)
    await asyncio.wait_for(video_call.ended.wait(), WAIT)
    assert call.bye is not None
    reason = call.bye.headers.get("Reason") or ""
    assert reason.startswith("SIP ;cause=") and f'text="{ICE_FAILURE_TEXT}"' in reason
    assert video_call.result == "completed (BYE from peer)"
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call cleared")
    assert 'gateway_calls_total{result="failed"} 1.0' in lab.gateway.metrics.render().decode()
    # Only a small summary is kept of the ended call, not the call with its legs and media.
    [ended] = lab.gateway.controller.ended
    assert isinstance(ended, EndedCall)
    assert ended.outcome == Outcome(CallResult.FAILED, ICE_FAILURE_TEXT)
    assert ended.connected_at is not None
    assert ended.started_at <= ended.connected_at <= ended.ended_at
    assert [c.kind for c in ended.counters] == ["audio", "video"]
    # One INFO line for the call, at its end, naming the reason and both sides.
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith("gateway.call") and r.levelno == logging.INFO]
    assert len(lines) == 1 and "call ended: " + ICE_FAILURE_TEXT in lines[0], lines
    assert " -> " in lines[0] and "connected after" in lines[0]


async def test_a_2xx_never_acked_is_torn_down_after_64_t1(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    lab.fe.send_acks = False
    loop = asyncio.get_running_loop()
    started = loop.time()
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    video_call = only_call(lab.endpoint)
    await asyncio.wait_for(call.ended.wait(), WAIT)
    elapsed = loop.time() - started
    assert 64 * FAST.t1 * 0.9 <= elapsed < 64 * FAST.t1 + 3.0
    assert call.bye is not None and "no ACK" in (call.bye.headers.get("Reason") or "")
    await asyncio.wait_for(video_call.ended.wait(), WAIT)
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call cleared")


async def test_refer_from_the_video_side_transfers_the_microsoft_client(
        make_lab: Any, pki: LabPKI) -> None:
    target = await start_endpoint(pki, aor="3002@video.example.com")
    try:
        lab: Lab = await make_lab(extra=transfer_target_zone(target))
        notifies: list[bytes] = []
        transferor = lab.endpoint
        original = transferor.handle_dialog_request

        def record(dialog: Dialog, transaction: ServerTransaction, request: Request) -> Any:
            if request.method == "NOTIFY":
                notifies.append(request.body)
                transferor.stack.respond(transaction, 200)
                return None
            return original(dialog, transaction, request)

        transferor.handle_dialog_request = record  # type: ignore[method-assign]
        ms_call, old = await refer_to_3002(lab, transferor)
        # The new target gets a plain offer and answers; Microsoft is re-INVITEd onto it.
        await wait_for(lambda: len(target.calls) == 1, "transfer target called")
        new = only_call(target)
        await asyncio.wait_for(new.confirmed.wait(), WAIT)
        assert new.remote_sdp is not None and "crypto" not in str(new.remote_sdp)
        await asyncio.wait_for(old.ended.wait(), WAIT)
        await wait_for(lambda: any(body.startswith(b"SIP/2.0 200") for body in notifies),
                       "NOTIFY 200")
        assert notifies[0].startswith(b"SIP/2.0 100 Trying")
        reinvites = [r for r in lab.fe.received if r.method == "INVITE" and r.to.tag]
        assert len(reinvites) == 1
        (call,) = lab.gateway.calls.values()
        assert call.outbound is not None and call.outbound.call_id == new.call_id
        # The Microsoft client and the new party are in one call now: BYE ends both.
        await lab.fe.hangup(ms_call)
        await asyncio.wait_for(new.ended.wait(), WAIT)
        await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                       "cleared")
    finally:
        await target.close()


async def test_bye_and_requests_for_unknown_dialogs_get_481(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    ua = await video_ua()
    try:
        hop = lab.video_hop
        bye = ua.new_request("BYE", URI.parse("sip:gateway@127.0.2.1"), hop)
        bye.headers.set("To", "<sip:gateway@127.0.2.1>;tag=nosuch")
        response = await asyncio.wait_for(ua.stack.send_request(bye, hop), WAIT)
        assert response.status == 481
        options = ua.new_request("OPTIONS", URI.parse("sip:gateway@127.0.2.1"), hop)
        response = await asyncio.wait_for(ua.stack.send_request(options, hop), WAIT)
        assert response.status == 200 and "INVITE" in (response.headers.get("Allow") or "")
    finally:
        await ua.stack.close()



async def test_broker_message_from_microsoft_reaches_the_imp_node(
        make_lab: Any, pki: LabPKI) -> None:
    stack = SipStack(timers=FAST, transport_settings=TransportSettings(outbound_ports=None),
                     tls_client=pki.client_context("imp"))
    await stack.listen(Transport.TLS, "127.0.3.2", 0, ssl=pki.server_context(
        "imp", require_client_cert=False))
    imp = UserAgent(stack, user="imp", domain="video.example.com")
    got: list[Request] = []

    def on_message(transaction: ServerTransaction, request: Request) -> None:
        got.append(request)
        stack.respond(transaction, 200)

    imp.handle_new_request = on_message  # type: ignore[method-assign,assignment]
    listener = stack.listener(Transport.TLS)
    assert listener is not None
    try:
        lab: Lab = await make_lab(extra=f"""
[b2bua.broker]
enabled = true
destinations = ["127.0.3.2"]
port = {listener.port}
""")
        fe = lab.fe
        assert fe.gateway is not None
        message = fe.new_request("MESSAGE", URI.parse("sip:bob@video.example.com"), fe.gateway,
                                 body=b"hello", content_type="text/plain")
        response = await asyncio.wait_for(fe.stack.send_request(message, fe.gateway), WAIT)
        assert response.status == 200
        assert [r.method for r in got] == ["MESSAGE"] and got[0].body == b"hello"
        assert not lab.gateway.calls
    finally:
        await stack.close()


async def test_broker_methods_get_501_while_the_broker_is_off(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    fe = lab.fe
    assert fe.gateway is not None
    message = fe.new_request("MESSAGE", URI.parse("sip:bob@video.example.com"), fe.gateway,
                             body=b"hello", content_type="text/plain")
    response = await asyncio.wait_for(fe.stack.send_request(message, fe.gateway), WAIT)
    assert response.status == 501 and "broker" in response.reason
