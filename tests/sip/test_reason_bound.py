"""Reason phrases we write are one bounded line (issue 12, defect 6): a reason that names
input must not echo it whole (over UDP each retransmission would reflect it)."""

from __future__ import annotations

from sip.errors import ParseError
from sip.message import MAX_REASON_LENGTH, bounded_reason, error_response, make_response
from tests.sip.helpers import make_request


def test_make_response_bounds_a_long_reason() -> None:
    request = make_request("INVITE", uri="sip:" + "9" * 5000 + "@example.com")
    response = make_response(request, 404, f"Not Found: no search rule matches {request.uri}")
    assert len(response.reason) == MAX_REASON_LENGTH
    assert response.reason.startswith("Not Found: no search rule matches sip:999")
    assert response.reason.endswith("...")
    assert len(response.encode()) < len(request.encode()) // 4
    short = make_response(request, 404, "Not Found")
    assert short.reason == "Not Found"
    assert make_response(request, 480).reason == "Temporarily Unavailable"


def test_control_characters_never_reach_the_status_line() -> None:
    assert bounded_reason("bad\r\nInjected: yes") == "bad Injected: yes"
    assert bounded_reason("x" * 20) == "x" * 20


def test_error_responses_are_bounded_too() -> None:
    data = make_request("OPTIONS").encode()
    answer = error_response(data, ParseError("bad header " + "h" * 3000))
    assert answer is not None
    status_line = answer.split(b"\r\n", 1)[0]
    assert len(status_line) <= len(b"SIP/2.0 400 ") + MAX_REASON_LENGTH
