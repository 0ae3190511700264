"""MS-TURN codec ([MS-TURN], the TURN dialect of Microsoft clients and the A/V Edge).

MS-TURN is draft-rosenberg-midcom-turn-08 with Microsoft extensions, not RFC 8656:

- the header carries a 128-bit transaction id and no magic cookie; the first attribute is
  MAGIC-COOKIE (0x000F) = 0x72C64BC6, and a message without it is ignored ([MS-TURN] 3.1.10);
- NONCE is 0x0014 and REALM 0x0015 (swapped against RFC 8489);
- MESSAGE-INTEGRITY is HMAC-SHA1 over the message before it, zero-padded to a multiple of
  64 bytes (the RFC 3489 rule), with the header length counting up to the end of the
  MESSAGE-INTEGRITY attribute; there is no FINGERPRINT;
- attribute values are not padded to 4 bytes (libnice's OC2007 mode writes and reads them
  unaligned); every attribute this server writes is a multiple of 4 long except REALM, NONCE,
  ERROR-CODE reasons and DATA, which are therefore sent unaligned too;
- addresses are plain (MAPPED-ADDRESS, DESTINATION-ADDRESS, REMOTE-ADDRESS), except
  XOR-MAPPED-ADDRESS (0x8020), XORed with the first 4 bytes of the transaction id;
- Send is a request (0x0004) that is never answered, data from peers arrives in Data
  indications (0x0115), Set Active Destination (0x0006) names the peer whose data then
  travels without encapsulation;
- on TCP every frame has a 4-byte header: type (0x02 control, 0x03 end-to-end data),
  a zero byte, the length ([MS-TURN] 2.1.4).

Hand-written: aioice and every other STUN codec we know only speak RFC 5389/8489.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import DecodeError
from .stun_ms import AttributeLayoutError, padded_hmac_sha1, walk_attributes

MAGIC_COOKIE = 0x72C64BC6
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
RFC_COOKIE_BYTES = b"\x21\x12\xa4\x42"
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 16
CONNECTION_ID_LENGTH = 20
_HEADER = struct.Struct("!HH16s")
_ATTR = struct.Struct("!HH")
_MI_LENGTH = 20

FRAME_CONTROL = 0x02
FRAME_DATA = 0x03
_FRAME = struct.Struct("!BBH")


class MsType(enum.IntEnum):
    """The message types [MS-TURN] 2.2.1 supports."""

    ALLOCATE_REQUEST = 0x0003
    ALLOCATE_RESPONSE = 0x0103
    ALLOCATE_ERROR = 0x0113
    SEND_REQUEST = 0x0004
    DATA_INDICATION = 0x0115
    SET_ACTIVE_DESTINATION_REQUEST = 0x0006
    SET_ACTIVE_DESTINATION_RESPONSE = 0x0106
    SET_ACTIVE_DESTINATION_ERROR = 0x0116


class MsAttr(enum.IntEnum):
    """Attribute types of [MS-TURN] 2.2.2."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    LIFETIME = 0x000D
    ALTERNATE_SERVER = 0x000E
    MAGIC_COOKIE = 0x000F
    BANDWIDTH = 0x0010
    DESTINATION_ADDRESS = 0x0011
    REMOTE_ADDRESS = 0x0012
    DATA = 0x0013
    NONCE = 0x0014
    REALM = 0x0015
    REQUESTED_ADDRESS_FAMILY = 0x0017
    MS_VERSION = 0x8008
    XOR_MAPPED_ADDRESS = 0x8020
    MS_SEQUENCE_NUMBER = 0x8050


# Comprehension-required types an MS-TURN server knows ([MS-TURN] 2.2.2: others get 420).
KNOWN_REQUIRED = frozenset(int(a) for a in MsAttr if a < 0x8000)


