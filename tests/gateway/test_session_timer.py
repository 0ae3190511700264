"""Session timers (RFC 4028): header codecs from the RFC's examples, the UAC and UAS
negotiation rules, and the refresh / expiry deadlines driven by hand-passed time."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.session_timer import (
    DEFAULT_INTERVAL,
    MIN_SE_FLOOR,
    Refresher,
    Reject,
    Session,
    SessionExpires,
    SessionTimer,
    TimerAction,
    TimerPolicy,
    UasAnswer,
    expiry_margin,
    interval_after_422,
    min_se_of,
    parse_min_se,
    refresh_headers,
    request_headers,
    session_expires_of,
    uac_negotiate,
    uas_negotiate,
)
from sip.errors import ParseError, RemoteProtocolError
from sip.message import Request, Response, make_response, parse_message
from tests.sip.helpers import make_request

DATA = Path(__file__).parent.parent / "data" / "sip" / "rfc4028"
VECTORS: dict[str, Any] = json.loads((DATA / "headers.json").read_text())


def load(name: str) -> Request | Response:
    return parse_message((DATA / name).read_bytes())


def invite(*headers: tuple[str, str]) -> Request:
    return make_request("INVITE", extra=(("Contact", "<sip:alice@127.0.0.1>"), *headers))


def ok_with(request: Request, *headers: tuple[str, str]) -> Response:
    response = make_response(request, 200, to_tag="b")
    for name, value in headers:
        response.headers.add(name, value)
    return response


# -- codecs ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["session_expires_valid"], ids=lambda c: c["text"])
def test_session_expires_parses_and_formats(case: dict[str, Any]) -> None:
    se = SessionExpires.parse(case["text"])
    assert se.interval == case["interval"]
    assert se.refresher == (None if case["refresher"] is None else Refresher(case["refresher"]))
    assert str(se) == case["str"]
    assert SessionExpires.parse(str(se)) == se


@pytest.mark.parametrize("text", VECTORS["session_expires_invalid"])
def test_malformed_session_expires_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        SessionExpires.parse(text)


@pytest.mark.parametrize("case", VECTORS["min_se_valid"], ids=lambda c: c["text"])
def test_min_se_parses(case: dict[str, Any]) -> None:
    assert parse_min_se(case["text"]) == case["value"]


@pytest.mark.parametrize("text", VECTORS["min_se_invalid"])
def test_malformed_min_se_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_min_se(text)


def test_compact_form_x_is_session_expires() -> None:
    # RFC 4028 §4: "x: 4000;refresher=uac" is the compact form.
    request = invite(("x", "4000;refresher=uac"))
    assert session_expires_of(request) == SessionExpires(4000, Refresher.UAC)


def test_repeated_single_valued_headers_are_refused() -> None:
    with pytest.raises(ParseError):
        session_expires_of(invite(("Session-Expires", "90"), ("Session-Expires", "100")))
    with pytest.raises(ParseError):
        min_se_of(invite(("Min-SE", "90"), ("Min-SE", "100")))
    assert session_expires_of(invite()) is None and min_se_of(invite()) is None


def test_policy_rejects_values_below_the_rfc_floor() -> None:
    with pytest.raises(ValueError, match="min_se"):
        TimerPolicy(min_se=60)
    with pytest.raises(ValueError, match="below min_se"):
        TimerPolicy(interval=100, min_se=120)
    assert TimerPolicy().interval == DEFAULT_INTERVAL == 1800


# -- UAS (§9) ----------------------------------------------------------------------------


def test_uas_refuses_an_interval_below_its_minimum_with_422_and_min_se() -> None:
    decision = uas_negotiate(invite(("Session-Expires", "100"), ("Supported", "timer")),
                             TimerPolicy(interval=1800, min_se=1800))
    assert isinstance(decision, Reject)
    assert (decision.status, decision.headers) == (422, (("Min-SE", "1800"),))
    assert decision.reason == "Session Interval Too Small"


def test_uas_refuses_below_the_rfc_floor_even_with_a_low_min_se_in_the_request() -> None:
    decision = uas_negotiate(invite(("Session-Expires", "60"), ("Min-SE", "60")), TimerPolicy())
    assert decision == Reject(MIN_SE_FLOOR)


def test_uas_honours_the_refresher_the_uac_chose() -> None:
    for chosen in Refresher:
        answer = uas_negotiate(
            invite(("Supported", "timer"), ("Session-Expires", f"90;refresher={chosen.value}"),
                   ("Min-SE", "90")), TimerPolicy())
        assert isinstance(answer, UasAnswer) and answer.session is not None
        assert answer.session == Session(90, chosen, Refresher.UAS)
        assert answer.session.local_refresher is (chosen is Refresher.UAS)
        require = [("Require", "timer")] if chosen is Refresher.UAC else []
        assert list(answer.headers) == [
            ("Session-Expires", f"90;refresher={chosen.value}"), *require]


def test_uas_chooses_uac_when_the_uac_supports_timer_and_did_not_choose() -> None:
    request = load("cucm_invite_timer.sip")
    assert isinstance(request, Request)
    answer = uas_negotiate(request, TimerPolicy())
    assert isinstance(answer, UasAnswer)
    # Session-Expires 1800, Min-SE 1800 (CUCM's defaults): granted as asked, UAC refreshes.
    assert answer.session == Session(1800, Refresher.UAC, Refresher.UAS)
    assert answer.headers == (("Session-Expires", "1800;refresher=uac"), ("Require", "timer"))


def test_uas_keeps_the_current_refresher_on_a_refresh_without_one() -> None:
    answer = uas_negotiate(invite(("Supported", "timer"), ("Session-Expires", "600")),
                           TimerPolicy(), keep=Refresher.UAS)
    assert isinstance(answer, UasAnswer)
    assert answer.session == Session(600, Refresher.UAS, Refresher.UAS)
    assert answer.headers == (("Session-Expires", "600;refresher=uas"),)


def test_uas_refreshes_itself_when_the_uac_does_not_support_timer() -> None:
    # A Session-Expires (put in by a proxy) without Supported: timer from the UAC.
    answer = uas_negotiate(invite(("Session-Expires", "300")), TimerPolicy())
    assert isinstance(answer, UasAnswer)
    assert answer.session == Session(300, Refresher.UAS, Refresher.UAS)
    assert ("Require", "timer") not in answer.headers


def test_uas_reduces_a_long_interval_to_its_own_but_not_below_the_requests_min_se() -> None:
    policy = TimerPolicy(interval=600, min_se=90)
    reduced = uas_negotiate(invite(("Supported", "timer"), ("Session-Expires", "7200")), policy)
    assert isinstance(reduced, UasAnswer) and reduced.session is not None
    assert reduced.session.interval == 600
    bounded = uas_negotiate(invite(("Supported", "timer"), ("Session-Expires", "7200"),
                                   ("Min-SE", "3600")), policy)
    assert isinstance(bounded, UasAnswer) and bounded.session is not None
    assert bounded.session.interval == 3600
    shorter = uas_negotiate(invite(("Supported", "timer"), ("Session-Expires", "120")), policy)
    assert isinstance(shorter, UasAnswer) and shorter.session is not None
    assert shorter.session.interval == 120  # never raised above what was asked


def test_uas_without_session_expires_uses_its_policy_or_nothing() -> None:
    supported = uas_negotiate(invite(("Supported", "timer"), ("Min-SE", "2400")),
                              TimerPolicy(interval=1800))
    assert isinstance(supported, UasAnswer)
    assert supported.session == Session(2400, Refresher.UAC, Refresher.UAS)
    assert supported.headers == (("Session-Expires", "2400;refresher=uac"), ("Require", "timer"))
    plain = uas_negotiate(invite(), TimerPolicy(interval=900))
    assert isinstance(plain, UasAnswer)
    assert plain.session == Session(900, Refresher.UAS, Refresher.UAS)
    assert plain.headers == (("Session-Expires", "900;refresher=uas"),)
    assert uas_negotiate(invite(("Supported", "timer")), TimerPolicy(enabled=False)) == \
        UasAnswer(None)


def test_uas_negotiation_propagates_parse_errors() -> None:
    with pytest.raises(ParseError):
        uas_negotiate(invite(("Session-Expires", "90;refresher=me")), TimerPolicy())
    with pytest.raises(ParseError):
        uas_negotiate(invite(("Session-Expires", "90"), ("Min-SE", "x")), TimerPolicy())


# -- UAC (§7) ----------------------------------------------------------------------------


def test_uac_request_headers_and_the_retry_after_422() -> None:
    policy = TimerPolicy(interval=90, min_se=90)
    assert request_headers(policy) == (("Session-Expires", "90"), ("Min-SE", "90"))
    too_small = load("too_small_422.sip")
    assert isinstance(too_small, Response)
    retry = interval_after_422(too_small, 90)
    assert retry == 1800
    assert request_headers(policy, interval=retry, refresher=Refresher.UAC) == (
        ("Session-Expires", "1800;refresher=uac"), ("Min-SE", "1800"))


def test_a_422_without_a_usable_min_se_is_the_peers_fault() -> None:
    request = invite(("Session-Expires", "90"))
    bare = make_response(request, 422)
    with pytest.raises(RemoteProtocolError, match="without Min-SE"):
        interval_after_422(bare, 90)
    same = make_response(request, 422)
    same.headers.add("Min-SE", "90")
    with pytest.raises(RemoteProtocolError, match="not above"):
        interval_after_422(same, 90)
    garbled = make_response(request, 422)
    garbled.headers.add("Min-SE", "soon")
    with pytest.raises(RemoteProtocolError, match="malformed"):
        interval_after_422(garbled, 90)
    with pytest.raises(ValueError):
        interval_after_422(make_response(request, 200), 90)


def test_uac_takes_the_interval_and_refresher_of_the_2xx() -> None:
    ok = load("ok_refresher_uas.sip")
    assert isinstance(ok, Response)
    session = uac_negotiate(ok)
    # CUCM as UAS with "Session-Expires: 90;refresher=uas": CUCM refreshes, we watch.
    assert session == Session(90, Refresher.UAS, Refresher.UAC)
    assert not session.local_refresher
    request = invite(("Supported", "timer"), ("Session-Expires", "1800"))
    assert uac_negotiate(ok_with(request, ("Session-Expires", "1800;refresher=uac"),
                                 ("Require", "timer"))) == \
        Session(1800, Refresher.UAC, Refresher.UAC)
    # §7.2: no Session-Expires in the 2xx, no session expiration.
    assert uac_negotiate(ok_with(request)) is None
    # A 2xx without refresher: we refresh (keeps the session alive either way).
    assert uac_negotiate(ok_with(request, ("Session-Expires", "1800"))) == \
        Session(1800, Refresher.UAC, Refresher.UAC)
    with pytest.raises(RemoteProtocolError):
        uac_negotiate(ok_with(request, ("Session-Expires", "30;refresher=uac")))


@pytest.mark.parametrize(
    ("refresher", "local_role", "we_send", "expected"),
    [
        (r, role, we_send,
         (Refresher.UAC if we_send else Refresher.UAS) if r is role
         else (Refresher.UAS if we_send else Refresher.UAC))
        for r, role, we_send in itertools.product(Refresher, Refresher, (True, False))
    ],
)
def test_refresher_for_keeps_the_same_side_refreshing_across_transactions(
    refresher: Refresher, local_role: Refresher, we_send: bool, expected: Refresher
) -> None:
    session = Session(90, refresher, local_role)
    assert session.refresher_for(we_send=we_send) is expected
    # Negotiating the next transaction with that value keeps the same side refreshing.
    next_session = Session(90, expected, Refresher.UAC if we_send else Refresher.UAS)
    assert next_session.local_refresher is session.local_refresher


def test_refresh_headers_keep_us_refreshing() -> None:
    session = Session(90, Refresher.UAS, Refresher.UAS)  # we answered and refresh
    assert refresh_headers(session, TimerPolicy()) == (
        ("Session-Expires", "90;refresher=uac"), ("Min-SE", "90"), ("Supported", "timer"))


# -- timing (§10) ------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [90, 96, 100, 1800, 3600])
def test_expiry_margin_is_the_smaller_of_32_s_and_a_third(interval: int) -> None:
    assert expiry_margin(interval) == min(32, interval / 3)
    session = Session(interval, Refresher.UAC, Refresher.UAS)
    assert session.expire_after == interval - min(32, interval / 3)
    assert session.refresh_after == interval / 2
    assert session.refresh_after < session.expire_after  # the refresh always comes first


def test_the_non_refresher_gives_up_at_60_s_of_a_90_s_session() -> None:
    # The CUCM trunk: Session-Expires 90;refresher=uas from CUCM as UAS.
    timer = SessionTimer(Session(90, Refresher.UAS, Refresher.UAC), now=1000.0)
    assert timer.refresh_at is None
    assert timer.get_timer() == 1060.0  # 90 - min(32, 30)
    assert timer.handle_timer(1059.9) is None
    # CUCM refreshes at 45 s: the deadline moves.
    timer.refreshed(Session(90, Refresher.UAC, Refresher.UAS), now=1045.0)
    assert timer.get_timer() == 1105.0
    assert timer.handle_timer(1104.0) is None
    assert timer.handle_timer(1105.0) is TimerAction.EXPIRE
    assert timer.expired and timer.get_timer() is None
    assert timer.handle_timer(2000.0) is None  # EXPIRE is reported once


def test_the_refresher_refreshes_at_half_the_interval_until_it_fails() -> None:
    session = Session(1800, Refresher.UAC, Refresher.UAC)
    timer = SessionTimer(session, now=0.0)
    assert timer.get_timer() == 900.0
    assert timer.handle_timer(899.0) is None
    assert timer.handle_timer(900.0) is TimerAction.REFRESH
    # While the refresh is in flight only the expiry is armed.
    assert timer.get_timer() == 1800 - 32
    assert timer.handle_timer(901.0) is None
    timer.refreshed(session, now=901.0)
    assert timer.get_timer() == 1801.0
    assert timer.handle_timer(1801.0) is TimerAction.REFRESH
    # 491 glare: retry after the delay given.
    assert timer.refresh_failed(491, 1801.5, retry_after=2.5) is None
    assert timer.get_timer() == 1804.0
    assert timer.handle_timer(1804.0) is TimerAction.REFRESH
    # A 500: the session stands until its expiry, and then it is given up.
    assert timer.refresh_failed(500, 1804.5) is None
    assert timer.get_timer() == 901.0 + 1800 - 32
    assert timer.handle_timer(901.0 + 1800 - 32) is TimerAction.EXPIRE


@pytest.mark.parametrize("status", [None, 408, 481])
def test_a_refresh_timing_out_or_408_481_ends_the_session_at_once(status: int | None) -> None:
    timer = SessionTimer(Session(90, Refresher.UAC, Refresher.UAC), now=0.0)
    assert timer.handle_timer(45.0) is TimerAction.REFRESH
    assert timer.refresh_failed(status, 50.0) is TimerAction.EXPIRE
    assert timer.expired and timer.get_timer() is None
    assert timer.refresh_failed(408, 51.0) is None


def test_a_retry_never_goes_past_the_expiry_and_only_the_refresher_retries() -> None:
    timer = SessionTimer(Session(90, Refresher.UAC, Refresher.UAC), now=0.0)
    assert timer.handle_timer(45.0) is TimerAction.REFRESH
    timer.refresh_failed(491, 58.0, retry_after=4.0)
    assert timer.refresh_at == 60.0 == timer.expire_at
    assert timer.handle_timer(60.0) is TimerAction.EXPIRE
    watcher = SessionTimer(Session(90, Refresher.UAS, Refresher.UAC), now=0.0)
    watcher.refresh_failed(491, 10.0, retry_after=1.0)
    assert watcher.refresh_at is None


def test_a_renegotiated_refresher_switches_the_deadlines() -> None:
    timer = SessionTimer(Session(120, Refresher.UAS, Refresher.UAC), now=0.0)
    assert timer.refresh_at is None
    timer.refreshed(Session(120, Refresher.UAC, Refresher.UAC), now=30.0)
    assert (timer.refresh_at, timer.expire_at) == (90.0, 30.0 + 120 - 32)


def test_exhaustively_every_deadline_sequence_ends_in_one_expire() -> None:
    """For each interval and role, stepping time second by second without refreshes
    yields at most one REFRESH, then exactly one EXPIRE at interval - min(32, interval/3)."""
    for interval, refresher, role in itertools.product(
        (90, 91, 95, 96, 97, 120, 300), Refresher, Refresher
    ):
        session = Session(interval, refresher, role)
        timer = SessionTimer(session, now=0.0)
        actions: list[tuple[float, TimerAction]] = []
        now = 0.0
        while (deadline := timer.get_timer()) is not None:
            assert deadline >= now
            now = deadline
            action = timer.handle_timer(now)
            assert action is not None
            actions.append((now, action))
        expected: list[tuple[float, TimerAction]] = []
        if session.local_refresher:
            expected.append((interval / 2, TimerAction.REFRESH))
        expected.append((interval - min(32, interval / 3), TimerAction.EXPIRE))
        assert actions == expected, (interval, refresher, role)
