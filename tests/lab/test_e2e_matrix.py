"""The lab's end-to-end call matrix through the whole topology (issue 6): internal Lync ->
endpoint, endpoint -> internal Lync, external Lync via the Edge and TURN -> endpoint,
hold/resume, voice -> video, IM through the broker.

One lab for the module (tests/lab/conftest.py: real FE, Edge with its A/V TURN, DMZ TURN,
gateway, CUCM, endpoints, IM&P, all on loopback with mutual TLS where the real network has
it). Each call asserts what both ends see: answered, RTP both ways, the ICE pair kind on the
Lync side, the hang-up reaching the other end, the gateway back to idle, and that nothing
of the Microsoft dialect (multipart bodies, a=candidate / a=x-* / a=ice-*) reached CUCM or
an endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from certs.pki import LabPKI
from lab.lync.client import LyncCall, LyncClient
from sip.uri import URI
from tests.lab.conftest import E2eLab, e2e_lab

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

WAIT = 10.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(pki: LabPKI) -> AsyncIterator[E2eLab]:
    async with e2e_lab(pki) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(lab: E2eLab) -> LyncClient:
    return await lab.client("alice")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def david(lab: E2eLab) -> LyncClient:
    return await lab.client("david")


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def clean_lab(lab: E2eLab) -> AsyncIterator[None]:
    """After each test: whatever call a failed test left is hung up, so the next test
    starts on an idle gateway (one failure does not cascade through the matrix)."""
    yield
    for client in lab.ms.clients:
        for call in list(client.calls.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.hangup(), WAIT)
        while not client.incoming_calls.empty():
            client.incoming_calls.get_nowait()
    for endpoint in lab.endpoints.values():
        for leftover in list(endpoint.calls.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(endpoint.hangup(leftover), WAIT)
        while not endpoint.incoming.empty():
            endpoint.incoming.get_nowait()
    with contextlib.suppress(TimeoutError):
        await lab.idle(WAIT)


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Until a condition driven by background media tasks holds (checked each 20 ms)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def bye_answer(lab: E2eLab, who: str, call_id: str) -> int | None:
    """Status of the response ``who`` received to its BYE for ``call_id``."""
    for seen in lab.wires[who].seen:
        message = seen.message
        if (not seen.sent and not hasattr(message, "method") and message.call_id == call_id
                and message.cseq.method == "BYE"):
            return message.status
    return None


async def hang_up_from_lync(lab: E2eLab, who: str, call: LyncCall, endpoint: str) -> None:
    """Lync hangs up: its BYE is answered 200 and reaches the endpoint, the gateway idles."""
    await call.hangup()
    assert call.state == "ended"
    assert bye_answer(lab, who, call.call_id) == 200, call.result
    await lab.wires[endpoint].wait_received("BYE", timeout=WAIT)
    await lab.idle()


async def test_internal_lync_calls_an_endpoint(lab: E2eLab, alice: LyncClient) -> None:
    call = await alice.call("3001@video.example.com")
    incoming = await lab.endpoints["3001"].next_call(WAIT)
    await call.wait_connected(WAIT)
    assert call.state in ("connected", "media")
    report = await call.wait_media(both_ways=True, timeout=WAIT)
    assert report.ice_pair is not None
    # alice is internal (host candidates only); the gateway also offers DMZ TURN relays,
    # and aioice nominates the first pair that works, so its end may be either.
    assert report.ice_pair in ("host/host", "host/relay"), report
    assert set(report.streams) == {"audio", "video"}
    far = await incoming.wait_media(both_ways=True, timeout=WAIT)
    assert far.packets_received >= 10 and far.packets_sent >= 10
    assert call.state == "media" and incoming.state == "media"
    # The INVITE the endpoint got came from the gateway through CUCM, plain SDP.
    invite = lab.wires["3001"].received("INVITE", incoming.call_id)[0]
    assert invite.content_type == "application/sdp"
    assert invite.from_.uri.user == "alice.parkes"
    await hang_up_from_lync(lab, "alice", call, "3001")
    assert lab.video_side_leaks() == []


async def test_endpoint_calls_internal_lync(lab: E2eLab, alice: LyncClient) -> None:
    endpoint = lab.endpoints["3002"]
    call = await endpoint.call("alice.parkes@example.com")
    incoming = await asyncio.wait_for(alice.incoming_calls.get(), WAIT)
    await call.wait_connected(WAIT)
    report = await incoming.wait_media(both_ways=True, timeout=WAIT)
    assert report.ice_pair in ("host/host", "host/relay"), report
    far = await call.wait_media(both_ways=True, timeout=WAIT)
    assert far.packets_received >= 10 and far.packets_sent >= 10
    # The Lync client got the Microsoft dialect from the gateway: ICE candidates and SRTP.
    assert incoming.remote_sdp is not None
    assert incoming.remote_sdp.media[0].get_all("candidate")
    assert incoming.remote_sdp.media[0].get_all("crypto")
    await call.hangup()
    await asyncio.wait_for(incoming.ended.wait(), WAIT)
    assert incoming.result == "BYE from peer"
    await lab.idle()
    assert lab.video_side_leaks() == []


async def test_external_lync_via_edge_and_turn_calls_an_endpoint(
        lab: E2eLab, david: LyncClient) -> None:
    edge = lab.ms.edge
    assert edge is not None and edge.turn is not None
    call = await david.call("3001@video.example.com")
    incoming = await lab.endpoints["3001"].next_call(WAIT)
    await call.wait_connected(WAIT)
    report = await call.wait_media(both_ways=True, timeout=WAIT)
    # david offers relay candidates only (strict firewall): media goes through the A/V Edge.
    assert report.ice_pair is not None and report.ice_pair.startswith("relay/"), report
    assert edge.turn.stats().packets_to_peer > 0
    far = await incoming.wait_media(both_ways=True, timeout=WAIT)
    assert far.packets_received >= 10 and far.packets_sent >= 10
    # The signalling came through the Access Edge and the FE.
    invite = lab.wires["3001"].received("INVITE", incoming.call_id)[0]
    assert invite.from_.uri.user == "david.jones"
    await hang_up_from_lync(lab, "david", call, "3001")
    assert lab.video_side_leaks() == []


async def test_hold_and_resume_from_lync(lab: E2eLab, alice: LyncClient) -> None:
    call = await alice.call("3002@video.example.com")
    incoming = await lab.endpoints["3002"].next_call(WAIT)
    await call.wait_media(both_ways=True, timeout=WAIT)
    await incoming.wait_media(both_ways=True, timeout=WAIT)

    await call.hold()
    # The hold re-INVITE crossed the gateway: the endpoint now only receives.
    await until(lambda: set(incoming.call.directions) == {"recvonly"},
                f"endpoint on hold (directions {incoming.call.directions})")
    assert incoming.call.remote_sdp is not None
    assert {m.direction for m in incoming.call.remote_sdp.media} == {"sendonly"}

    await call.resume()
    await until(lambda: set(incoming.call.directions) == {"sendrecv"},
                f"endpoint resumed (directions {incoming.call.directions})")
    before = call.media().packets_received
    far_before = incoming.media().packets_received
    # Media flows both ways again after the resume.
    await call.wait_media(both_ways=True, min_packets=before + 10, timeout=WAIT)
    await incoming.wait_media(both_ways=True, min_packets=far_before + 10, timeout=WAIT)
    await hang_up_from_lync(lab, "alice", call, "3002")
    assert lab.video_side_leaks() == []


async def test_voice_call_adds_video(lab: E2eLab, alice: LyncClient) -> None:
    call = await alice.call("3001@video.example.com", video=False)
    incoming = await lab.endpoints["3001"].next_call(WAIT)
    report = await call.wait_media(both_ways=True, timeout=WAIT)
    assert report.streams == ("audio",)
    assert incoming.call.local_sdp is not None
    assert [m.kind for m in incoming.call.local_sdp.media] == ["audio"]

    await call.add_video()
    await until(lambda: incoming.call.local_sdp is not None
                and [m.kind for m in incoming.call.local_sdp.media] == ["audio", "video"],
                "the endpoint answered the added video stream")
    video = next(s for s in call.streams if s.kind == "video")
    await until(lambda: video.counters.received >= 10 and video.counters.sent >= 10,
                f"video both ways ({video.counters})")
    await until(lambda: "video" in incoming.media().streams, "video RTP at the endpoint")
    await hang_up_from_lync(lab, "alice", call, "3001")
    assert lab.video_side_leaks() == []


async def test_im_through_the_broker(lab: E2eLab, alice: LyncClient) -> None:
    assert lab.imp is not None
    agent = alice.agent
    text = b"hello from the Lync side"
    request = agent.new_request("MESSAGE", URI.parse("sip:3001@video.example.com"),
                                alice.registrar, body=text, content_type="text/plain")
    response = await asyncio.wait_for(agent.stack.send_request(request, alice.registrar), WAIT)
    assert response.status == 200, f"{response.status} {response.reason}"
    delivered = await lab.imp.wait_for("MESSAGE", timeout=WAIT)
    assert delivered.body == text
    assert delivered.call_id == request.call_id
    # The IM travelled FE -> gateway broker -> IM&P, never as a call.
    assert not lab.gateway.calls
    vias = delivered.headers.getlist("Via")
    assert len(vias) >= 3, vias  # alice, the FE, the gateway's broker
