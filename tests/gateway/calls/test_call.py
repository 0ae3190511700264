"""Call control in memory: the call between its two leg machines, driven through the
harness (scripted caller and callee, fake bridge, the clock by hand)."""

from __future__ import annotations

from gateway.calls.actions import (
    BridgeOp,
    CallState,
    Connected,
    Outcome,
    ResetBridge,
    Role,
    Started,
)
from gateway.calls.events import (
    AckIn,
    AckTimeout,
    ByeIn,
    CancelIn,
    CancelReinvite,
    RefreshAnswered,
    RefreshIn,
    RefuseReinvite,
    ReinviteIn,
    ResponseIn,
    SendAnswer,
    SendBye,
    SendInvite,
    SendProvisional,
    SendReject,
    SendUpdateAnswer,
    SendUpdateReject,
    Timeout,
    TimerFired,
    UpdateIn,
)
from gateway.calls.leg_machine import LegState
from gateway.metrics import CallResult
from gateway.sdp_bridge import BadAnswer
from gateway.session_timer import Refresher, Session
from gateway.views import LegSide
from media.port_pool import PortPoolExhausted
from tests.gateway.calls.harness import B2bua, sdp

UAS, UAC = Role.UAS, Role.UAC


def connected(**options: object) -> B2bua:
    b2bua = B2bua(**options)  # type: ignore[arg-type]
    b2bua.invite(sdp("caller", ("audio", "video")))
    b2bua.callee(ResponseIn(180, "Ringing"))
    b2bua.tick(2.0)
    b2bua.callee(ResponseIn(200, "OK", sdp("callee", ("audio", "video"))))
    b2bua.caller(AckIn())
    assert b2bua.call.state is CallState.CONNECTED
    return b2bua


def test_a_call_from_microsoft_is_offered_rung_answered_and_confirmed() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller", ("audio", "video")))
    assert [r.op for r in b2bua.rewrites] == [BridgeOp.MICROSOFT_OFFER]
    invite = b2bua.last(UAC)
    assert isinstance(invite, SendInvite) and invite.sdp is not None
    assert invite.sdp.origin.username == "microsoft_offer" and not invite.retry
    assert any(isinstance(a, Started) for a in b2bua.others)
    b2bua.callee(ResponseIn(100, "Trying"))
    assert b2bua.to(UAS) == []
    b2bua.callee(ResponseIn(180, "Ringing"))
    assert b2bua.last(UAS) == SendProvisional(180, "Ringing")
    assert b2bua.call.state is CallState.RINGING
    b2bua.tick(3.0)
    b2bua.callee(ResponseIn(200, "OK", sdp("callee", ("audio", "video"))))
    assert b2bua.to(UAC) == ["SendInvite", "SendAck"]
    answer = b2bua.last(UAS)
    assert isinstance(answer, SendAnswer) and answer.sdp is not None
    assert answer.sdp.origin.username == "video_answer"
    assert b2bua.call.state is CallState.CONNECTING
    assert Connected(3.0) in b2bua.others
    b2bua.caller(AckIn())
    assert b2bua.call.state is CallState.CONNECTED and b2bua.call.connected_at == 3.0


def test_a_call_from_the_video_side_uses_the_video_rewrites() -> None:
    b2bua = B2bua(inbound=LegSide.VIDEO)
    b2bua.invite(sdp("cucm"))
    b2bua.callee(ResponseIn(200, "OK", sdp("fe")))
    assert [r.op for r in b2bua.rewrites] == [BridgeOp.VIDEO_OFFER, BridgeOp.MICROSOFT_ANSWER]


def test_cancel_while_media_is_set_up_ends_the_call_and_sends_no_invite() -> None:
    b2bua = B2bua(auto=False)
    b2bua.invite(sdp("caller"))
    b2bua.caller(CancelIn())
    assert b2bua.last(UAS) == SendReject(487, "Request Terminated")
    assert b2bua.ended and b2bua.ended[0].outcome == Outcome(CallResult.CANCELLED, "cancelled")
    b2bua.finish_rewrite()  # the ports came back after all: nothing more happens
    assert b2bua.to(UAC) == [] and b2bua.call.uac is None


