from __future__ import annotations

import pytest

from sip.errors import LocalProtocolError, ParseError
from sip.headers import Address, CSeq, Via, canonical_name, split_list
from sip.uri import URI


def test_split_list_respects_quotes_and_angles() -> None:
    assert split_list('"a, b" <sip:x@y;p=1,2>, <sip:z@w>;q=0.5 ,x') == [
        '"a, b" <sip:x@y;p=1,2>', "<sip:z@w>;q=0.5", "x"
    ]
    assert split_list(r'"a \", b" <sip:x@y>') == [r'"a \", b" <sip:x@y>']
    assert split_list(" , ,") == []
    with pytest.raises(ParseError):
        split_list('"unterminated, x')


def test_compact_names() -> None:
    assert canonical_name("v") == "via" and canonical_name("I") == "call-id"
    assert canonical_name("Content-Length") == "content-length"


def test_via_with_microsoft_params() -> None:
    v = Via.parse("SIP/2.0/TLS 10.1.2.3:51234;branch=z9hG4bK1;ms-received-port=51234;"
                  "ms-received-cid=1F00;rport;received=192.0.2.9")
    assert (v.transport, v.host, v.port) == ("TLS", "10.1.2.3", 51234)
    assert v.branch == "z9hG4bK1" and v.received == "192.0.2.9"
    assert v.has_rport and v.rport is None
    assert v.params["MS-RECEIVED-PORT"] == "51234"
    filled = v.with_params(rport="51234")
    assert filled.rport == 51234 and "ms-received-cid" in filled.params
    assert Via.parse(str(filled)) == filled


def test_via_ipv6_and_lists() -> None:
    vias = Via.parse_many("SIP/2.0/UDP [::1]:5060;branch=z9hG4bKa, SIP/2.0/TCP h.example.com")
    assert vias[0].host == "::1" and vias[0].port == 5060
    assert str(vias[0]) == "SIP/2.0/UDP [::1]:5060;branch=z9hG4bKa"
    assert vias[1].port is None and vias[1].branch is None


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host;branch", "SIP/2.0/UDP host;rport=x",
     "SIP/2.0/UDP host;received=evil.example.com", "SIP/2.0/UDP host:70000", "SIP/2.0/UDP h;;"],
)
def test_bad_via(text: str) -> None:
    with pytest.raises(ParseError):
        Via.parse(text)


def test_address_forms() -> None:
    a = Address.parse('"Alice \\"A\\" Parkes" <sip:alice@example.com>;tag=abc;epid=1F2E')
    assert a.display_name == 'Alice "A" Parkes' and a.tag == "abc"
    assert a.params["epid"] == "1F2E"
    assert Address.parse(str(a)) == a
    b = Address.parse("Bob Smith <sip:bob@example.com>")
    assert b.display_name == "Bob Smith" and b.tag is None
    c = Address.parse("sip:carol@example.com;tag=9")  # addr-spec: ;tag is a header param
    assert c.uri == URI.parse("sip:carol@example.com") and c.tag == "9"
    d = Address.parse("<sip:gw@example.com;transport=tls>;+sip.instance=\"<urn:uuid:1>\"")
    assert d.uri.transport == "tls" and d.params["+sip.instance"] == '"<urn:uuid:1>"'
    assert d.with_tag("t1").tag == "t1" and d.tag is None


def test_address_parse_many() -> None:
    route = Address.parse_many("<sip:p1.example.com;lr>, \"x, y\" <sip:p2.example.com;lr>")
    assert [r.uri.host for r in route] == ["p1.example.com", "p2.example.com"]
    assert route[1].display_name == "x, y"


@pytest.mark.parametrize(
    "text",
    ['"unterminated <sip:a@b>', "Bell, Alexander <sip:a@b>", "< sip:a@b >", "sip:a@b?x=y",
     "<sip:a@b", "", "<sip:a@b>;=1"],
)
def test_bad_address(text: str) -> None:
    with pytest.raises(ParseError):
        Address.parse(text)


def test_display_name_cannot_carry_newlines() -> None:
    with pytest.raises(LocalProtocolError):
        str(Address(URI.parse("sip:a@b"), display_name="x\r\nVia: evil"))


def test_cseq() -> None:
    assert CSeq.parse("  0009  INVITE ") == CSeq(9, "INVITE")
    assert str(CSeq(5, "BYE")) == "5 BYE"
    for bad in ("INVITE", "1", "-1 INVITE", "2147483648 INVITE", "1 INVITE x"):
        with pytest.raises(ParseError):
            CSeq.parse(bad)


def test_address_parse_memo_gives_the_same_value() -> None:
    text = '"Memo" <sip:memo@example.com;transport=tls>;tag=abc;epid=1'
    first = Address.parse(text)
    assert Address.parse(text) is first
    assert first.tag == "abc" and first.display_name == "Memo"
    assert first.uri.transport == "tls"
    with pytest.raises(ParseError):
        Address.parse('"unterminated <sip:a@b>')
    with pytest.raises(ParseError):
        Address.parse('"unterminated <sip:a@b>')


def test_via_parse_memo_gives_the_same_value_and_still_checks() -> None:
    text = "SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKmemo;ms-received-port=5061;rport"
    first = Via.parse(text)
    assert Via.parse(text) is first
    assert first.branch == "z9hG4bKmemo" and first.has_rport and first.port == 5061
    for _ in range(2):  # a bad text is refused every time, never remembered
        with pytest.raises(ParseError):
            Via.parse("SIP/2.0/UDP host;received=not-an-address")
