"""Call control through the real adapter and side agents, in memory (agent_harness): the
SIP each peer receives, byte-encoded, with the clock moved by hand."""

from __future__ import annotations

import asyncio

from gateway.views import LegSide
from media.sdp import parse_sdp
from tests.gateway.calls.agent_harness import CUCM, Harness, run
from tests.gateway.test_controller import plain_answer
from tests.gateway.test_runtime import DATA, lync_answer, lync_offer

MS = LegSide.MICROSOFT
VIDEO = LegSide.VIDEO
TARGET = "3001@video.example.com"


def test_basic_call_microsoft_to_video_and_bye() -> None:
    async def scenario(h: Harness) -> None:
        content_type, offer = lync_offer()
        pending = h.fe.invite(TARGET, h.hop(MS), offer, content_type)
        await h.settle()
        tx, invite = h.cucm.take()
        assert invite.body and parse_sdp(invite.body).media
        h.cucm.answer(tx, invite, 180)
        callee = h.cucm.answer(tx, invite, 200,
                               body=plain_answer(parse_sdp(invite.body), CUCM.host, 50000))
        await h.settle()
        assert h.fe.statuses()[-1] == 200 and h.fe.responses()[-1].body
        assert 180 in h.fe.statuses()
        assert h.cucm.requests("ACK"), "the gateway ACKs the callee's 200"
        h.fe.confirm(pending, h.hop(MS))
        await h.settle()
        assert len(h.controller.calls) == 1 and callee is not None
        bye = h.fe.bye(h.fe.dialogs.for_response(pending.final.result()))  # type: ignore[arg-type]
        await h.settle()
        assert bye.final.result().status == 200
        assert len(h.cucm.requests("BYE")) == 1
        assert not h.controller.calls
        assert h.services.sessions[0].closed
        assert h.ended("completed") == 1

    run(scenario)


async def _ringing(h: Harness, headers: tuple[tuple[str, str], ...] = ()) -> tuple:  # type: ignore[type-arg]
    """The FE calls 3001 and CUCM rings: (the FE's INVITE, CUCM's transaction and INVITE)."""
    content_type, offer = lync_offer()
    pending = h.fe.invite(TARGET, h.hop(MS), offer, content_type, headers)
    await h.settle()
    tx, invite = h.cucm.take()
    return pending, tx, invite


def test_cancel_during_setup_gives_487_and_cancels_the_callee() -> None:
    async def scenario(h: Harness) -> None:
        pending, tx, invite = await _ringing(h)
        h.cucm.answer(tx, invite, 180)
        await h.settle()
        assert h.fe.statuses()[-1] == 180
        pending.cancel()
        await h.settle()
        assert pending.final.result().status == 487
        assert h.fe.statuses("CANCEL") == [200]
        assert len(h.cucm.requests("CANCEL")) == 1
        assert h.cucm.requests("ACK"), "the gateway ACKs the callee's 487"
        assert not h.cucm.requests("BYE")
        assert not h.controller.calls
        assert h.services.sessions[0].closed
        assert h.ended("cancelled") == 1

    run(scenario)


def test_require_of_an_unknown_tag_gets_420_with_unsupported() -> None:
    async def scenario(h: Harness) -> None:
        content_type, offer = lync_offer()
        pending = h.fe.invite(TARGET, h.hop(MS), offer, content_type, (("Require", "foo"),))
        await h.settle()
        refusal = pending.final.result()
        assert refusal.status == 420
        assert refusal.headers.get("Unsupported") == "foo"
        assert not h.cucm.received and not h.cucm.incoming
        assert not h.controller.calls and not h.services.sessions

    run(scenario)


