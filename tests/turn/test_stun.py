"""STUN codec glue: RFC 5769 vectors (tests/data/stun), round trips, the fuzz invariant."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from aioice import stun as aioice_stun
from hypothesis import given
from hypothesis import strategies as st

from turn import stun
from turn.auth import long_term_key
from turn.errors import DecodeError
from turn.framing import StreamFramer
from turn.stun import Attr, Class, Method

DATA = Path(__file__).parent.parent / "data" / "stun"
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769 §2


def vector(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.mark.parametrize(
    "name",
    ["rfc5769-2.1-request.bin", "rfc5769-2.2-ipv4-response.bin", "rfc5769-2.3-ipv6-response.bin"],
)
def test_rfc5769_short_term_vectors_integrity_and_fingerprint(name: str) -> None:
    data = vector(name)
    msg = stun.parse(data)  # FINGERPRINT is verified while parsing
    assert msg.has(Attr.FINGERPRINT)
    assert msg.check_integrity(SHORT_TERM_PASSWORD)
    assert not msg.check_integrity(b"wrong password")
    # One flipped bit in the transaction id breaks both the fingerprint and the MAC.
    tampered = bytearray(data)
    tampered[27] ^= 0x01
    with pytest.raises(DecodeError, match="FINGERPRINT"):
        stun.parse(bytes(tampered))


def test_rfc5769_request_attributes() -> None:
    msg = stun.parse(vector("rfc5769-2.1-request.bin"))
    assert msg.method == Method.BINDING and msg.cls == Class.REQUEST
    assert msg.get(Attr.SOFTWARE) == b"STUN test client"
    assert msg.get(Attr.USERNAME) == b"evtj:h6vY"
    assert msg.get(Attr.PRIORITY) == bytes.fromhex("6e0001ff")


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("rfc5769-2.2-ipv4-response.bin", ("192.0.2.1", 32853)),
        ("rfc5769-2.3-ipv6-response.bin", ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_xor_mapped_address(name: str, address: tuple[str, int]) -> None:
    msg = stun.parse(vector(name))
    assert msg.cls == Class.RESPONSE
    assert (
        stun.unpack_xor_address(msg.get(Attr.XOR_MAPPED_ADDRESS) or b"", msg.transaction_id)
        == address
    )
    assert stun.pack_xor_address(address, msg.transaction_id) == msg.get(Attr.XOR_MAPPED_ADDRESS)


def test_rfc5769_long_term_vector() -> None:
    data = vector("rfc5769-2.4-long-term-request.bin")
    msg = stun.parse(data)
    assert not msg.has(Attr.FINGERPRINT)
    username = stun.unpack_text(msg.get(Attr.USERNAME) or b"")
    assert username == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert msg.get(Attr.REALM) == b"example.org"
    assert msg.get(Attr.NONCE) == b"f//499k954d6OL34oL9FSTvy64sA"
    assert msg.check_integrity(long_term_key(username, "example.org", "TheMatrIX"))
    assert not msg.check_integrity(long_term_key(username, "example.org", "thematrix"))
    # Our encoder reproduces the vector byte for byte.
    attrs = [(t, v) for t, v in msg.attributes if t != Attr.MESSAGE_INTEGRITY]
    rebuilt = stun.encode(
        Method.BINDING,
        Class.REQUEST,
        msg.transaction_id,
        attrs,
        key=long_term_key(username, "example.org", "TheMatrIX"),
        fingerprint=False,
    )
    assert rebuilt == data


def test_encode_round_trip_and_aioice_interop() -> None:
    tid = os.urandom(12)
    key = long_term_key("u", "r", "p")
    data = stun.encode(
        Method.CONNECTION_BIND,
        Class.REQUEST,
        tid,
        [(Attr.CONNECTION_ID, stun.pack_u32(7)), (Attr.USERNAME, b"u")],
        key=key,
    )
    msg = stun.parse(data)
    assert msg.method == Method.CONNECTION_BIND and msg.transaction_id == tid
    assert stun.unpack_u32(msg.get(Attr.CONNECTION_ID) or b"") == 7
    assert msg.check_integrity(key)
    data = stun.encode(
        Method.ALLOCATE, Class.ERROR, tid, [(Attr.ERROR_CODE, stun.pack_error_code(438))]
    )
    parsed = aioice_stun.parse_message(data)
    assert parsed.message_method == aioice_stun.Method.ALLOCATE and parsed.error_code == 438


def test_attributes_after_integrity_are_ignored() -> None:
    tid = os.urandom(12)
    data = stun.encode(Method.BINDING, Class.REQUEST, tid, [], key=b"k", fingerprint=False)
    data = (
        data[:2]
        + struct.pack("!H", len(data) - 20 + 8)
        + data[4:]
        + struct.pack("!HH", Attr.USERNAME, 4)
        + b"evil"
    )
    msg = stun.parse(data)
    assert msg.get(Attr.USERNAME) is None and msg.check_integrity(b"k")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00" + b"\x00" * 16,  # no magic cookie
        b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"\x00" * 12,  # length beyond the data
        b"\x00\x01\x00\x04\x21\x12\xa4\x42"
        + b"\x00" * 12
        + b"\x00\x06\x00\x08",  # attribute overrun
        b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,  # top bits set
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        stun.parse(data)


@given(st.binary(max_size=200))
def test_fuzz_parse_raises_only_decode_error(data: bytes) -> None:
    try:
        msg = stun.parse(data)
    except DecodeError:
        return
    msg.check_integrity(b"key")
    msg.unknown_required()


@given(st.binary(min_size=20, max_size=120))
def test_fuzz_parse_with_valid_header(body: bytes) -> None:
    body = body[: len(body) - len(body) % 4]
    data = struct.pack("!HHI", 0x0003, len(body), stun.COOKIE) + os.urandom(12) + body
    try:
        stun.parse(data)
    except DecodeError:
        pass


def test_stream_framer_splits_stun_and_padded_channel_data() -> None:
    f = StreamFramer()
    stun_msg = stun.encode(Method.BINDING, Class.REQUEST, os.urandom(12), [])
    channel = struct.pack("!HH", 0x4001, 5) + b"hello" + b"\0\0\0"
    stream = stun_msg + channel + stun_msg
    for i in range(0, len(stream), 7):  # arbitrary TCP segmentation
        f.feed(stream[i : i + 7])
    frames = []
    while (frame := f.next_frame()) is not None:
        frames.append(frame)
    assert frames == [stun_msg, struct.pack("!HH", 0x4001, 5) + b"hello", stun_msg]


@pytest.mark.parametrize(
    "garbage", [b"\x80\x00\x00\x00", b"\xff" * 8, b"\x00\x01\x00\x03" + b"\0" * 20]
)
def test_stream_framer_rejects_garbage(garbage: bytes) -> None:
    f = StreamFramer()
    f.feed(garbage)
    with pytest.raises(DecodeError):
        f.next_frame()