def test_cancel_while_ringing_cancels_the_callee_and_a_crossing_2xx_is_acked_and_byed() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(180, "Ringing"))
    b2bua.caller(CancelIn())
    assert b2bua.to(UAC) == ["SendInvite", "SendCancel"]
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    assert b2bua.to(UAC) == ["SendInvite", "SendCancel", "SendAck", "SendBye"]
    assert b2bua.call.uac is not None and b2bua.call.uac.state is LegState.DISCONNECTING
    assert len(b2bua.ended) == 1


def test_a_refusal_by_the_callee_is_relayed_with_its_headers() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(486, "Busy Here", headers=(("Retry-After", "10"),)))
    assert b2bua.last(UAS) == SendReject(486, "Busy Here", (("Retry-After", "10"),))
    assert b2bua.ended[0].outcome == Outcome(CallResult.REJECTED, "486 Busy Here")


def test_best_effort_offers_plain_rtp_once_after_488() -> None:
    b2bua = B2bua(best_effort=True)
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(488, "Not Acceptable Here"))
    assert b2bua.rewrites[-1].op is BridgeOp.PLAIN_VIDEO_OFFER
    retry = b2bua.last(UAC)
    assert isinstance(retry, SendInvite) and retry.retry
    assert b2bua.to(UAS) == []  # the 488 never reaches Microsoft
    b2bua.callee(ResponseIn(488, "Not Acceptable Here"))  # the second refusal is relayed
    assert b2bua.last(UAS) == SendReject(488, "Not Acceptable Here")
    assert [a for a in b2bua.others if isinstance(a, Started)] == [Started()]


def answered_against_rfc_3264(status: int, reason: str) -> B2bua:
    """A call whose callee's answer (in a ``status`` response) drops an offered m-line:
    the rewrite fails with ``BadAnswer`` and the caller is rejected with 502."""
    b2bua = B2bua(auto=False)
    b2bua.invite(sdp("caller", ("audio", "video")))
    b2bua.finish_rewrite()
    b2bua.callee(ResponseIn(status, reason, sdp("callee")))
    b2bua.fail_next = BadAnswer("video", sdp("o", ("audio", "video")), sdp("a"))
    b2bua.finish_rewrite()
    reject = b2bua.last(UAS)
    assert isinstance(reject, SendReject) and reject.status == 502
    return b2bua


def test_an_answer_breaking_rfc_3264_is_a_502_and_the_callee_is_byed() -> None:
    b2bua = answered_against_rfc_3264(200, "OK")
    bye = b2bua.last(UAC)
    assert isinstance(bye, SendBye) and bye.reason is not None and "cause=502" in bye.reason[1]


def test_no_port_for_the_offer_is_a_503_before_anything_is_sent() -> None:
    b2bua = B2bua(auto=False)
    b2bua.invite(sdp("caller"))
    b2bua.fail_next = PortPoolExhausted("no free media port")
    b2bua.finish_rewrite()
    reject = b2bua.last(UAS)
    assert isinstance(reject, SendReject) and reject.status == 503
    assert b2bua.to(UAC) == [] and b2bua.ended


def test_a_coding_error_in_the_answer_fails_the_call_once_with_500() -> None:
    b2bua = B2bua(auto=False)
    b2bua.invite(sdp("caller"))
    b2bua.finish_rewrite()
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    b2bua.fail_next = TypeError("bug")
    b2bua.finish_rewrite()
    assert b2bua.to(UAS).count("SendReject") == 1
    reject = b2bua.last(UAS)
    assert isinstance(reject, SendReject) and reject.status == 500
    bye = b2bua.last(UAC)
    assert isinstance(bye, SendBye) and bye.reason is not None and "cause=500" in bye.reason[1]
    assert b2bua.ended[0].outcome.result is CallResult.FAILED


def test_an_unreachable_peer_is_skipped_for_the_next_one() -> None:
    b2bua = B2bua(hops=2)
    b2bua.invite(sdp("caller"))
    b2bua.callee(Timeout(transport_error=True))
    assert b2bua.to(UAC) == ["SendInvite", "SendInvite"] and b2bua.call.hop_index == 1
    b2bua.callee(Timeout(transport_error=True))
    reject = b2bua.last(UAS)
    assert reject == SendReject(503, "Service Unavailable: CUCM unreachable")