def test_callee_answering_too_few_m_lines_gets_ack_and_bye_caller_502() -> None:
    async def scenario(h: Harness) -> None:
        pending, tx, invite = await _ringing(h)
        offered = parse_sdp(invite.body)
        assert len(offered.media) >= 2
        answer = plain_answer(offered, CUCM.host, 50000)
        first_only = answer[:answer.index(b"m=", answer.index(b"m=") + 1)]
        h.cucm.answer(tx, invite, 200, body=first_only)
        await h.settle()
        assert pending.final.result().status == 502
        assert len(h.cucm.requests("ACK")) == 1
        assert len(h.cucm.requests("BYE")) == 1
        assert not h.controller.calls
        assert h.services.sessions[0].closed

    run(scenario)


def test_183_with_sdp_is_relayed_before_the_200() -> None:
    async def scenario(h: Harness) -> None:
        pending, tx, invite = await _ringing(h, (("Supported", "ms-early-media"),))
        answer = plain_answer(parse_sdp(invite.body), CUCM.host, 50000)
        h.cucm.answer(tx, invite, 183, body=answer)
        await h.settle()
        early = [r for r in h.fe.responses() if r.status == 183]
        assert len(early) == 1 and parse_sdp(early[0].body).media
        assert not pending.final.done()
        h.cucm.answer(tx, invite, 200, body=answer)
        await h.settle()
        assert h.fe.statuses()[-2:] == [183, 200]
        h.fe.confirm(pending, h.hop(MS))
        await h.settle()
        assert len(h.controller.calls) == 1

    run(scenario)


def test_session_refresh_missing_byes_both_legs_after_expiry() -> None:
    async def scenario(h: Harness) -> None:
        pending, tx, invite = await _ringing(h, (("Supported", "timer"),
                                                 ("Session-Expires", "90;refresher=uac")))
        h.cucm.answer(tx, invite, 200,
                      body=plain_answer(parse_sdp(invite.body), CUCM.host, 50000))
        await h.settle()
        ok = pending.final.result()
        assert ok.status == 200
        assert ok.headers.get("Session-Expires", "").startswith("90")
        assert "refresher=uac" in ok.headers.get("Session-Expires", "")
        assert "timer" in ok.headers.get("Require", "")
        h.fe.confirm(pending, h.hop(MS))
        await h.settle()
        await h.advance(40)
        assert not h.fe.requests("BYE") and len(h.controller.calls) == 1
        await h.advance(60)  # the FE never refreshed: the session expired
        assert len(h.fe.requests("BYE")) == 1
        assert len(h.cucm.requests("BYE")) == 1
        assert not h.controller.calls

    run(scenario)


def test_reliable_183_from_the_callee_is_pracked_and_relayed() -> None:
    async def scenario(h: Harness) -> None:
        pending, tx, invite = await _ringing(h, (("Supported", "ms-early-media"),))
        assert "100rel" in invite.headers.get("Supported", "")
        answer = plain_answer(parse_sdp(invite.body), CUCM.host, 50000)
        h.cucm.answer(tx, invite, 183, body=answer,
                      headers=(("Require", "100rel"), ("RSeq", "7")))
        await h.settle()
        prack_tx, prack = h.cucm.take("PRACK")
        assert prack.headers.get("RAck") == f"7 {invite.cseq.seq} INVITE"
        h.cucm.stack.respond(prack_tx, 200)
        await h.settle()
        early = [r for r in h.fe.responses() if r.status == 183]
        assert len(early) == 1 and early[0].body
        assert early[0].headers.get("RSeq") is None, "not reliable toward Microsoft"
        h.cucm.answer(tx, invite, 200, body=answer)
        await h.settle()
        assert pending.final.result().status == 200

    run(scenario)


