from __future__ import annotations

from pathlib import Path

import pytest

from sip.errors import ParseError
from sip.framing import KeepAlive, Oversized, StreamFramer
from sip.message import parse_message

LYNC = (Path(__file__).parent.parent / "data" / "sip" / "lync_invite.sip").read_bytes()
OPTIONS = (
    b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKo1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:gw@127.0.0.1>\r\n"
    b"Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
)


def drain(framer: StreamFramer) -> list[bytes | KeepAlive]:
    out: list[bytes | KeepAlive] = []
    while (item := framer.next_message()) is not None:
        out.append(item)
    return out


def test_messages_split_across_reads_byte_by_byte() -> None:
    stream = LYNC + b"\r\n\r\n" + OPTIONS + LYNC
    framer = StreamFramer()
    got: list[bytes | KeepAlive] = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        got += drain(framer)
    assert got == [LYNC, KeepAlive.PING, OPTIONS, LYNC]
    assert framer.buffered == 0
    assert parse_message(got[0]).body == parse_message(LYNC).body  # type: ignore[arg-type]


def test_many_messages_in_one_read() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS * 3 + b"\r\n")
    assert drain(framer) == [OPTIONS, OPTIONS, OPTIONS]  # the lone CRLF may be half a ping
    framer.feed(b"\r\n")
    assert drain(framer) == [KeepAlive.PING]


def test_keepalives() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n\r\n\r\n")
    assert drain(framer) == [KeepAlive.PING, KeepAlive.PING]
    framer.feed(b"\r")
    assert framer.next_message() is None  # half a keep-alive: wait
    framer.feed(b"\n")
    assert framer.next_message() is None  # maybe half a ping
    framer.feed(OPTIONS)
    assert drain(framer) == [KeepAlive.PONG, OPTIONS]
    # After we sent a ping, a lone CRLF is the pong, reported at once.
    framer.awaiting_pong = True
    framer.feed(b"\r\n")
    assert drain(framer) == [KeepAlive.PONG]
    assert framer.awaiting_pong is False


def test_missing_content_length_breaks_the_stream() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"l: 0\r\n", b""))
    with pytest.raises(ParseError):
        framer.next_message()
    framer.feed(OPTIONS)
    with pytest.raises(ParseError):  # stays broken: the connection must close
        framer.next_message()


@pytest.mark.parametrize("value", [b"-1", b"abc", b"99999999999", b"1, 2"])
def test_bad_content_length(value: bytes) -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"l: 0", b"l: " + value))
    with pytest.raises(ParseError):
        framer.next_message()


def test_conflicting_content_lengths() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"l: 0\r\n", b"l: 0\r\nContent-Length: 5\r\n"))
    with pytest.raises(ParseError):
        framer.next_message()


def test_size_limits() -> None:
    framer = StreamFramer(max_size=1024)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX-Pad: " + b"a" * 2000)
    with pytest.raises(ParseError) as info:
        framer.next_message()
    assert info.value.status_hint == 413
    # A declared body past what is worth skipping: the stream cannot be kept.
    framer = StreamFramer(max_size=1024, max_skip=4096)
    framer.feed(OPTIONS.replace(b"l: 0", b"l: 5000"))
    with pytest.raises(ParseError) as info:
        framer.next_message()
    assert info.value.status_hint == 413


def test_oversized_body_is_skipped_and_the_stream_stays_framed() -> None:
    # RFC 3261 §18.3: with the length known, the oversized body is passed over.
    framer = StreamFramer(max_size=1024)
    big = OPTIONS.replace(b"l: 0", b"l: 5000")
    framer.feed(big + b"x" * 1000)
    item = framer.next_message()
    assert isinstance(item, Oversized)
    assert item.head == big and item.size == len(big) + 5000
    assert framer.in_message and framer.next_message() is None
    framer.feed(b"x" * 3999)
    assert framer.in_message and framer.next_message() is None
    framer.feed(b"x" + OPTIONS[:10])  # the body's last byte, then the next message begins
    assert framer.next_message() is None and framer.buffered == 10
    framer.feed(OPTIONS[10:])
    assert framer.next_message() == OPTIONS
    assert not framer.in_message


def test_header_folding_does_not_hide_content_length() -> None:
    framer = StreamFramer()
    body = b"hello"
    framer.feed(OPTIONS.replace(b"l: 0", b"Content-Length:\r\n 5") + body)
    (msg,) = drain(framer)
    assert isinstance(msg, bytes) and parse_message(msg).body == body


def test_many_bare_line_feeds_are_skipped() -> None:
    framer = StreamFramer()
    framer.feed(b"\n" * 100_000 + OPTIONS)
    assert drain(framer) == [OPTIONS]