def test_hop_by_hop_refusals_of_the_callee_are_translated_for_the_caller() -> None:
    """503 (+ Retry-After) would say the gateway is down: 500. A 3xx cannot be followed
    through a B2BUA: 480. A 401/407 challenges the gateway, not the caller: 403. The
    Reason header stays; the rest (486, 404, 6xx) is relayed as is."""
    reason = ("Reason", "Q.850;cause=34")
    cases = [
        ((503, "Service Unavailable", (("Retry-After", "60"), reason)), 500, (reason,)),
        ((302, "Moved Temporarily", (reason,)), 480, (reason,)),
        ((407, "Proxy Authentication Required", (reason,)), 403, (reason,)),
        ((603, "Decline", (reason,)), 603, (reason,)),
    ]
    for (status, text, headers), expected, kept in cases:
        b2bua = B2bua()
        b2bua.invite(sdp("caller"))
        b2bua.callee(ResponseIn(status, text, headers=headers))
        reject = b2bua.last(UAS)
        assert isinstance(reject, SendReject), reject
        assert (reject.status, reject.headers) == (expected, kept), reject
        assert str(status) in reject.reason or status == expected
        assert b2bua.ended[0].outcome.result is CallResult.REJECTED


def test_a_503_from_one_peer_of_the_zone_tries_the_next() -> None:
    b2bua = B2bua(hops=2)
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(503, "Service Unavailable"))
    assert b2bua.to(UAC) == ["SendInvite", "SendInvite"] and b2bua.call.hop_index == 1
    assert b2bua.to(UAS) == []
    b2bua.callee(ResponseIn(503, "Service Unavailable"))
    reject = b2bua.last(UAS)
    assert isinstance(reject, SendReject) and reject.status == 500


def test_a_reinvite_is_rewritten_relayed_and_answered() -> None:
    b2bua = connected()
    b2bua.caller(ReinviteIn(sdp("hold")))
    assert b2bua.call.uas.state is LegState.UPDATING
    assert b2bua.to(UAC)[-1] == "SendReinvite"
    b2bua.callee(ResponseIn(200, "OK", sdp("held")))
    assert b2bua.to(UAC)[-1] == "SendAck"
    answer = b2bua.last(UAS)
    assert isinstance(answer, SendUpdateAnswer) and answer.sdp is not None
    assert answer.sdp.origin.username == "video_answer"
    assert b2bua.call.uas.state is LegState.CONNECTED and b2bua.call.connected


def test_a_reinvite_refused_by_the_other_side_is_refused_and_the_call_goes_on() -> None:
    b2bua = connected()
    b2bua.callee(ReinviteIn(sdp("video")))
    b2bua.caller(ResponseIn(488, "Not Acceptable Here"))
    assert b2bua.last(UAC) == SendUpdateReject(488, "Not Acceptable Here")
    assert ResetBridge() in b2bua.others and b2bua.call.connected


def test_a_crossing_reinvite_gets_491() -> None:
    b2bua = connected(auto=True)
    b2bua.caller(ReinviteIn(sdp("hold")))
    b2bua.callee(ReinviteIn(sdp("video")))
    assert b2bua.last(UAC) == RefuseReinvite(491, "Request Pending")


def test_a_second_offer_from_the_same_side_while_its_first_is_answered_gets_500() -> None:
    """RFC 3261 §14.2 / RFC 3311 §5.2: not glare (our offer is not out) but the peer's own
    earlier offer still unanswered: 500 with Retry-After, the first goes on."""
    for second in (ReinviteIn(sdp("again")), UpdateIn(sdp("again"))):
        b2bua = connected(auto=True)
        b2bua.callee(ReinviteIn(sdp("video")))
        b2bua.callee(second)
        refusal = b2bua.last(UAC)
        assert isinstance(refusal, RefuseReinvite) and refusal.status == 500, refusal
        assert refusal.retry_after
        b2bua.caller(ResponseIn(200, "OK", sdp("fe")))
        answer = b2bua.last(UAC)
        assert isinstance(answer, SendUpdateAnswer) and b2bua.call.connected


