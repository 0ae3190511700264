"""sip.useragent helpers that stand without sockets."""

from __future__ import annotations

from sip.message import Request, parse_message
from sip.useragent import response_for

INVITE = (
    "{method} sip:3001@video.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 127.0.1.1:5061;branch=z9hG4bKfe1\r\n"
    "Via: SIP/2.0/TLS 127.0.1.10:50123;branch=z9hG4bKalice\r\n"
    "Record-Route: <sip:127.0.1.1:5061;transport=tls;lr>\r\n"
    "Record-Route: <sip:127.0.1.2:5061;transport=tls;lr;ms-role-rs-to>\r\n"
    "Max-Forwards: 69\r\n"
    "To: <sip:3001@video.example.com>{to_tag}\r\n"
    "From: <sip:alice.parkes@example.com>;tag=a1\r\n"
    "Call-ID: rr-1\r\n"
    "CSeq: 1 {method}\r\n"
    "Content-Length: 0\r\n\r\n"
)


def request(method: str = "INVITE", to_tag: str = "") -> Request:
    message = parse_message(INVITE.format(method=method, to_tag=to_tag).encode())
    assert isinstance(message, Request)
    return message


def test_dialog_forming_responses_copy_record_route_in_order() -> None:
    for status in (180, 200):
        response = response_for(request(), status, to_tag="b1", contact="<sip:3001@127.0.3.11>")
        assert response.headers.getlist("Record-Route") == [
            "<sip:127.0.1.1:5061;transport=tls;lr>",
            "<sip:127.0.1.2:5061;transport=tls;lr;ms-role-rs-to>",
        ]


def test_other_responses_do_not_carry_record_route() -> None:
    assert "Record-Route" not in response_for(request(), 100).headers
    assert "Record-Route" not in response_for(request(), 486, to_tag="b1").headers
    assert "Record-Route" not in response_for(request("OPTIONS"), 200, to_tag="b1").headers
    # a re-INVITE inside a dialog does not change the route set (RFC 3261 §12.2)
    assert "Record-Route" not in response_for(request(to_tag=";tag=b1"), 200, to_tag="b1").headers
