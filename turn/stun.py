"""STUN/TURN message codec glue (RFC 8489, RFC 8656, RFC 6062) around ``aioice.stun``.

aioice's codec is reused for what it can do: the MESSAGE-INTEGRITY and FINGERPRINT
computations, address packing/unpacking and ERROR-CODE packing. Its ``parse_message`` /
``Message`` cannot serve a TURN *server*, so the message framing is our own:

- ``aioice.stun.Method`` is a closed enum without the RFC 6062 methods (Connect,
  ConnectionBind, ConnectionAttempt): parsing those raises.
- unknown attributes are silently dropped, so a server cannot answer 420 with
  UNKNOWN-ATTRIBUTES, and the TURN attributes EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT,
  CONNECTION-ID and REQUESTED-ADDRESS-FAMILY are unknown to it;
- the magic cookie and attribute bounds are not checked, and malformed values leak
  ``struct.error`` / ``UnicodeDecodeError`` rather than one decode error.
"""

from __future__ import annotations

import enum
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aioice import stun as aioice_stun

from .errors import DecodeError

COOKIE = aioice_stun.COOKIE
COOKIE_BYTES = struct.pack("!I", COOKIE)
HEADER_LENGTH = 20
_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")


class Method(enum.IntEnum):
    """STUN methods used by TURN (RFC 8656 §18, RFC 6062 §6.1)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class Class(enum.IntEnum):
    """The two class bits, at their place in the message type."""

    REQUEST = 0x000
    INDICATION = 0x010
    RESPONSE = 0x100
    ERROR = 0x110


class Attr(enum.IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 6062 §6.2)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    BANDWIDTH = 0x0010  # RFC 5766 draft leftover that coturn's client still sends
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    CONNECTION_ID = 0x002A
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


KNOWN_ATTRIBUTES = frozenset(int(a) for a in Attr)

REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}

TRANSPORT_UDP = 17
TRANSPORT_TCP = 6


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A decoded STUN message; attribute values stay raw bytes until asked for."""

    method: int
    """The 12-bit method (a ``Method`` when known)."""
    cls: Class
    """Request, indication, success or error response."""
    transaction_id: bytes
    """The 96-bit transaction id."""
    attributes: tuple[tuple[int, bytes], ...]
    """(type, value) in wire order, up to and including MESSAGE-INTEGRITY and FINGERPRINT."""
    raw: bytes
    """The whole message as received."""
    integrity_offset: int | None
    """Offset of the MESSAGE-INTEGRITY attribute in ``raw``, if present."""

    def get(self, attr: int) -> bytes | None:
        """The first value of ``attr`` before MESSAGE-INTEGRITY (later ones are unauthenticated)."""
        for t, v in self.attributes:
            if t == attr:
                return v
            if t == Attr.MESSAGE_INTEGRITY:
                break
        return None

    def get_all(self, attr: int) -> list[bytes]:
        """All values of ``attr`` before MESSAGE-INTEGRITY."""
        out: list[bytes] = []
        for t, v in self.attributes:
            if t == Attr.MESSAGE_INTEGRITY:
                break
            if t == attr:
                out.append(v)
        return out

    def has(self, attr: int) -> bool:
        return any(t == attr for t, _ in self.attributes)

    def unknown_required(self) -> list[int]:
        """Comprehension-required (< 0x8000) attribute types this codec does not know."""
        return [t for t, _ in self.attributes if t < 0x8000 and t not in KNOWN_ATTRIBUTES]

    def check_integrity(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY (HMAC-SHA1) in constant time; False when absent."""
        if self.integrity_offset is None:
            return False
        received = self.raw[self.integrity_offset + 4 : self.integrity_offset + 24]
        expected = aioice_stun.message_integrity(self.raw[: self.integrity_offset], key)
        return hmac.compare_digest(received, expected)


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: first two bits zero and the magic cookie in place."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40 and data[4:8] == COOKIE_BYTES


def parse(data: bytes) -> StunMessage:
    """Decode one STUN message; any malformation raises ``DecodeError`` only.

    A FINGERPRINT, when present, must be last and must match (RFC 8489 §14.7).
    """
    if len(data) < HEADER_LENGTH:
        raise DecodeError("STUN message shorter than its 20-byte header")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise DecodeError("STUN message type has its two top bits set")
    if cookie != COOKIE:
        raise DecodeError("STUN magic cookie missing")
    if length % 4 or len(data) != HEADER_LENGTH + length:
        raise DecodeError("STUN message length does not match the datagram")
    attributes: list[tuple[int, bytes]] = []
    integrity_offset: int | None = None
    pos = HEADER_LENGTH
    end = len(data)
    while pos < end:
        if pos + 4 > end:
            raise DecodeError("truncated STUN attribute header")
        attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
        value_end = pos + 4 + attr_len
        if value_end > end:
            raise DecodeError(f"STUN attribute 0x{attr_type:04x} overruns the message")
        value = data[pos + 4 : value_end]
        if attr_type == Attr.FINGERPRINT:
            if attr_len != 4 or value_end != end:
                raise DecodeError("FINGERPRINT must be the last attribute, 4 bytes long")
            expected = aioice_stun.message_fingerprint(data[:pos])
            if struct.unpack("!I", value)[0] != expected:
                raise DecodeError("STUN FINGERPRINT does not match")
        elif attr_type == Attr.MESSAGE_INTEGRITY:
            if attr_len != 20:
                raise DecodeError("MESSAGE-INTEGRITY must be 20 bytes")
            if integrity_offset is None:
                integrity_offset = pos
        attributes.append((attr_type, value))
        pos = value_end + (-attr_len % 4)
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    try:
        method = Method(method)
    except ValueError:
        pass
    return StunMessage(
        method=method,
        cls=Class(message_type & 0x0110),
        transaction_id=transaction_id,
        attributes=tuple(attributes),
        raw=data,
        integrity_offset=integrity_offset,
    )


def message_type(method: int, cls: Class) -> int:
    """Interleave the method bits around the class bits (RFC 8489 §5)."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | cls


def encode(
    method: int,
    cls: Class,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]],
    *,
    key: bytes | None = None,
    fingerprint: bool = True,
) -> bytes:
    """Encode a message; MESSAGE-INTEGRITY (with ``key``) then FINGERPRINT go last."""
    body = bytearray()
    for attr_type, value in attributes:
        body += _ATTR_HEADER.pack(attr_type, len(value))
        body += value
        body += bytes(-len(value) % 4)
    data = _HEADER.pack(message_type(method, cls), len(body), COOKIE, transaction_id) + bytes(body)
    if key is not None:
        mac = aioice_stun.message_integrity(data, key)
        data = _set_length(data + _ATTR_HEADER.pack(Attr.MESSAGE_INTEGRITY, 20) + mac)
    if fingerprint:
        crc = aioice_stun.message_fingerprint(data)
        data = _set_length(data + _ATTR_HEADER.pack(Attr.FINGERPRINT, 4) + struct.pack("!I", crc))
    return data