def test_a_reinvite_without_sdp_is_answered_with_what_we_last_sent() -> None:
    b2bua = connected()
    b2bua.caller(ReinviteIn(None))
    assert b2bua.last(UAS) == SendUpdateAnswer(None)


def test_the_ack_answer_to_our_offer_in_a_reinvites_2xx_is_applied() -> None:
    """CUCM's re-INVITE without SDP (after a transfer or a resume): our 2xx offers what we
    last sent, its ACK answers, maybe from a new address: that answer is applied (before:
    dropped, the media kept going to the old address)."""
    b2bua = connected()
    b2bua.callee(ReinviteIn(None))
    assert b2bua.last(UAC) == SendUpdateAnswer(None)
    assert b2bua.call.uac is not None and b2bua.call.uac.state is LegState.REANSWERING
    moved = sdp("moved", ("audio", "video"))
    b2bua.callee(AckIn(moved))
    assert b2bua.rewrites[-1].op is BridgeOp.VIDEO_REANSWER
    assert b2bua.rewrites[-1].sdp == moved
    assert b2bua.call.connected and b2bua.call.uac.state is LegState.CONNECTED
    b2bua.caller(ReinviteIn(sdp("hold")))  # the call goes on: the next offer is relayed
    assert b2bua.to(UAC)[-1] == "SendReinvite"


def test_an_unusable_ack_answer_to_our_reoffer_clears_the_call() -> None:
    b2bua = connected()
    b2bua.auto = False
    b2bua.callee(ReinviteIn(None))
    b2bua.callee(AckIn(sdp("moved", ("audio",))))
    b2bua.fail_next = BadAnswer("video", sdp("ours", ("audio", "video")), sdp("moved"))
    b2bua.finish_rewrite()
    assert b2bua.to(UAC)[-1] == "SendBye" and b2bua.to(UAS)[-1] == "SendBye"
    assert b2bua.ended[0].outcome.result is CallResult.FAILED


def test_bye_from_either_side_ends_the_call_with_its_reason() -> None:
    for role, other in ((UAS, UAC), (UAC, UAS)):
        b2bua = connected()
        reason = ("Reason", 'SIP ;cause=200;text="hung up"')
        (b2bua.caller if role is UAS else b2bua.callee)(ByeIn(reason))
        assert b2bua.last(other) == SendBye(reason)
        assert b2bua.ended[0].outcome.result is CallResult.COMPLETED


def test_a_2xx_never_acked_byes_both_legs() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    b2bua.tick(32.0)
    b2bua.caller(AckTimeout())
    assert b2bua.to(UAS)[-1] == "SendBye" and b2bua.to(UAC)[-1] == "SendBye"
    assert b2bua.ended[0].outcome == Outcome(CallResult.FAILED, "no ACK (64*T1)")


def test_ice_failure_before_the_answer_refuses_the_caller_and_cancels_the_callee() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    b2bua.run(b2bua.call.media_failed("failed to get media connectivity", b2bua.now))
    reject = b2bua.last(UAS)
    assert isinstance(reject, SendReject) and reject.status == 488
    assert b2bua.to(UAC)[-1] == "SendCancel"


def test_delayed_offer_the_answer_comes_in_the_ack() -> None:
    b2bua = B2bua(inbound=LegSide.VIDEO)
    b2bua.invite(None)
    b2bua.callee(ResponseIn(200, "OK", sdp("fe", ("audio", "video"))))
    answer = b2bua.last(UAS)
    assert isinstance(answer, SendAnswer) and answer.sdp is not None
    assert answer.sdp.origin.username == "delayed_video_offer"
    b2bua.caller(AckIn(sdp("cucm", ("audio", "video"))))
    assert [r.op for r in b2bua.rewrites] == [
        BridgeOp.DELAYED_OFFER, BridgeOp.DELAYED_VIDEO_OFFER, BridgeOp.DELAYED_VIDEO_ANSWER]
    assert b2bua.call.connected


