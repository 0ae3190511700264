from __future__ import annotations

from pathlib import Path

import pytest

from sip.errors import LocalProtocolError, ParseError, ProtocolError
from sip.headers import Address, Via
from sip.message import (
    Headers,
    Request,
    Response,
    error_response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)
from sip.uri import URI

DATA = Path(__file__).parent.parent / "data" / "sip"

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@client.atlanta.example.com;transport=tls>\r\n"
    b"X-Custom:   exact  text ;with=odd,,spacing\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\n"
)


def test_parse_request() -> None:
    m = parse_message(INVITE)
    assert isinstance(m, Request)
    assert m.method == "INVITE" and m.uri == URI.parse("sip:bob@biloxi.example.com")
    assert m.top_via.branch == "z9hG4bK74bf9" and m.top_via.has_rport
    assert m.from_.tag == "9fxced76sl" and m.to.tag is None
    assert m.call_id == "3848276298220188511@atlanta.example.com"
    assert (m.cseq.seq, m.cseq.method, m.max_forwards) == (1, "INVITE", 70)
    assert m.contact[0].uri.transport == "tls"
    assert m.content_type == "application/sdp" and m.body == b"v=0\n"
    # Unknown headers keep their exact text.
    assert m.headers.get("x-custom") == "exact  text ;with=odd,,spacing"
    assert parse_message(m.encode()) == m
    # Only the space after the colon is normalised on the way out.
    assert m.encode() == INVITE.replace(b"X-Custom:   exact", b"X-Custom: exact")


