"""Hypothesis properties of the message layer.

- h11's fuzz invariant: garbage in (random bytes, mutated valid messages) yields a message
  or ParseError, never another exception; error_response and StreamFramer likewise.
- Round trip: parse(encode(m)) == m for generated requests and responses.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import ParseError, ProtocolError
from sip.framing import StreamFramer
from sip.grammar import quote
from sip.headers import Address, Via
from sip.message import Headers, Request, Response, error_response, parse_message
from sip.multipart import BodyPart, encode_multipart, parse_multipart
from sip.uri import URI, Params

DATA = Path(__file__).parent.parent / "data" / "sip"
SEEDS = [p.read_bytes() for p in sorted((DATA / "rfc4475").glob("*.sip"))] + [
    (DATA / "lync_invite.sip").read_bytes()
]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(data: bytes) -> None:
    try:
        parse_message(data)
    except ParseError as exc:
        assert 400 <= exc.status_hint <= 599
        reply = error_response(data, exc)
        if reply is not None:
            assert reply.startswith(b"SIP/2.0 ")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b" ", b",", b";", b"<", b'"', b"\\",
                                                  b":", b"\x00", b"\xff", b"%", b"\r\n "]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


@FAST
@given(st.binary(max_size=600))
def test_random_bytes_only_parse_error(data: bytes) -> None:
    parse_or_refuse(data)
    parse_or_refuse(b"INVITE sip:a@b SIP/2.0\r\n" + data)


@FAST
@given(mutated())
def test_mutated_messages_only_parse_error(data: bytes) -> None:
    parse_or_refuse(data)


@FAST
@given(mutated(), st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_framer_only_parse_error(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer()
    pos = 0
    try:
        for n in cuts + [len(data)]:
            framer.feed(data[pos : pos + n])
            pos += n
            while (item := framer.next_message()) is not None:
                if isinstance(item, bytes):
                    parse_or_refuse(item)
    except ParseError:
        pass


@FAST
@given(st.text(max_size=80), st.binary(max_size=300))
def test_multipart_only_parse_error(ctype: str, body: bytes) -> None:
    try:
        parse_multipart("multipart/mixed;boundary=b" + ctype, body)
        parse_multipart(ctype, b"--b\r\n" + body)
    except ParseError:
        pass


# -- round trip ---------------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOST = st.one_of(
    st.lists(LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: a.compressed),
)
PARAMCHAR = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]/:&+$", min_size=1,
                    max_size=8)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
               max_size=20)


@st.composite
def uris(draw: st.DrawFn) -> URI:
    params = draw(st.lists(st.tuples(PARAMCHAR, st.none() | PARAMCHAR), max_size=3))
    user = draw(st.none() | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                                     max_size=12))
    return URI(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=draw(st.none() | st.text("abc123&=+$,", max_size=6)) if user else None,
        host=draw(HOST),
        port=draw(st.none() | st.integers(0, 65535)),
        params=Params(params),
    )


GEN_VALUE = st.one_of(st.none(), TOKEN, TEXT.map(quote))


@st.composite
def addresses(draw: st.DrawFn) -> Address:
    params = draw(st.lists(st.tuples(TOKEN, GEN_VALUE), max_size=3))
    return Address(draw(uris()), draw(st.none() | TEXT), Params(params))


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params = [("branch", "z9hG4bK" + draw(TOKEN))]
    if draw(st.booleans()):
        params.append(("rport", draw(st.none() | st.integers(1, 65535).map(str))))
    params += draw(st.lists(st.tuples(TOKEN.map(lambda t: "x-" + t), GEN_VALUE), max_size=2))
    return Via(draw(st.sampled_from(["UDP", "TCP", "TLS"])), draw(HOST),
               draw(st.none() | st.integers(1, 65535)), Params(params))


@st.composite
def headers(draw: st.DrawFn, method: str) -> Headers:
    h = Headers()
    for via in draw(st.lists(vias(), min_size=1, max_size=3)):
        h.add("Via", via)
    h.add("Max-Forwards", draw(st.integers(0, 255)))
    h.add("From", draw(addresses()))
    h.add("To", draw(addresses()))
    h.add("Call-ID", draw(TOKEN) + "@" + draw(TOKEN))
    h.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    for contact in draw(st.lists(addresses(), max_size=2)):
        h.add(draw(st.sampled_from(["Contact", "m"])), contact)
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30))
        h.add("X-" + draw(TOKEN), value.strip())
    return h


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "INFO"]) | TOKEN)
    return Request(method, draw(uris()), draw(headers(method)), draw(st.binary(max_size=100)))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    reason = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
    method = draw(st.sampled_from(["INVITE", "BYE"]))
    return Response(draw(st.integers(100, 699)), reason.strip(), draw(headers(method)),
                    draw(st.binary(max_size=100)))


@FAST
@given(st.one_of(requests(), responses()))
def test_round_trip(message: Request | Response) -> None:
    parsed = parse_message(message.encode())
    assert parsed == message
    # The structured views agree with what was built.
    assert parsed.via == message.via and parsed.from_ == message.from_
    assert parsed.contact == message.contact
    assert parse_message(parsed.encode()) == parsed


@FAST
@given(uris())
def test_uri_round_trip(uri: URI) -> None:
    assert URI.parse(str(uri)) == uri


@FAST
@given(st.lists(st.tuples(st.sampled_from(["application/sdp", "text/plain"]),
                          st.binary(max_size=80).filter(lambda b: b"--" not in b)),
                min_size=1, max_size=4))
def test_multipart_round_trip(items: list[tuple[str, bytes]]) -> None:
    parts = [BodyPart(t, (("Content-Disposition", "session"),), b) for t, b in items]
    ctype, body = encode_multipart(parts)
    assert parse_multipart(ctype, body) == parts


def test_error_response_never_raises_on_strange_errors() -> None:
    assert error_response(b"INVITE x\r\nVia: a\r\n\r\n", ProtocolError("a\r\nb", 999)) is not None
