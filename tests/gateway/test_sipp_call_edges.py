"""Call-control edge cases of RFC 3261/3311 judged by SIPp over the gateway's real listeners
(`gateway run`, the FE's mutual TLS through stunnel, CUCM over TCP): races between a BYE
and an answer in flight, a second offer while one is pending, re-INVITE glare, in-dialog
requests that do not belong, and the callee's refusals on their way back to the caller.
Scenario files are under tests/data/sipp; what the gateway does in each case, and why, is
in docs/call-control.md ("Edge cases").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import (
    RunningGateway,
    idle,
    require_peers,
    run_gateway,
    scenario,
)
from tests.gateway.test_sipp_call_features import (
    SETTLE,
    both_succeeded,
    cucm_call,
    fe_call,
    received,
)

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    # SIPp playing the FE does no ICE: calls must outlive ICE's timeout.
    with run_gateway(pki, tmp_path_factory.mktemp("gateway"),
                     overrides=["b2bua.ice_timeout=120"]) as running:
        yield running


def test_callee_hanging_up_as_it_answers_still_ends_the_callers_invite(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM answers and BYEs on our ACK, while the gateway may still be relaying its 200 to
    the FE. The FE's INVITE must get a final response either way: the 200 then our BYE, or
    480 (the callee left before the caller was answered). Before the fix the INVITE was
    left pending when the BYE won the race (the call ended without answering it)."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_bye_on_ack.xml",
                                      fe_file="lync_fe_uac_callee_gone.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    finals = received(caller.messages, "SIP/2.0 200 ") + received(caller.messages, "SIP/2.0 480 ")
    assert len(finals) >= 1, context
    gateway.wait_status(idle, SETTLE, "no call and no port after the callee left")


def test_a_second_reinvite_while_the_first_is_pending_gets_500_with_retry_after(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §14.2: CUCM re-INVITEs (relayed to the FE, which answers 1.5 s later) and at
    once re-INVITEs again; the second gets 500 with Retry-After 0-10 from the gateway (not
    491, which says the *gateway* has an offer out), the first its 200, and the FE sees
    only the first."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_overlapping_reinvite.xml",
                                      fe_file="lync_fe_uac_slow_reinvite_answer.xml",
                                      timeout=40.0)
    both_succeeded(caller, callee, context)
    assert len(received(caller.messages, "INVITE sip:")) == 1, context
    gateway.wait_status(idle, SETTLE, "no call and no port after the overlapping re-INVITE")


def test_in_dialog_strays_are_refused_and_the_call_goes_on(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM, in a connected call, sends OPTIONS (200), INFO with a wrong To tag (481), a
    re-INVITE with a lower CSeq (500), one requiring "foo"
    (420 + Unsupported), a CANCEL matching nothing (481), then BYE: the call survived
    every stray, and the FE gets the BYE. Nothing of the strays reaches the FE."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_stray_requests.xml",
                                      fe_file="lync_fe_uac_cleared.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    assert not received(caller.messages, "INVITE sip:"), context
    assert not received(caller.messages, "INFO sip:"), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the strays")


def final_of(messages: str) -> str:
    """The final response SIPp received to its INVITE (status line and headers)."""
    finals = [m for m in received(messages, "SIP/2.0 ")
              if not re.search(r"^SIP/2.0 1\d\d ", m, re.M)]
    assert len(finals) == 1, messages
    return finals[0]


@pytest.mark.parametrize(
    ("callee", "expected", "absent"),
    [
        # (status, reason, extra header, Q.850 cause) -> status line the FE gets, and what it
        # must not see.
        ((486, "Busy Here", "X-Test: none", 17), "486 Busy Here", None),
        ((603, "Decline", "X-Test: none", 21), "603 Decline", None),
        ((404, "Not Found", "X-Test: none", 1), "404 Not Found", None),
        # RFC 3261 §16.7 / §21.5.4: the callee's 503 (and its Retry-After) would tell the FE
        # that the *gateway* is unavailable.
        ((503, "Service Unavailable", "Retry-After: 60", 34), "500 ", "Retry-After"),
        # A redirect cannot be followed by the caller through a B2BUA (no Contact of the
        # video side leaks to Microsoft).
        ((302, "Moved Temporarily", "Contact: <sip:3002@127.0.3.1:5060>", 16), "480 ",
         "Contact"),
        # The callee challenges the gateway's INVITE: the caller has no credential to give.
        ((407, "Proxy Authentication Required",
          'Proxy-Authenticate: Digest realm="cucm", nonce="abc"', 21), "403 ",
         "Proxy-Authenticate"),
    ],
    ids=["486", "603", "404", "503", "302", "407"])
def test_the_callees_refusal_reaches_the_caller_as_a_b2bua_should_relay_it(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path,
    callee: tuple[int, str, str, int], expected: str, absent: str | None
) -> None:
    status, reason, header, cause = callee
    refusing = tmp_path / f"cucm_uas_refuses_{status}.xml"
    refusing.write_text(scenario("cucm_uas_refuses.xml").read_text().replace(
        "SIP/2.0 486 [reason]", f"SIP/2.0 {status} [reason]"))
    caller, cucm, context = fe_call(
        gateway, pki, tmp_path, str(refusing), fe_file="lync_fe_uac_refused.xml",
        cucm_keys={"reason": reason, "header": header, "cause": str(cause)})
    both_succeeded(caller, cucm, context)  # CUCM got the gateway's ACK, the FE a final
    final = final_of(caller.messages)
    assert re.search(rf"^SIP/2.0 {expected}", final, re.M), context
    assert re.search(rf"^Reason: Q.850;cause={cause}", final, re.M), final
    if absent is not None:
        assert not re.search(rf"^{absent}:", final, re.M), final
    gateway.wait_status(idle, SETTLE, "no call and no port after the refusal")


def test_reinvite_glare_gets_491_both_ways_and_the_retry_goes_through(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §14.1: the FE's hold is relayed to CUCM just as CUCM re-INVITEs. The
    gateway answers CUCM's re-INVITE 491 (its own is out), relays CUCM's 491 for the hold
    to the FE (ACKing it), and the FE's retry 2.5 s later is relayed and answered: the call
    is held, then cleared by the FE's BYE. The gateway does not retry on its own: the 491
    goes back to whoever made the offer, who owns the §14.1 timer."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_glare.xml",
                                      fe_file="lync_fe_uac_glare.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    assert len(received(callee.messages, "INVITE sip:")) == 3, context  # call, hold, retry
    gateway.wait_status(idle, SETTLE, "no call and no port after the glare")


def test_bye_crossing_a_relayed_reinvite_ends_both_the_reinvite_and_the_call(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM BYEs while the FE's hold (relayed to it) is unanswered: the FE's re-INVITE gets
    487 and the FE the gateway's BYE; CUCM's late 487 for the relayed re-INVITE is ACKed."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_bye_during_reinvite.xml",
                                      fe_file="lync_fe_uac_reinvite_cut.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    gateway.wait_status(idle, SETTLE, "no call and no port after the BYE crossing the hold")


def test_a_picture_fast_update_info_is_relayed_and_other_info_bodies_get_415(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM asks for a key frame (INFO application/media_control+xml, RFC 5168): the FE
    gets the INFO in its dialog, its 200 comes back to CUCM. CUCM's DTMF INFO gets 415 with
    Accept naming what is relayed (before: 501 to both)."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_info.xml",
                                      fe_file="lync_fe_uac_info.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    (info,) = received(caller.messages, "INFO sip:")
    assert "dtmf" not in info, info
    gateway.wait_status(idle, SETTLE, "no call and no port after the INFO")


def test_a_picture_fast_update_from_microsoft_reaches_the_video_side(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """The other way: the FE's INFO key frame request reaches CUCM in its dialog and
    CUCM's 200 comes back to the FE."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_takes_info.xml",
                                      fe_file="lync_fe_uac_sends_info.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    gateway.wait_status(idle, SETTLE, "no call and no port after the FE's INFO")