def test_delayed_offer_an_ack_without_answer_clears_the_call() -> None:
    b2bua = B2bua(inbound=LegSide.VIDEO)
    b2bua.invite(None)
    b2bua.callee(ResponseIn(200, "OK", sdp("fe")))
    b2bua.caller(AckIn(None))
    assert b2bua.to(UAS)[-1] == "SendBye" and b2bua.to(UAC)[-1] == "SendBye"
    assert b2bua.ended


# -- early media ----------------------------------------------------------------------------


def test_early_media_the_183_sdp_is_rewritten_applied_and_relayed_before_the_200() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller", ("audio", "video")))
    early = sdp("callee", ("audio", "video"))
    b2bua.callee(ResponseIn(183, "Session Progress", early))
    progress = b2bua.last(UAS)
    assert isinstance(progress, SendProvisional) and progress.status == 183
    assert progress.sdp is not None and progress.sdp.origin.username == "video_answer"
    assert b2bua.call.uas.state is LegState.EARLY_MEDIA
    assert b2bua.call.state is CallState.RINGING
    b2bua.callee(ResponseIn(200, "OK", early))  # the same answer: nothing rewritten again
    assert [r.op for r in b2bua.rewrites] == [BridgeOp.MICROSOFT_OFFER, BridgeOp.VIDEO_ANSWER]
    assert b2bua.last(UAS) == SendAnswer(progress.sdp)


def test_early_media_a_200_with_another_answer_is_applied_again() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(183, "Session Progress", sdp("early")))
    b2bua.callee(ResponseIn(200, "OK", sdp("final")))
    assert b2bua.rewrites[-1].op is BridgeOp.FINAL_ANSWER
    answer = b2bua.last(UAS)
    assert isinstance(answer, SendAnswer) and answer.sdp is not None
    assert answer.sdp.origin.username == "final_answer"


def test_early_media_a_200_while_the_183_is_rewritten_waits_for_it() -> None:
    b2bua = B2bua(auto=False)
    b2bua.invite(sdp("caller"))
    b2bua.finish_rewrite()
    early = sdp("callee")
    b2bua.callee(ResponseIn(183, "Session Progress", early))
    b2bua.callee(ResponseIn(200, "OK", early))
    assert b2bua.to(UAS) == []
    b2bua.finish_rewrite()
    assert b2bua.to(UAS) == ["SendProvisional", "SendAnswer"]


def test_a_caller_without_early_media_gets_the_183_without_sdp() -> None:
    b2bua = B2bua(early_media=False)
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(183, "Session Progress", sdp("callee")))
    assert b2bua.last(UAS) == SendProvisional(183, "Session Progress")
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    assert b2bua.rewrites[-1].op is BridgeOp.VIDEO_ANSWER


def test_an_early_answer_breaking_rfc_3264_gives_502_and_cancels_the_callee() -> None:
    b2bua = answered_against_rfc_3264(183, "Session Progress")
    assert b2bua.to(UAC)[-1] == "SendCancel"


# -- UPDATE -------------------------------------------------------------------------------


def test_an_update_with_sdp_mid_call_is_relayed_as_an_offer_and_answered() -> None:
    b2bua = connected()
    b2bua.callee(UpdateIn(sdp("cucm-update")))
    assert b2bua.call.uac is not None and b2bua.call.uac.state is LegState.UPDATING
    assert b2bua.to(UAS)[-1] == "SendReinvite"
    b2bua.caller(ResponseIn(200, "OK", sdp("fe-answer")))
    answer = b2bua.last(UAC)
    assert isinstance(answer, SendUpdateAnswer) and answer.sdp is not None
    assert answer.sdp.origin.username == "microsoft_answer"


# -- session timers (RFC 4028) and 100rel (RFC 3262) ----------------------------------------