def test_headers_lookup_and_edit() -> None:
    h = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"), ("Via", "SIP/2.0/UDP c")])
    assert h.get("VIA") == "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"
    assert h.getlist("via") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert "Via" in h and "v" in h and "Route" not in h
    h.prepend("Via", "SIP/2.0/TLS gw;branch=z9hG4bKgw")
    assert [n for n, _ in h] == ["Via", "v", "Via"]
    assert h.pop_first("via") == "SIP/2.0/TLS gw;branch=z9hG4bKgw"
    assert h.pop_first("via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get_all("via") == ["SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    h.set("Max-Forwards", 69)
    h.set("max-forwards", 68)
    assert h.get_all("Max-Forwards") == ["68"]
    c = h.copy()
    c.remove("Via")
    assert "Via" in h and "Via" not in c
    h.add("WWW-Authenticate", 'Digest realm="a, b", nonce="x"')
    assert h.getlist("WWW-Authenticate") == ['Digest realm="a, b", nonce="x"']
    with pytest.raises(LocalProtocolError):
        h.add("X-Evil", "a\r\nVia: injected")
    with pytest.raises(LocalProtocolError):
        h.add("Bad Name", "x")


def test_structured_headers_are_cached_until_a_change() -> None:
    m = parse_message(INVITE)
    first = m.via
    assert m.via is first  # parsed once
    via = Via("TLS", "gw.example.com", 5061).with_params(branch=new_branch())
    m.headers.prepend("Via", str(via))
    assert m.via is not first and m.top_via.host == "gw.example.com" and len(m.via) == 2


def test_a_change_reparses_only_that_header() -> None:
    m = parse_message(INVITE)
    from_, cseq, contact, vias = m.from_, m.cseq, m.contact, m.via
    m.headers.prepend("v", "SIP/2.0/TCP gw.example.com;branch=z9hG4bKnew")  # compact form
    assert m.from_ is from_ and m.cseq is cseq and m.contact is contact
    assert m.via is not vias and len(m.via) == len(vias) + 1
    m.headers.set("To", "<sip:someone.else@example.com>;tag=t2")
    assert m.to.tag == "t2" and m.to.uri.user == "someone.else" and m.from_ is from_
    m.headers.remove("m")
    assert m.contact == [] and "Contact" not in m.headers
    m.headers.pop_first("Via")
    assert [v.branch for v in m.via] == [v.branch for v in vias]
    m.headers.add("CSeq", "2 INVITE")  # a second CSeq is refused once it is there
    with pytest.raises(ParseError):
        m.cseq  # noqa: B018


def test_a_copy_keeps_what_was_parsed_and_changes_apart() -> None:
    m = parse_message(INVITE)
    vias = m.via
    copy = m.copy()
    assert copy.via is vias and copy.from_ is m.from_
    copy.headers.prepend("Via", "SIP/2.0/TCP gw.example.com;branch=z9hG4bKcopy")
    assert len(copy.via) == len(vias) + 1 and m.via is vias
    assert m.headers.get_all("Via") != copy.headers.get_all("Via")


def test_make_response_copies_per_rfc3261() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    tag = new_tag()
    r = make_response(req, 200, to_tag=tag, body=b"v=0\r\n", content_type="application/sdp")
    assert (r.status, r.reason) == (200, "OK")
    assert r.headers.get_all("Via") == req.headers.get_all("Via")
    assert r.from_ == req.from_ and r.to.tag == tag and r.to.uri == req.to.uri
    assert r.call_id == req.call_id and r.cseq == req.cseq
    assert r.headers.get("Timestamp") == "54"
    assert "Contact" not in r.headers and "Max-Forwards" not in r.headers
    back = parse_message(r.encode())
    assert back == r and back.body == b"v=0\r\n"
    # An existing To tag is kept, never doubled.
    bye = r.encode().replace(b"SIP/2.0 200 OK", b"BYE sip:a@b SIP/2.0")
    bye_request = parse_message(bye.replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE"))
    assert isinstance(bye_request, Request)
    assert make_response(bye_request, 200, to_tag="other").to.tag == tag
    with pytest.raises(LocalProtocolError):
        make_response(req, 200, body=b"x")


def test_build_request_from_scratch() -> None:
    h = Headers()
    h.add("Via", Via("UDP", "127.0.0.1", 5060).with_params(branch=new_branch(), rport=None))
    h.add("Max-Forwards", 70)
    h.add("From", Address(URI.parse("sip:gw@127.0.0.1"), "Gateway").with_tag(new_tag()))
    h.add("To", Address(URI.parse("sip:3001@127.0.0.1")))
    h.add("Call-ID", new_call_id("127.0.0.1"))
    h.add("CSeq", "1 OPTIONS")
    req = Request("OPTIONS", URI.parse("sip:3001@127.0.0.1"), h)
    wire = req.encode()
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")
    back = parse_message(wire)
    assert back.from_.display_name == "Gateway" and back.top_via.branch.startswith("z9hG4bK")  # type: ignore[union-attr]
    assert new_branch() != new_branch() and new_tag() != new_tag()


def test_encode_rewrites_content_length() -> None:
    m = parse_message(INVITE)
    m.body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    assert parse_message(m.encode()).body == m.body


def test_lync_invite() -> None:
    m = parse_message((DATA / "lync_invite.sip").read_bytes())
    assert isinstance(m, Request)
    assert m.via[1].params["ms-received-port"] == "51234"
    assert m.via[0].params["ms-internal-info"].startswith('"')  # type: ignore[union-attr]
    assert m.headers.getlist("Supported")[-3:] == ["timer", "histinfo", "ms-safe-transfer"]
    assert m.headers.get("ms-client-diagnostics") == '51004; reason="Action initiated by user"'
    assert m.record_route[0].params["tag"] == "9B6C3A2F5D1E8F7A"
    assert m.content_type is not None and m.content_type.startswith("multipart/alternative")
    assert parse_message(m.encode()) == m


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"INVITE sip:a@b SIP/2.0\r\n", 400),  # no blank line
        (b"INVITE sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n", 400),
        (b"SIP/2.0 99 Odd\r\n\r\n", 400),
        (b"SIP/3.0 200 OK\r\n\r\n", 505),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), 400),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: 40"), 400),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: 4x"), 400),
        (INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), 400),
        (INVITE + b"x" * 70000, 413),
    ],
)
def test_bad_messages(data: bytes, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status_hint == status
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)


def test_max_size_is_a_setting() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(INVITE, max_size=100)
    assert info.value.status_hint == 413
    assert parse_message(INVITE, max_size=len(INVITE)).body == b"v=0\n"


def test_leading_crlf_and_folding() -> None:
    folded = INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1\r\n INVITE")
    m = parse_message(b"\r\n\r\n" + folded)
    assert m.cseq.method == "INVITE"


def test_error_response() -> None:
    bad = INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: many")
    with pytest.raises(ParseError) as info:
        parse_message(bad)
    reply = error_response(bad, info.value)
    assert reply is not None
    r = parse_message(reply)
    assert isinstance(r, Response) and r.status == 400
    assert "Max-Forwards" in r.reason
    assert r.top_via.branch == "z9hG4bK74bf9" and r.to.tag and r.cseq.method == "INVITE"
    # No answer to a response, to an ACK, or to bytes with no Via.
    assert error_response(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", info.value) is None
    ack = bad.replace(b"INVITE sip", b"ACK sip")
    assert error_response(ack, info.value) is None
    assert error_response(b"\x00\xff garbage", info.value) is None
    too_big = ProtocolError("message larger than 65536 bytes", 413)
    big = error_response(INVITE + b"x" * 70000, too_big)
    assert big is not None and big.startswith(b"SIP/2.0 413 ")
