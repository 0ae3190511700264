"""RFC 4475 "SIP Torture Test Messages" against the message layer.

Each message lives in tests/data/sip/rfc4475/<name>.sip, transcribed from the RFC (lines
unfolded where the RFC marks <allOneLine>, hex-escaped bytes written as the bytes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.errors import ParseError
from sip.message import Request, Response, error_response, parse_message
from sip.multipart import parse_multipart

DATA = Path(__file__).parent.parent / "data" / "sip" / "rfc4475"


def load(name: str) -> bytes:
    return (DATA / f"{name}.sip").read_bytes()


# RFC 4475 section -> message name, for the messages a parser must accept.
VALID = {
    "3.1.1.1": "wsinv",  # A Short Tortuous INVITE
    "3.1.1.2": "intmeth",  # Wide Range of Valid Characters
    "3.1.1.3": "esc01",  # Valid Use of the % Escaping Mechanism
    "3.1.1.4": "escnull",  # Escaped Nulls in URIs
    "3.1.1.5": "esc02",  # Use of % When It Is Not an Escape
    "3.1.1.6": "lwsdisp",  # Message with No LWS between Display Name and <
    "3.1.1.7": "longreq",  # Long Values in Header Fields
    "3.1.1.8": "dblreq",  # Extra Trailing Octets in a UDP Datagram
    "3.1.1.9": "semiuri",  # Semicolon-Separated Parameters in URI User Part
    "3.1.1.10": "transports",  # Varied and Unknown Transport Types
    "3.1.1.11": "mpart01",  # Multipart MIME Message
    "3.1.1.12": "unreason",  # Unusual Reason Phrase
    "3.1.1.13": "noreason",  # Empty Reason Phrase
    "3.1.2.12": "baddate",  # Invalid Time Zone in Date: may be accepted (Date is not used)
    "3.2.1": "badbranch",  # Missing Transaction Identifier: a transaction-layer matter
    "3.3.2": "unkscm",  # Request-URI with Unknown Scheme (416 is the application's)
    "3.3.3": "novelsc",  # Request-URI with Known but Atypical Scheme
    "3.3.4": "unksm2",  # Unknown URI Schemes in Header Fields
    "3.3.5": "bext01",  # Proxy-Require and Require (420 is the application's)
    "3.3.6": "invut",  # Unknown Content-Type (415 is the application's)
    "3.3.7": "regaut01",  # Unknown Authorization Scheme
    "3.3.10": "bcast",  # 200 OK Response with Broadcast Via Header Field Value
    "3.3.11": "zeromf",  # Max-Forwards of Zero (483 is the proxy's)
    "3.3.12": "cparam01",  # REGISTER with a Contact Header Parameter
    "3.3.13": "cparam02",  # REGISTER with a URL Parameter
    "3.3.14": "regescrt",  # REGISTER with a URL Escaped Header
    "3.3.15": "sdp01",  # Unacceptable Accept Offering
    "3.4.1": "inv2543",  # INVITE with RFC 2543 Syntax
}

# Messages to refuse: section -> (name, status of the answer, or None for a response,
# which is dropped).
INVALID = {
    "3.1.2.1": ("badinv01", 400),  # Extraneous Header Field Separators
    "3.1.2.2": ("clerr", 400),  # Content Length Larger Than Message
    "3.1.2.3": ("ncl", 400),  # Negative Content-Length
    "3.1.2.4": ("scalar02", 400),  # Request Scalar Fields with Overlarge Values
    "3.1.2.5": ("scalarlg", None),  # Response Scalar Fields with Overlarge Values
    "3.1.2.6": ("quotbal", 400),  # Unterminated Quoted String in Display Name
    "3.1.2.7": ("ltgtruri", 400),  # <> Enclosing Request-URI
    "3.1.2.8": ("lwsruri", 400),  # Malformed SIP Request-URI (embedded LWS)
    "3.1.2.9": ("lwsstart", 400),  # Multiple SP Separating Request-Line Elements
    "3.1.2.10": ("trws", 400),  # SP Characters at End of Request-Line
    "3.1.2.11": ("escruri", 400),  # Escaped Headers in SIP Request-URI
    "3.1.2.13": ("regbadct", 400),  # Failure to Enclose name-addr URI in <>
    "3.1.2.14": ("badaspec", 400),  # Spaces within addr-spec
    "3.1.2.15": ("baddn", 400),  # Non-token Characters in Display Name
    "3.1.2.16": ("badvers", 505),  # Unknown Protocol Version
    "3.1.2.17": ("mismatch01", 400),  # Start Line and CSeq Method Mismatch
    "3.1.2.18": ("mismatch02", 400),  # Unknown Method with CSeq Method Mismatch
    "3.1.2.19": ("bigcode", None),  # Overlarge Response Code
    "3.3.1": ("insuf", 400),  # Missing Required Header Fields
    "3.3.8": ("multi01", 400),  # Multiple Values in Single Value Required Fields
    "3.3.9": ("mcl01", 400),  # Multiple Content-Length Values
}


def test_every_data_file_is_classified() -> None:
    names = {p.stem for p in DATA.glob("*.sip")}
    classified = set(VALID.values()) | {name for name, _ in INVALID.values()}
    assert names == classified


@pytest.mark.parametrize("section", sorted(VALID))
def test_valid_messages_parse(section: str) -> None:
    data = load(VALID[section])
    message = parse_message(data)
    # The structured headers every layer uses are all readable.
    assert message.via and message.call_id and message.cseq.seq >= 0
    message.contact  # noqa: B018
    message.route  # noqa: B018
    # Serialising keeps the meaning: the re-parsed message is the same message.
    assert parse_message(message.encode()) == message


@pytest.mark.parametrize("section", sorted(INVALID))
def test_invalid_messages_are_refused(section: str) -> None:
    name, status = INVALID[section]
    data = load(name)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    reply = error_response(data, info.value)
    if status is None:
        assert reply is None  # a bad response is dropped, never answered
        return
    assert reply is not None
    # The reply copies the headers it could find as they were (a bad To stays bad), so
    # read its status line rather than parse it.
    status_line = reply.split(b"\r\n", 1)[0].decode()
    version, code, reason = status_line.split(" ", 2)
    assert (version, int(code)) == ("SIP/2.0", status)
    assert reason  # names the problem
    assert b"\r\nVia: " in reply


def test_wsinv_details() -> None:
    m = parse_message(load("wsinv"))
    assert isinstance(m, Request)
    assert m.uri.user == "vivekg" and "unknownparam" in m.uri.params
    assert m.to.uri.host == "chair-dnrc.example.com" and m.to.tag == "1918181833n"
    assert m.from_.display_name == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (route,) = m.route
    assert route.uri.params.items() == (("lr", None), ("unknownwith", "value"),
                                        ("unknown-no-value", None))
    (contact,) = m.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.params.items() == (("newparam", "newvalue"), ("secondparam", None),
                                      ("q", "0.33"))
    assert len(m.body) == 150 and m.body.endswith(b"a=rtpmap:31 LPC\r\n")


def test_intmeth_details() -> None:
    m = parse_message(load("intmeth"))
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params["fromParam''~+*_!.-%"] == '"работающий"'
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escaping() -> None:
    m = parse_message(load("esc01"))
    assert m.uri.user == "sips:user@example.com"
    assert m.to.uri.user == "user"  # %75se%72
    assert m.from_.uri.user == "I have spaces"
    (contact,) = m.contact
    assert contact.uri.user == "caller"
    nul = parse_message(load("escnull"))
    assert nul.to.uri.user == "null-\x00-null"
    assert [c.uri.user for c in nul.contact] == ["\x00", "\x00\x00"]
    esc02 = parse_message(load("esc02"))
    assert isinstance(esc02, Request) and esc02.method == "RE%47IST%45R"
    assert esc02.to.display_name == "%Z%45"
    # C%6Fntact is an unknown header, not a Contact.
    assert [c.uri.host for c in esc02.contact] == ["host1.example.com", "host3.example.com"]
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_dblreq_keeps_only_the_first_message() -> None:
    m = parse_message(load("dblreq"))
    assert isinstance(m, Request) and m.method == "REGISTER" and m.body == b""


def test_semiuri_and_transports() -> None:
    m = parse_message(load("semiuri"))
    assert m.uri.user == "user;par=u@example.net" and m.uri.host == "example.com"
    assert m.headers.getlist("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]
    t = parse_message(load("transports"))
    assert [v.transport for v in t.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_body_is_framed_and_split() -> None:
    m = parse_message(load("mpart01"))
    assert len(m.body) == 553
    assert m.content_type is not None
    parts = parse_multipart(m.content_type, m.body)
    assert [p.content_type for p in parts] == ["text/plain", "application/octet-stream"]
    assert parts[0].body == b"Hello"
    assert parts[1].body[:4] == b"\x30\x82\x01\x52" and len(parts[1].body) == 342


def test_reason_phrases() -> None:
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.reason.startswith("= 2**3 * 5**2 но")
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, Response) and noreason.reason == "" and noreason.status == 100


def test_unknown_schemes_and_url_headers() -> None:
    unkscm = parse_message(load("unkscm"))
    assert unkscm.uri.scheme == "nobodyknowsthisscheme" and not unkscm.uri.is_sip  # type: ignore[union-attr]
    novelsc = parse_message(load("novelsc"))
    assert novelsc.uri.scheme == "soap.beep"  # type: ignore[union-attr]
    unksm2 = parse_message(load("unksm2"))
    assert str(unksm2.to.uri) == "isbn:2983792873"
    assert str(unksm2.from_.uri) == "http://www.example.com"
    assert str(unksm2.contact[0].uri) == "name:John_Smith"
    regescrt = parse_message(load("regescrt"))
    assert regescrt.contact[0].uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    c1 = parse_message(load("cparam01")).contact[0]
    assert "unknownparam" in c1.params and "unknownparam" not in c1.uri.params
    c2 = parse_message(load("cparam02")).contact[0]
    assert "unknownparam" in c2.uri.params and "unknownparam" not in c2.params


def test_semantic_cases_left_to_upper_layers() -> None:
    assert parse_message(load("zeromf")).max_forwards == 0
    assert parse_message(load("badbranch")).top_via.branch == "z9hG4bK"
    bext = parse_message(load("bext01"))
    assert bext.headers.getlist("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    regaut = parse_message(load("regaut01"))
    assert regaut.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    baddate = parse_message(load("baddate"))
    assert baddate.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    inv2543 = parse_message(load("inv2543"))
    assert inv2543.max_forwards is None and inv2543.top_via.branch is None
    assert inv2543.from_.tag is None and inv2543.body.startswith(b"v=0")
    bcast = parse_message(load("bcast"))
    assert bcast.via[1].host == "255.255.255.255"


def test_error_reason_names_the_problem() -> None:
    data = load("mismatch01")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    reply = parse_message(error_response(data, info.value) or b"")
    assert isinstance(reply, Response)
    assert "CSeq" in reply.reason
    assert reply.call_id == "mismatch01.dj0234sxdfl3"
    assert reply.to.tag  # a 4xx carries a To tag (§8.2.6.2)
    assert reply.top_via.branch == "z9hG4bKkdjuw"