def test_a_callee_refreshing_keeps_the_call_and_silence_clears_it_with_bye() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    cucm = Session(90, Refresher.UAS, Refresher.UAC)  # the callee refreshes
    b2bua.callee(ResponseIn(200, "OK", sdp("callee"), session=cucm))
    b2bua.caller(AckIn())
    uac = b2bua.call.uac
    assert uac is not None and uac.timer is not None
    assert uac.timer.get_timer() == 60.0 and uac.timer.refresh_at is None  # 90 - min(32, 30)
    b2bua.tick(50.0)
    b2bua.callee(RefreshIn(Session(90, Refresher.UAC, Refresher.UAS)))
    b2bua.tick(50.0)  # 100 s: alive thanks to the refresh at 50 s
    b2bua.callee(TimerFired())
    assert not b2bua.ended and uac.timer.get_timer() == 110.0
    b2bua.tick(10.0)
    b2bua.callee(TimerFired())
    bye = b2bua.last(UAC)
    assert isinstance(bye, SendBye) and bye.reason is not None and "cause=408" in bye.reason[1]
    assert b2bua.to(UAS)[-1] == "SendBye"  # the caller's leg is cleared too
    assert b2bua.ended[0].outcome.result is CallResult.FAILED


def test_the_refresher_refreshes_half_way_and_a_481_ends_the_session() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    ours = Session(120, Refresher.UAC, Refresher.UAC)  # we refresh the callee's leg
    b2bua.callee(ResponseIn(200, "OK", sdp("callee"), session=ours))
    b2bua.caller(AckIn())
    b2bua.tick(60.0)
    b2bua.callee(TimerFired())
    assert b2bua.to(UAC)[-1] == "SendRefresh"
    b2bua.callee(RefreshAnswered(200))
    b2bua.tick(60.0)
    b2bua.callee(TimerFired())
    assert b2bua.to(UAC).count("SendRefresh") == 2
    b2bua.callee(RefreshAnswered(481))
    assert b2bua.to(UAC)[-1] == "SendBye" and b2bua.ended


def test_each_leg_has_its_own_session_timer() -> None:
    b2bua = B2bua(inbound=LegSide.VIDEO)
    caller = Session(90, Refresher.UAC, Refresher.UAS)  # the caller refreshes its leg
    b2bua.run(b2bua.call.invite(sdp("cucm"), b2bua.now, caller))
    b2bua.callee(ResponseIn(200, "OK", sdp("fe")))  # Microsoft set no timer
    b2bua.caller(AckIn())
    assert b2bua.call.uas.timer is not None and b2bua.call.uac is not None
    assert b2bua.call.uac.timer is None


def test_a_reliable_183_is_pracked_before_it_is_relayed() -> None:
    b2bua = B2bua()
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(183, "Session Progress", sdp("callee"), reliable=True))
    assert b2bua.to(UAC) == ["SendInvite", "SendPrack"]
    assert b2bua.to(UAS) == ["SendProvisional"]


def test_a_callee_hanging_up_while_its_answer_is_relayed_gets_the_caller_a_480() -> None:
    """The callee's BYE (after our ACK) wins the race with the rewrite of its answer: the
    caller's INVITE still gets a final response (it was left unanswered before)."""
    b2bua = B2bua(auto=False)
    b2bua.invite(sdp("caller"))
    b2bua.finish_rewrite()
    b2bua.callee(ResponseIn(180, "Ringing"))
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    assert b2bua.to(UAC) == ["SendInvite", "SendAck"]
    b2bua.callee(ByeIn(("Reason", "Q.850;cause=16")))
    final = b2bua.last(UAS)
    assert isinstance(final, SendReject) and final.status == 480, final
    assert final.headers == (("Reason", "Q.850;cause=16"),)
    assert b2bua.call.uas.state is LegState.DISCONNECTED
    assert b2bua.ended[0].outcome.result is CallResult.FAILED
    b2bua.finish_rewrite()  # the answer's rewrite ends: nothing more goes anywhere
    assert b2bua.to(UAS) == ["SendProvisional", "SendReject"]
    assert b2bua.to(UAC) == ["SendInvite", "SendAck", "Forget"]