def test_video_calls_microsoft_and_hangs_up() -> None:
    async def scenario(h: Harness) -> None:
        text = (DATA / "video_endpoint_offer.sdp").read_text()
        offer = "\r\n".join(text.splitlines()).encode() + b"\r\n"
        pending = h.cucm.invite("alice@example.com", h.hop(VIDEO), offer, "application/sdp")
        await h.settle()
        tx, invite = h.fe.take()
        ms_offer = parse_sdp(invite.body)
        assert ms_offer.media[0].proto == "RTP/SAVP" and ms_offer.media[0].get("ice-pwd")
        assert invite.call_id != pending.request.call_id
        h.fe.answer(tx, invite, 200, body=lync_answer(ms_offer))
        await h.settle()
        ok = pending.final.result()
        assert ok.status == 200 and b"a=crypto" not in ok.body and b"candidate" not in ok.body
        dialog = h.cucm.confirm(pending, h.hop(VIDEO))
        await h.settle()
        assert len(h.fe.requests("ACK")) == 1 and len(h.controller.calls) == 1
        bye = h.cucm.bye(dialog)
        await h.settle()
        assert bye.final.result().status == 200
        [ms_bye] = h.fe.requests("BYE")
        assert "BYE from the video side" in (ms_bye.headers.get("Reason") or "")
        assert not h.controller.calls and h.ended("completed") == 1

    run(scenario)


def test_a_reinvite_without_sdp_gets_our_offer_and_the_acks_answer_moves_the_media() -> None:
    """CUCM reconnects media after a transfer with a re-INVITE without SDP (RFC 3261 §14):
    the gateway's 200 offers what it last sent, CUCM's ACK answers from a new port, and the
    media session is applied with that answer (before: the ACK's SDP was dropped and media
    kept going to the old port). The FE is not asked anything."""
    async def scenario(h: Harness) -> None:
        content_type, offer = lync_offer()
        pending = h.fe.invite(TARGET, h.hop(MS), offer, content_type)
        await h.settle()
        tx, invite = h.cucm.take()
        callee = h.cucm.answer(tx, invite, 200,
                               body=plain_answer(parse_sdp(invite.body), CUCM.host, 50000))
        await h.settle()
        h.fe.confirm(pending, h.hop(MS))
        await h.settle()
        assert callee is not None
        session = h.services.sessions[0]
        applied = session.applied
        request, hop = h.cucm.dialog_request(callee, "INVITE")
        reinvite = h.cucm.stack.start_request(request, hop)
        await h.settle()
        ok = reinvite.final.result()
        assert ok.status == 200 and ok.body, ok
        ours = parse_sdp(ok.body)
        assert [m.kind for m in ours.media] == [m.kind for m in parse_sdp(invite.body).media]
        h.cucm.send_ack(callee, reinvite.transaction, body=plain_answer(ours, CUCM.host, 50010),
                        content_type="application/sdp")
        await h.settle()
        assert session.applied == applied + 1
        moved = session.last_applied["video_remote"]
        assert [m.port for m in moved.media if m.port] == [50010, 50012][:len(moved.media)]
        assert len(h.fe.requests("INVITE")) == 0  # answered here, not relayed
        assert len(h.controller.calls) == 1
    run(scenario)


def test_a_callee_byeing_right_after_its_200_still_ends_the_callers_invite() -> None:
    """CUCM answers and BYEs at once (its BYE crossing our ACK, while the gateway is still
    rewriting the answer): the FE's INVITE gets a final response (480) instead of ringing
    on unanswered; CUCM's BYE gets 200."""
    async def scenario(h: Harness) -> None:
        pending, tx, invite = await _ringing(h)
        h.cucm.answer(tx, invite, 180)
        gate = h.services.sessions[0].gate = asyncio.Event()  # the answer's media: held
        callee = h.cucm.answer(tx, invite, 200,
                               body=plain_answer(parse_sdp(invite.body), CUCM.host, 50000))
        assert callee is not None
        await h.settle()
        assert h.cucm.requests("ACK") and not pending.final.done()
        bye = h.cucm.bye(callee)
        await h.settle()
        gate.set()
        await h.settle()
        assert bye.final.result().status == 200
        final = pending.final.result()
        assert final.status == 480, final
        assert not h.controller.calls
        assert h.services.sessions[0].closed
        assert h.ended("failed") == 1
    run(scenario)
