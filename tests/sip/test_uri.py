from __future__ import annotations

import pytest

from sip import uri as uri_module
from sip.errors import ParseError
from sip.uri import PARSE_MEMO_SIZE, URI, Params


def test_full_sip_uri() -> None:
    text = "sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr;maddr=239.1.1.1?subject=hi&x=%20y"
    u = URI.parse(text)
    assert (u.scheme, u.user, u.password) == ("sips", "alice", "secret")
    assert (u.host, u.port) == ("2001:db8::1", 5061)
    assert u.params.items() == (("transport", "tls"), ("lr", None), ("maddr", "239.1.1.1"))
    assert u.transport == "tls"
    assert u.headers == (("subject", "hi"), ("x", "%20y"))
    assert str(u) == text


@pytest.mark.parametrize(
    "text",
    [
        "sip:example.com",
        "sip:10.0.0.1:5060",
        "sip:+15551234;phone-context=example.com@gw.example.com;user=phone",
        "sip:alice.parkes@example.com;transport=tls",
        "sip:%61lice@example.com",
        "SIP:bob@EXAMPLE.com",
        "tel:+1-555-1234",
    ],
)
def test_round_trip(text: str) -> None:
    u = URI.parse(text)
    assert URI.parse(str(u)) == u


def test_escapes_decoded_and_re_escaped() -> None:
    u = URI.parse("sip:%61lice%20b@example.com")
    assert u.user == "alice b"
    assert str(u) == "sip:alice%20b@example.com"
    assert URI(scheme="sip", user="a@b", host="h").__str__() == "sip:a%40b@h"


def test_scheme_case_insensitive_and_host_kept() -> None:
    u = URI.parse("SIP:Bob@Example.COM")
    assert u.scheme == "sip" and u.host == "Example.COM"


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:alice@",
        "sip:alice@exa mple.com",
        "sip:host:99999",
        "sip:host:port",
        "sip:[::zz]",
        "sip:1.2.3.999",
        "<sip:a@b>",
        "sip:a@b;=x",
        "noscheme",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(ParseError):
        URI.parse(text)


def test_params_case_insensitive_and_immutable() -> None:
    p = Params((("Transport", "TCP"), ("lr", None)))
    assert p["transport"] == "TCP" and "LR" in p and p.get("x") is None
    q = p.with_param("transport", "udp").with_param("ob")
    assert list(q) == ["Transport", "lr", "ob"] and q["TRANSPORT"] == "udp"
    assert p["transport"] == "TCP"  # unchanged
    assert p.replace(ms_received_port="5061")["ms-received-port"] == "5061"
    assert Params((("A", "1"),)) == Params((("a", "1"),))
    assert hash(Params((("A", "1"),))) == hash(Params((("a", "1"),)))
    assert str(p.without("lr")) == ";Transport=TCP"
    with pytest.raises(KeyError):
        p["missing"]


def test_parse_memo_gives_the_same_value_and_stays_bounded() -> None:
    text = "sip:memo-user@example.com;transport=tcp"
    first = URI.parse(text)
    assert URI.parse(text) is first
    assert str(first) == text
    for i in range(PARSE_MEMO_SIZE + 10):
        URI.parse(f"sip:u{i}@memo.example.com")
    assert len(uri_module._URIS) <= PARSE_MEMO_SIZE + 1
    assert URI.parse(text) == first  # forgotten, parsed again to an equal value
    with pytest.raises(ParseError):  # failures are never remembered
        URI.parse("sip:bad host@example.com")
    with pytest.raises(ParseError):
        URI.parse("sip:bad host@example.com")


def test_params_lookup_is_case_insensitive_either_way() -> None:
    params = URI.parse("sip:a@example.com;Transport=TCP;lr").params
    assert params.get("transport") == "TCP"
    assert params.get("TRANSPORT") == "TCP"
    assert "LR" in params and "lr" in params
    assert params.get("maddr") is None