def _set_length(data: bytes) -> bytes:
    return data[:2] + struct.pack("!H", len(data) - HEADER_LENGTH) + data[4:]


# -- attribute values ---------------------------------------------------------------------


def pack_xor_address(addr: tuple[str, int], transaction_id: bytes) -> bytes:
    return aioice_stun.pack_xor_address(addr, transaction_id)


def unpack_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    try:
        return aioice_stun.unpack_xor_address(value, transaction_id)
    except (ValueError, struct.error) as exc:
        raise DecodeError(f"bad XOR address: {exc}") from None


def pack_address(addr: tuple[str, int]) -> bytes:
    return aioice_stun.pack_address(addr)


def pack_u32(value: int) -> bytes:
    return struct.pack("!I", value)


def unpack_u32(value: bytes) -> int:
    if len(value) != 4:
        raise DecodeError("expected a 4-byte attribute value")
    result: int = struct.unpack("!I", value)[0]
    return result


def pack_error_code(code: int, reason: str | None = None) -> bytes:
    return aioice_stun.pack_error_code((code, reason or REASONS.get(code, "Error")))


def unpack_error_code(value: bytes) -> tuple[int, str]:
    try:
        return aioice_stun.unpack_error_code(value)
    except (ValueError, struct.error) as exc:
        raise DecodeError(f"bad ERROR-CODE: {exc}") from None


def unpack_text(value: bytes, limit: int = 763) -> str:
    """USERNAME / REALM / SOFTWARE values: UTF-8 of bounded size (RFC 8489 §14)."""
    if len(value) > limit:
        raise DecodeError("text attribute too long")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("text attribute is not UTF-8") from None


def pack_unknown_attributes(types: Sequence[int]) -> bytes:
    return b"".join(struct.pack("!H", t) for t in types)


def error_response(
    request: StunMessage,
    code: int,
    extra: Iterable[tuple[int, bytes]] = (),
    *,
    key: bytes | None = None,
    reason: str | None = None,
) -> bytes:
    """An error response to ``request``; signed when ``key`` is known (RFC 8489 §9.2.4)."""
    attrs = [(int(Attr.ERROR_CODE), pack_error_code(code, reason)), *extra]
    return encode(request.method, Class.ERROR, request.transaction_id, attrs, key=key)