@dataclass(frozen=True, slots=True)
class MsMessage:
    """A decoded MS-TURN message; values stay raw bytes."""

    msg_type: int
    """The whole 16-bit message type (an ``MsType`` when known)."""
    transaction_id: bytes
    """The 128-bit transaction id."""
    attributes: tuple[tuple[int, bytes], ...]
    """(type, value) in wire order, MAGIC-COOKIE first."""
    raw: bytes
    """The message as received."""
    integrity_offset: int | None
    """Offset of MESSAGE-INTEGRITY in ``raw``, if present."""

    def get(self, attr: int) -> bytes | None:
        """The first value of ``attr`` before MESSAGE-INTEGRITY."""
        for t, v in self.attributes:
            if t == MsAttr.MESSAGE_INTEGRITY:
                break
            if t == attr:
                return v
        return None

    def unknown_required(self) -> list[int]:
        return [t for t, _ in self.attributes if t < 0x8000 and t not in KNOWN_REQUIRED]

    def check_integrity(self, key: bytes) -> bool:
        """MESSAGE-INTEGRITY in constant time; False when absent."""
        if self.integrity_offset is None:
            return False
        off = self.integrity_offset
        received = self.raw[off + 4 : off + 4 + _MI_LENGTH]
        return hmac.compare_digest(received, integrity(self.raw[:off], key))


def is_ms_turn(data: bytes) -> bool:
    """An MS-TURN control message: no RFC magic cookie, MAGIC-COOKIE the first attribute.

    The attribute's *value* is checked by ``parse``: a wrong one makes the message
    improperly formed, to be ignored ([MS-TURN] 3.1.10), not answered.
    """
    return (
        len(data) >= HEADER_LENGTH + 8
        and data[0] < 0x40
        and data[4:8] != RFC_COOKIE_BYTES
        and data[20:24] == b"\x00\x0f\x00\x04"
    )


def parse(data: bytes) -> MsMessage:
    """Decode one MS-TURN message; any malformation raises ``DecodeError`` only.

    Attributes are read unaligned (as libnice's MS modes write them); a message that does
    not end exactly on an attribute boundary that way is read again 4-byte aligned (RFC 3489
    style clients pad).
    """
    if len(data) < HEADER_LENGTH + 8:
        raise DecodeError("MS-TURN message shorter than header + MAGIC-COOKIE")
    msg_type, length, tid = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise DecodeError("MS-TURN message type has its two top bits set")
    if len(data) != HEADER_LENGTH + length:
        raise DecodeError("MS-TURN message length does not match the datagram")
    if data[20:28] != b"\x00\x0f\x00\x04" + MAGIC_COOKIE_BYTES:
        raise DecodeError("MAGIC-COOKIE is not the first attribute or has a wrong value")
    try:
        attributes, mi = _walk(data, aligned=False)
    except DecodeError:
        attributes, mi = _walk(data, aligned=True)
    return MsMessage(msg_type, tid, attributes, data, mi)


def _walk(data: bytes, *, aligned: bool) -> tuple[tuple[tuple[int, bytes], ...], int | None]:
    try:
        walked = walk_attributes(data, HEADER_LENGTH, aligned)
    except AttributeLayoutError as error:
        raise DecodeError(f"MS-TURN {error}") from None
    mi: int | None = None
    for attr in walked:
        if attr.type == MsAttr.MESSAGE_INTEGRITY:
            if len(attr.value) != _MI_LENGTH:
                raise DecodeError("MESSAGE-INTEGRITY must be 20 bytes")
            if mi is None:
                mi = attr.offset
    return tuple((attr.type, attr.value) for attr in walked), mi