def test_a_bye_in_the_callers_early_dialog_is_a_487_and_cancels_the_callee() -> None:
    """RFC 3261 §15.1.2: the caller BYEs the early dialog of our reliable 1xx; the INVITE
    gets 487 and the callee a CANCEL (before: no table row, a coding-error 500)."""
    b2bua = B2bua(inbound=LegSide.VIDEO)
    b2bua.invite(sdp("cucm"))
    b2bua.callee(ResponseIn(180, "Ringing"))
    b2bua.caller(ByeIn(None))
    assert b2bua.last(UAS) == SendReject(487, "Request Terminated")
    assert b2bua.to(UAC) == ["SendInvite", "SendCancel"]
    assert b2bua.ended[0].outcome.result is CallResult.CANCELLED


def test_a_reinvite_2xx_never_acked_byes_both_legs_with_408() -> None:
    """RFC 3261 §14.2 / §13.3.1.4 for a re-INVITE's 2xx (before: no row once connected,
    the call cleared as a gateway fault with cause 500)."""
    b2bua = connected()
    b2bua.callee(ReinviteIn(None))
    b2bua.tick(32.0)
    b2bua.callee(AckTimeout())
    bye_callee, bye_caller = b2bua.last(UAC), b2bua.last(UAS)
    assert isinstance(bye_callee, SendBye) and isinstance(bye_caller, SendBye)
    assert bye_callee.reason is not None and "cause=408" in bye_callee.reason[1]
    assert bye_caller.reason is not None and "cause=408" in bye_caller.reason[1]
    assert b2bua.ended[0].outcome.result is CallResult.FAILED


def test_a_cancelled_reinvite_cancels_the_relayed_one_and_gets_its_487() -> None:
    """RFC 3261 §9: the caller CANCELs its re-INVITE (Lync taking back "add video"): the
    relayed re-INVITE is CANCELled and the 487 that ends it answers the caller's."""
    b2bua = connected()
    b2bua.caller(ReinviteIn(sdp("video", ("audio", "video"))))
    assert b2bua.to(UAC)[-1] == "SendReinvite"
    b2bua.caller(CancelIn())
    assert b2bua.last(UAC) == CancelReinvite()
    assert b2bua.to(UAS)[-1] != "SendUpdateReject"  # not before the other side's answer
    b2bua.callee(ResponseIn(487, "Request Terminated"))
    assert b2bua.last(UAS) == SendUpdateReject(487, "Request Terminated")
    assert b2bua.call.connected and ResetBridge() in b2bua.others


def test_a_reinvite_cancelled_while_its_offer_is_rewritten_is_never_relayed() -> None:
    b2bua = connected()
    b2bua.auto = False
    b2bua.caller(ReinviteIn(sdp("video", ("audio", "video"))))
    b2bua.caller(CancelIn())
    b2bua.finish_rewrite()
    assert "SendReinvite" not in b2bua.to(UAC)
    assert b2bua.last(UAS) == SendUpdateReject(487, "Request Terminated")
    assert b2bua.call.connected


def test_a_cancel_crossing_the_relayed_2xx_lets_the_2xx_win() -> None:
    b2bua = connected()
    b2bua.caller(ReinviteIn(sdp("video", ("audio", "video"))))
    b2bua.caller(CancelIn())
    b2bua.callee(ResponseIn(200, "OK", sdp("cucm-video", ("audio", "video"))))
    answer = b2bua.last(UAS)
    assert isinstance(answer, SendUpdateAnswer) and answer.sdp is not None
    assert b2bua.call.connected


def test_a_relayed_reinvite_with_no_answer_at_all_ends_the_call() -> None:
    """RFC 3261 §12.2.1.2 (before: a 500 to the offerer and a call with a dead leg)."""
    b2bua = connected()
    b2bua.caller(ReinviteIn(sdp("hold")))
    b2bua.callee(Timeout())
    bye = b2bua.last(UAC)
    assert isinstance(bye, SendBye) and bye.reason is not None and "cause=408" in bye.reason[1]
    assert b2bua.to(UAS)[-2:] == ["SendUpdateReject", "SendBye"]
    assert [a for r, a in b2bua.sent if r is UAS][-2] == SendUpdateReject(487,
                                                                          "Request Terminated")
    assert b2bua.ended[0].outcome.result is CallResult.FAILED