def test_a_cancel_after_the_200_is_answered_200_and_the_call_stays_up(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §9.2: CUCM CANCELs after our 200 reached it. The CANCEL gets 200, no 487
    follows, nothing reaches the FE but the ACK and, later, CUCM's BYE."""
    caller, callee, context = cucm_call(gateway, pki, tmp_path, "cucm_uac_cancel_after_200.xml",
                                        fe_file="lync_fe_uas_plain.xml")
    both_succeeded(caller, callee, context)
    assert not received(caller.messages, "SIP/2.0 487 "), context
    assert not received(callee.messages, "CANCEL "), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the late CANCEL")


def test_a_bye_in_the_early_dialog_of_a_reliable_provisional_terminates_the_invite(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §15, §15.1.2: CUCM (Require: 100rel) PRACKs our reliable 180 and BYEs in
    that early dialog. The BYE gets 200, its INVITE 487, and the FE our CANCEL (before: a
    "coding error" 500 to the INVITE, the leg table having no row for it)."""
    caller, callee, context = cucm_call(
        gateway, pki, tmp_path, "cucm_uac_100rel_early_bye.xml",
        fe_file="lync_fe_uas_cancelled.xml",
        cucm_keys={"domain": "example.com", "caller": "3001",
                   "caller_domain": "video.example.com"})
    both_succeeded(caller, callee, context)
    assert "coding error" not in gateway.log(), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the early BYE")


def test_a_delayed_offer_reinvite_gets_our_offer_and_its_ack_answer_is_taken(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM's re-INVITE without SDP (media reconnect after a transfer): our 200 offers the
    call's SDP (plain, audio and video), CUCM ACKs with an answer from new ports, and the
    call goes on to CUCM's BYE without a fault (before: the ACK's answer was dropped; the
    move of the media itself is asserted in memory, test_agent_harness.py, since SIPp's FE
    does no ICE and so carries no media here)."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_delayed_reinvite.xml",
                                      fe_file="lync_fe_uac_cleared.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    assert not received(caller.messages, "INVITE sip:"), context
    log = gateway.log()
    assert "coding error" not in log and "unusable SDP in ACK" not in log, context
    assert "the video side answered our offer in its ACK" in log, context
    gateway.wait_status(idle, SETTLE, "no call and no port after the delayed-offer re-INVITE")


def test_a_reinvite_2xx_never_acked_ends_the_call_with_bye_408(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §13.3.1.4, §14.2: CUCM never ACKs our 2xx to its re-INVITE; after 64*T1
    both legs get a BYE with cause 408 (before: the caller's leg had no row for a missing
    ACK once connected, so the call was cleared as a gateway fault, cause 500, with a
    traceback)."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_reinvite_no_ack.xml",
                                      fe_file="lync_fe_uac_cleared.xml", timeout=70.0)
    both_succeeded(caller, callee, context)
    assert "coding error" not in gateway.log(), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the missing ACK")


def test_a_cancelled_reinvite_is_cancelled_on_the_other_leg_too(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §9: the FE CANCELs its re-INVITE while CUCM has only said 100. The gateway
    CANCELs the relayed re-INVITE, ACKs CUCM's 487 and answers the FE's re-INVITE with it;
    both sides keep the session they had. (Before: the FE got 487 at once while CUCM's
    re-INVITE stayed pending, so a CUCM that accepted it ran a session the FE had taken
    back.)"""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_cancelled_reinvite.xml",
                                      fe_file="lync_fe_uac_cancel_reinvite.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    assert len(received(callee.messages, "CANCEL ")) == 1, context
    gateway.wait_status(idle, SETTLE, "no call and no port after the cancelled re-INVITE")


def test_an_early_update_with_an_offer_is_refused_alone_and_the_call_connects(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3311 §5.1: CUCM, after its reliable 183 was PRACKed, sends UPDATE with a new
    offer in the early dialog. The gateway takes no offer before the answer: 488 to that
    UPDATE only, and the call connects and ends normally (before: no table row for it, so
    the call failed as a gateway fault, 500 to the FE)."""
    caller, callee, context = fe_call(gateway, pki, tmp_path,
                                      "cucm_uas_100rel_early_update.xml", timeout=40.0)
    both_succeeded(caller, callee, context)
    assert "coding error" not in gateway.log(), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the early UPDATE")


def test_a_relayed_reinvite_never_answered_ends_the_call(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """RFC 3261 §12.2.1.2: CUCM (having lost the call) never answers the FE's relayed hold.
    After 64*T1 the gateway BYEs CUCM (cause 408), answers the FE's re-INVITE 487 and BYEs
    the FE (before: the FE got 500 and stayed in a call with nobody on the other side)."""
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_reinvite_unanswered.xml",
                                      fe_file="lync_fe_uac_reinvite_cut.xml", timeout=70.0)
    both_succeeded(caller, callee, context)
    gateway.wait_status(idle, SETTLE, "no call and no port after the unanswered re-INVITE")


def test_a_second_forks_2xx_is_acked_and_byed(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM calls alice; the FE's fork is answered by two of her endpoints (200 with To
    tag "fe" and 200 with To tag "feB", RFC 3261 §13.2.2.4). The gateway's SIP stack must ACK
    both and BYE the second, then the call carries on in the first (lync_fe_uas_forked.xml
    fails otherwise; before the stack's fix it dropped the second 200 as stray)."""
    caller, callee, context = cucm_call(gateway, pki, tmp_path, "cucm_uac.xml",
                                        fe_file="lync_fe_uas_forked.xml")
    both_succeeded(caller, callee, context)