def integrity(before_mi: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 of the message up to MESSAGE-INTEGRITY, its length field counting the
    MESSAGE-INTEGRITY attribute, zero-padded to a multiple of 64 bytes."""
    length = len(before_mi) - HEADER_LENGTH + 4 + _MI_LENGTH
    return padded_hmac_sha1(before_mi[:2] + struct.pack("!H", length) + before_mi[4:], key)


def encode(
    msg_type: int,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]],
    *,
    key: bytes | None = None,
) -> bytes:
    """MAGIC-COOKIE first, then ``attributes`` unaligned, then MESSAGE-INTEGRITY with ``key``."""
    body = bytearray(_ATTR.pack(MsAttr.MAGIC_COOKIE, 4) + MAGIC_COOKIE_BYTES)
    for attr_type, value in attributes:
        body += _ATTR.pack(attr_type, len(value))
        body += value
    data = _HEADER.pack(msg_type, len(body), transaction_id) + bytes(body)
    if key is not None:
        mac = integrity(data, key)
        body += _ATTR.pack(MsAttr.MESSAGE_INTEGRITY, _MI_LENGTH) + mac
        data = _HEADER.pack(msg_type, len(body), transaction_id) + bytes(body)
    return data


# -- attribute values ---------------------------------------------------------------------


def pack_address(addr: tuple[str, int]) -> bytes:
    """MAPPED-ADDRESS / REMOTE-ADDRESS / DESTINATION-ADDRESS: reserved, family, port, IP."""
    ip = ipaddress.ip_address(addr[0])
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, addr[1]) + ip.packed


def unpack_address(value: bytes) -> tuple[str, int]:
    if len(value) not in (8, 20):
        raise DecodeError("address attribute of a bad length")
    family, port = value[1], struct.unpack("!H", value[2:4])[0]
    if (family, len(value)) not in ((1, 8), (2, 20)):
        raise DecodeError("address attribute family does not match its length")
    return str(ipaddress.ip_address(value[4:])), port


def pack_xor_mapped(addr: tuple[str, int], transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS (0x8020): port and IPv4 XORed with the transaction id's first
    4 bytes (the MS client's "magic cookie" for it); IPv6 with its first 16."""
    ip = ipaddress.ip_address(addr[0]).packed
    mask = transaction_id[:4] if len(ip) == 4 else transaction_id[:16]
    port = addr[1] ^ struct.unpack("!H", transaction_id[:2])[0]
    xored = bytes(a ^ b for a, b in zip(ip, mask, strict=True))
    return struct.pack("!BBH", 0, 1 if len(ip) == 4 else 2, port) + xored


def unpack_xor_mapped(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    host, port = unpack_address(value)
    ip = ipaddress.ip_address(host).packed
    mask = transaction_id[:4] if len(ip) == 4 else transaction_id[:16]
    plain = bytes(a ^ b for a, b in zip(ip, mask, strict=True))
    return str(ipaddress.ip_address(plain)), port ^ struct.unpack("!H", transaction_id[:2])[0]


def pack_u32(value: int) -> bytes:
    return struct.pack("!I", value)


def unpack_u32(value: bytes) -> int:
    if len(value) != 4:
        raise DecodeError("expected a 4-byte attribute value")
    result: int = struct.unpack("!I", value)[0]
    return result


def pack_error_code(code: int, reason: str) -> bytes:
    # RFC 3489 §11.2.9: the reason phrase is a multiple of 4 bytes; pad it with spaces.
    text = reason.encode()
    text += b" " * (-len(text) % 4)
    return struct.pack("!HBB", 0, code // 100, code % 100) + text


def unpack_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise DecodeError("ERROR-CODE too short")
    return value[2] * 100 + value[3], value[4:].decode("utf-8", "replace").rstrip()


def pack_sequence(connection_id: bytes, number: int) -> bytes:
    """MS-SEQUENCE-NUMBER ([MS-TURN] 2.2.2.21): 20-byte connection id, 32-bit number."""
    return connection_id + struct.pack("!I", number)


def unpack_sequence(value: bytes) -> tuple[bytes, int]:
    if len(value) != CONNECTION_ID_LENGTH + 4:
        raise DecodeError("MS-SEQUENCE-NUMBER must be 24 bytes")
    return value[:CONNECTION_ID_LENGTH], struct.unpack("!I", value[CONNECTION_ID_LENGTH:])[0]


# -- TCP framing --------------------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    """One [MS-TURN] 2.1.4 TCP frame."""
    return _FRAME.pack(kind, 0, len(payload)) + payload


class MsStreamFramer:
    """Splits an MS-TURN TCP stream into (type, payload) frames; ``DecodeError`` ends it."""

    __slots__ = ("_buf",)

    MAX_BUFFER = 1 << 17

    def __init__(self, initial: bytes = b"") -> None:
        self._buf = bytearray(initial)

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.MAX_BUFFER:
            raise DecodeError("stream buffer overflow")

    def next_frame(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        kind, zero, length = _FRAME.unpack_from(buf)
        if kind not in (FRAME_CONTROL, FRAME_DATA):
            raise DecodeError(f"MS-TURN frame type 0x{kind:02x} is neither control nor data")
        if len(buf) < 4 + length:
            return None
        payload = bytes(buf[4 : 4 + length])
        del buf[: 4 + length]
        return kind, payload


# -- credentials -------------------------------------------------------------------------


def _trim(value: bytes) -> bytes:
    # The MS clients' key derivation as libnice's OC2007 mode does it: leading quotes and
    # trailing quotes / NULs are not hashed (stun_hash_creds).
    start = 0
    while start < len(value) and value[start] == 0x22:
        start += 1
    end = len(value)
    while end > start and value[end - 1] in (0x00, 0x22):
        end -= 1
    return value[start:end]


def long_term_key(username: bytes, realm: bytes, password: bytes) -> bytes:
    """MD5(username ":" realm ":" password) over the raw (binary) values, trimmed."""
    return hashlib.md5(_trim(username) + b":" + _trim(realm) + b":" + _trim(password)).digest()


# -- pseudo-TLS ---------------------------------------------------------------------------
#
# On TCP 443 MS clients (and pidgin-sipe, whose libnice takes a relay on port 443 for "tls")
# open with a TLS 1.0 ClientHello offering only TLS_DH_anon_WITH_RC4_128_MD5 (0x0018) and
# wait for a ServerHello + ServerHelloDone; then, no TLS at all, the MS-TURN frames follow
# ([MS-TURN] 2.1.3, "pseudo-TLS"). It lets TURN through proxies that only pass TLS on 443.

_TLS_HANDSHAKE = 0x16
_TLS_1_0 = b"\x03\x01"
PSEUDO_TLS_CIPHER = 0x0018


def pseudo_tls_record_length(buf: bytes) -> int | None:
    """Bytes of the TLS record starting ``buf`` (None: not all here yet)."""
    if len(buf) < 5:
        return None
    if buf[0] != _TLS_HANDSHAKE or buf[1:3] != _TLS_1_0:
        raise DecodeError("not a TLS 1.0 handshake record")
    return 5 + int.from_bytes(buf[3:5], "big")


def check_pseudo_tls_client_hello(record: bytes) -> None:
    """A ClientHello offering the pseudo-TLS cipher, or ``DecodeError`` (a real TLS client
    cannot be served here)."""
    body = record[5:]
    if len(body) < 4 + 2 + 32 + 1 or body[0] != 0x01:
        raise DecodeError("pseudo-TLS: not a ClientHello")
    pos = 4 + 2 + 32
    pos += 1 + body[pos]  # session id
    if pos + 2 > len(body):
        raise DecodeError("pseudo-TLS: ClientHello truncated")
    n = struct.unpack("!H", body[pos : pos + 2])[0]
    suites = body[pos + 2 : pos + 2 + n]
    offered = {struct.unpack("!H", suites[i : i + 2])[0] for i in range(0, len(suites) - 1, 2)}
    if PSEUDO_TLS_CIPHER not in offered:
        raise DecodeError("pseudo-TLS: real TLS ClientHello (no 0x0018 cipher): not served")


def pseudo_tls_client_hello(random: bytes) -> bytes:
    """What an MS client opens TCP 443 with: a TLS 1.0 ClientHello offering only the
    pseudo-TLS cipher, no session id, no compression (``random`` is 32 bytes)."""
    hello = _TLS_1_0 + random + b"\x00" + struct.pack("!HH", 2, PSEUDO_TLS_CIPHER) + b"\x01\x00"
    message = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return bytes([_TLS_HANDSHAKE]) + _TLS_1_0 + struct.pack("!H", len(message)) + message


def pseudo_tls_server_hello(random: bytes, session_id: bytes) -> bytes:
    """ServerHello (TLS 1.0, the pseudo-TLS cipher, no compression) + ServerHelloDone in one
    record; the client looks at neither ``random`` nor ``session_id`` (32 bytes each)."""
    hello = _TLS_1_0 + random + bytes([len(session_id)]) + session_id
    hello += struct.pack("!HB", PSEUDO_TLS_CIPHER, 0)
    messages = b"\x02" + len(hello).to_bytes(3, "big") + hello + b"\x0e\x00\x00\x00"
    return bytes([_TLS_HANDSHAKE]) + _TLS_1_0 + struct.pack("!H", len(messages)) + messages
