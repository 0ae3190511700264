from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError, ParseError
from sip.message import parse_message
from sip.multipart import (
    BodyPart,
    _delimiters,
    encode_multipart,
    media_type,
    parse_multipart,
)

LYNC = (Path(__file__).parent.parent / "data" / "sip" / "lync_invite.sip").read_bytes()


def test_lync_multipart_alternative() -> None:
    m = parse_message(LYNC)
    assert m.content_type is not None
    first, second = parse_multipart(m.content_type, m.body)
    assert first.media_type == second.media_type == "application/sdp"
    assert first.disposition == "session; handling=optional; ms-proxy-2007fallback"
    assert second.disposition == "session; handling=optional"
    assert first.header("content-id") == "<4c0a9f1e2b7d4e5f8a6b3c2d1e0f9a8b@example.com>"
    assert first.body.startswith(b"v=0\r\n") and b"RTP/AVP" in first.body
    assert b"RTP/SAVP" in second.body and second.body.endswith(b"a=encryption:optional\r\n")


def test_round_trip() -> None:
    parts = [
        BodyPart(
            "application/sdp",
            (("Content-Disposition", "session; handling=optional; ms-proxy-2007fallback"),),
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n",
        ),
        BodyPart("application/sdp", (), b"v=0\r\n"),
        BodyPart("text/plain", (), b""),
    ]
    ctype, body = encode_multipart(parts, "mixed")
    assert media_type(ctype)[0] == "multipart/mixed"
    assert parse_multipart(ctype, body) == parts
    ctype2, body2 = encode_multipart(parts, boundary="----=_NextPart_000_0001")
    assert ctype2 == 'multipart/alternative;boundary="----=_NextPart_000_0001"'
    assert parse_multipart(ctype2, body2) == parts


def test_preamble_epilogue_and_default_type() -> None:
    body = (b"preamble text\r\n--b1\r\n\r\nno headers here\r\n--b1\r\nContent-Type: text/html\r\n"
            b"\r\n<p>x</p>\r\n--b1--\r\nepilogue")
    parts = parse_multipart("Multipart/Mixed; boundary=b1", body)
    assert [(p.content_type, p.body) for p in parts] == [("text/plain", b"no headers here"),
                                                         ("text/html", b"<p>x</p>")]


def test_boundary_text_inside_a_line_is_not_a_delimiter() -> None:
    body = b"--b1\r\nContent-Type: text/plain\r\n\r\nsee --b1 here\r\n--b1--\r\n"
    (part,) = parse_multipart("multipart/mixed;boundary=b1", body)
    assert part.body == b"see --b1 here"


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/sdp", b"v=0"),
        ("multipart/mixed", b"--x\r\n\r\n--x--"),
        ("multipart/mixed;boundary=x", b"no delimiter"),
        ("multipart/mixed;boundary=x", b"--x\r\nContent-Type: a/b\r\n\r\nunterminated"),
        ("multipart/mixed;boundary=x", b"--x--\r\n"),
        ("multipart/mixed;boundary=x", b"--x\r\nbroken header line\r\n\r\nbody\r\n--x--"),
        ("nonsense", b""),
    ],
)
def test_malformed(ctype: str, body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_multipart(ctype, body)


def test_encode_refuses_boundary_in_body() -> None:
    with pytest.raises(LocalProtocolError):
        encode_multipart([BodyPart("text/plain", (), b"--abc")], boundary="abc")
    with pytest.raises(LocalProtocolError):
        encode_multipart([])


# The delimiter rule as RFC 2046 §5.1.1 states it, written as the regex the parser used
# before it searched with bytes.find: the oracle for the differential test below.
_ORACLE = re.compile(rb"(?:\A|\r?\n)" + re.escape(b"--b") + rb"(--)?[ \t]*(?:\r?\n|\Z)")

_PIECES = st.sampled_from(
    [b"--b", b"--b--", b"\r\n", b"\n", b"\r", b" ", b"\t", b"-", b"x", b"\r\n\r\nz", b"---b"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES, max_size=14).map(b"".join))
def test_delimiters_found_as_the_rfc_2046_rule_says(body: bytes) -> None:
    expected = [(m.start(), m.end(), m.group(1) is not None) for m in _ORACLE.finditer(body)]
    assert _delimiters(body, b"--b") == expected


def test_parts_between_bare_lf_delimiters() -> None:
    body = b"--b \n\nfirst\n--b\t\nContent-Type: text/x\n\nsecond\r\n--b-- \t"
    parts = parse_multipart("multipart/mixed; boundary=b", body)
    assert [(p.content_type, p.body) for p in parts] == [("text/plain", b"first"),
                                                        ("text/x", b"second")]
