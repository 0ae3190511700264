"""STUN connectivity checks in the two dialects the Microsoft leg meets: [MS-ICE2] version 2,
as Lync / Skype for Business clients (and libnice in its OC2007R2 mode, pidgin-sipe's ICE)
send it, and standard RFC 5389 / RFC 8445.

What [MS-ICE2] version 2 changes on the wire (read from libnice 0.1.21's stun/stunagent.c,
stun/stunmessage.c, stun/stunhmac.c, stun/stuncrc32.c, stun/usages/ice.c and
agent/conncheck.c, which cite [MS-ICE2] 3.1.4.8.2):

- Attributes are not 4-byte aligned: an attribute's length is its value's length and the next
  attribute follows at once, with no padding bytes. Senders therefore pad variable-length
  values *inside* the value: USERNAME ``remote:local`` gets NULs up to a multiple of 4 (length
  12 for ``U571:mTm9``), and so does MS-CANDIDATE-IDENTIFIER. A standard message with a
  padded 9-byte USERNAME is unreadable to such a reader (libnice: "STUN error: 47 instead of
  1134 bytes for attribute": it took the padding as the next attribute header).
- Every check carries MS-CANDIDATE-IDENTIFIER (0x8054, the sender's candidate foundation) and
  MS-IMPLEMENTATION-VERSION (0x8070, value 2); every response carries the version too
  ([MS-ICE2] 2.2.2: the identifier only in binding requests, the version in all binding
  requests and responses).
- MESSAGE-INTEGRITY: HMAC-SHA1 over the header with the message's *final* length (counting
  the FINGERPRINT that follows) and the attributes before MESSAGE-INTEGRITY, the input then
  zero-padded to a multiple of 64 bytes (the RFC 3489 rule). RFC 5389 counts only up to
  MESSAGE-INTEGRITY and does not pad, so neither side verifies the other's integrity.
- FINGERPRINT: the RFC 5389 CRC-32. A version-2 agent also sends each check a second time
  with a "legacy" FINGERPRINT for version-1 peers: a CRC-32 whose table has one wrong entry
  (0x8bbeb8ea written as 0x08bbe8ea, a typo in Microsoft's table that libnice reproduces).
  It stops once it hears MS-IMPLEMENTATION-VERSION from the peer. A receiver accepts the
  legacy CRC only on a message without MS-IMPLEMENTATION-VERSION (a version-1 sender); a
  version-2 agent's legacy copy (version present, legacy CRC) is dropped.

Not handled: the draft-STUN-02 message format (no magic cookie) that [MS-ICE2] also allows
for older peers; such datagrams are not taken for STUN.

The first half of this module is the codec, sans-IO (bytes in, bytes out): :func:`decode`,
:func:`verify_integrity` (which also says which dialect's integrity matched) and
:func:`encode`. The second half is the one place the gateway's ICE leg and the lab client's
ICE hook it into aioice (0.13): aioice reads and writes STUN only with ``stun.parse_message``
and ``bytes(Message)``, both RFC 5389, with no parameter for another layout or integrity, so
:class:`DialectProtocol` (a ``StunProtocol``) decodes datagrams itself and hands aioice a
``Message`` subclass whose ``check_message_integrity`` accepts the configured dialects, and
re-encodes aioice's outgoing checks and responses in the peer's dialect. It relies on aioice
internals (``StunProtocol.transactions``, ``Connection.request_received``, the remote/local
passwords). Upstream, the small change that would make this unnecessary is a per-connection
STUN codec hook in aioice (parse and serialise functions on ``StunProtocol``); it has not
been proposed yet.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import logging
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aioice.ice import StunProtocol
from aioice.stun import (
    ATTRIBUTES_BY_NAME,
    ATTRIBUTES_BY_TYPE,
    Class,
    Message,
    Method,
    pack_xor_address,
    unpack_xor_address,
)

from turn.stun_ms import AttributeLayoutError, RawAttribute, padded_hmac_sha1, walk_attributes

__all__ = [
    "DialectPolicy",
    "DialectProtocol",
    "DecodedMessage",
    "Fingerprint",
    "StunAttribute",
    "StunDecodeError",
    "StunDialect",
    "decode",
    "encode",
    "legacy_crc32",
    "looks_like_stun",
    "verify_integrity",
]

logger = logging.getLogger(__name__)

COOKIE = 0x2112A442
HEADER = 20
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
FINGERPRINT = 0x8028
MS_CANDIDATE_IDENTIFIER = 0x8054
MS_IMPLEMENTATION_VERSION = 0x8070
MS_VERSION = 2
"""The [MS-ICE2] implementation version we speak."""
_FINGERPRINT_XOR = 0x5354554E


class StunDialect(enum.Enum):
    """How a peer writes its connectivity checks."""

    RFC5389 = "rfc5389"
    """RFC 5389 / RFC 8445: aligned attributes, standard integrity."""
    MS_ICE2 = "ms-ice2"
    """[MS-ICE2] version 2 (see the module docstring)."""


class Fingerprint(enum.Enum):
    ABSENT = "absent"
    STANDARD = "standard"
    LEGACY = "legacy"
    """The [MS-ICE2] version-1 CRC (accepted only without MS-IMPLEMENTATION-VERSION)."""


class StunDecodeError(ValueError):
    """Not a well-formed STUN message in either dialect (bad layout, length, fingerprint)."""


StunAttribute = RawAttribute
"""One attribute as read: type, value and where its header starts."""


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """A STUN message read in whichever layout fits it."""

    data: bytes
    message_type: int
    transaction_id: bytes
    """The 12 bytes after the magic cookie."""
    attributes: tuple[StunAttribute, ...]
    """In wire order; nothing after MESSAGE-INTEGRITY except FINGERPRINT (RFC 5389 §15.4)."""
    aligned: bool
    """Attributes are padded to 4 bytes (RFC 5389); False: [MS-ICE2] unaligned layout."""
    fingerprint: Fingerprint

    def get(self, attr_type: int) -> bytes | None:
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr.value
        return None

    @property
    def implementation_version(self) -> int | None:
        value = self.get(MS_IMPLEMENTATION_VERSION)
        if value is None or len(value) != 4:
            return None
        return int(struct.unpack("!I", value)[0])

    @property
    def username(self) -> str | None:
        """USERNAME with any padding NULs ([MS-ICE2]) removed."""
        value = self.get(USERNAME)
        if value is None:
            return None
        try:
            return value.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise StunDecodeError("USERNAME is not UTF-8") from None

    @property
    def hint(self) -> StunDialect:
        """The dialect the message's syntax points to (before any integrity check)."""
        username = self.get(USERNAME)
        if (self.implementation_version is not None or not self.aligned
                or (username is not None and username.endswith(b"\0"))):
            return StunDialect.MS_ICE2
        return StunDialect.RFC5389


def looks_like_stun(data: bytes) -> bool:
    """RFC 5389 §6 / RFC 7983: top two bits zero and the magic cookie in place."""
    return (len(data) >= HEADER and data[0] < 4
            and struct.unpack_from("!I", data, 4)[0] == COOKIE)


# -- CRC-32 -------------------------------------------------------------------------------------

def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_LEGACY_TABLE = _crc_table()
# Microsoft's table has entry 0x5a, 0x8bbeb8ea, written with a digit missing.
_LEGACY_TABLE[_LEGACY_TABLE.index(0x8BBEB8EA)] = 0x08BBE8EA


def legacy_crc32(data: bytes) -> int:
    """CRC-32 with the [MS-ICE2] version-1 table (one wrong entry); binascii cannot do it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _LEGACY_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fingerprint(data: bytes, legacy: bool) -> int:
    crc = legacy_crc32(data) if legacy else binascii.crc32(data)
    return crc ^ _FINGERPRINT_XOR


# -- decoding -----------------------------------------------------------------------------------

def _walk(data: bytes, aligned: bool) -> tuple[StunAttribute, ...] | None:
    """The attributes up to MESSAGE-INTEGRITY, and FINGERPRINT (last, 4 bytes) after it, or
    None when ``data`` does not parse in this layout."""
    try:
        walked = walk_attributes(data, HEADER, aligned)
    except AttributeLayoutError:
        return None
    attributes: list[StunAttribute] = []
    integrity = False
    for attr in walked:
        if attr.type == FINGERPRINT and (len(attr.value) != 4 or attr is not walked[-1]):
            return None
        if attr.type == MESSAGE_INTEGRITY and len(attr.value) != 20:
            return None
        if not integrity or attr.type == FINGERPRINT:
            attributes.append(attr)
        integrity = integrity or attr.type == MESSAGE_INTEGRITY
    return tuple(attributes)


def _fingerprint_kind(data: bytes, attributes: Sequence[StunAttribute]) -> Fingerprint | None:
    """How the FINGERPRINT was computed (ABSENT when none), None when it matches neither way."""
    last = attributes[-1] if attributes else None
    if last is None or last.type != FINGERPRINT:
        return Fingerprint.ABSENT
    value = struct.unpack("!I", last.value)[0]
    covered = data[:last.offset]
    if value == _fingerprint(covered, legacy=False):
        return Fingerprint.STANDARD
    versioned = any(a.type == MS_IMPLEMENTATION_VERSION for a in attributes)
    if not versioned and value == _fingerprint(covered, legacy=True):
        return Fingerprint.LEGACY
    return None


def decode(data: bytes) -> DecodedMessage:
    """Read a STUN message in either layout; raises :class:`StunDecodeError`.

    Both layouts agree when every attribute length is a multiple of 4 (what both dialects
    send in practice); otherwise the one that ends exactly at the message end and whose
    FINGERPRINT matches wins, the aligned one first."""
    if not looks_like_stun(data):
        raise StunDecodeError("not a STUN message (type bits or magic cookie)")
    message_type, length = struct.unpack_from("!HH", data, 0)
    if HEADER + length != len(data):
        raise StunDecodeError(f"length {length} does not match the {len(data)}-byte datagram")
    bad_fingerprint = False
    for aligned in (True, False):
        attributes = _walk(data, aligned)
        if attributes is None:
            continue
        kind = _fingerprint_kind(data, attributes)
        if kind is None:
            bad_fingerprint = True
            continue
        return DecodedMessage(data, message_type, data[8:HEADER], attributes, aligned, kind)
    if bad_fingerprint:
        raise StunDecodeError("FINGERPRINT does not match")
    raise StunDecodeError("attributes overrun the message in both layouts")


def _integrity(data: bytes, offset: int, dialect: StunDialect, key: bytes) -> bytes:
    """The MESSAGE-INTEGRITY at ``offset`` computed the ``dialect``'s way."""
    if dialect is StunDialect.RFC5389:
        length = offset + 24 - HEADER
        text = data[:2] + struct.pack("!H", length) + data[4:offset]
        return hmac.new(key, text, hashlib.sha1).digest()
    # [MS-ICE2]: the length field as it is on the wire (FINGERPRINT counted), input padded.
    return padded_hmac_sha1(data[:offset], key)


def verify_integrity(message: DecodedMessage, key: bytes,
                     dialects: Iterable[StunDialect] = tuple(StunDialect)) -> StunDialect | None:
    """The dialect (of ``dialects``) whose MESSAGE-INTEGRITY matches ``key``, else None."""
    attr = next((a for a in message.attributes if a.type == MESSAGE_INTEGRITY), None)
    if attr is None:
        return None
    order = sorted(dialects, key=lambda d: d is not message.hint)
    for dialect in order:
        digest = _integrity(message.data, attr.offset, dialect, key)
        if hmac.compare_digest(digest, attr.value):
            return dialect
    return None


# -- encoding -----------------------------------------------------------------------------------

def pad_value(value: bytes, fill: bytes = b"\0") -> bytes:
    """``value`` padded inside itself to a multiple of 4 ([MS-ICE2] unaligned layout)."""
    return value + fill * (-len(value) % 4)


def encode(message_type: int, transaction_id: bytes,
           attributes: Sequence[tuple[int, bytes]], dialect: StunDialect, *,
           key: bytes | None = None, fingerprint: bool = True,
           legacy_fingerprint: bool = False) -> bytes:
    """A STUN message; MESSAGE-INTEGRITY (when ``key``) and FINGERPRINT computed the
    ``dialect``'s way. [MS-ICE2] writes no padding bytes: callers pad variable-length values
    with :func:`pad_value` so that aligned readers read the same attributes."""
    if len(transaction_id) != 12:
        raise ValueError("a transaction id is 12 bytes")
    aligned = dialect is StunDialect.RFC5389
    body = bytearray()
    for attr_type, value in attributes:
        if attr_type in (MESSAGE_INTEGRITY, FINGERPRINT):
            raise ValueError("MESSAGE-INTEGRITY and FINGERPRINT are computed, not given")
        body += struct.pack("!HH", attr_type, len(value)) + value
        if aligned:
            body += bytes(-len(value) % 4)
    final = len(body) + (24 if key is not None else 0) + (8 if fingerprint else 0)
    data = bytearray(struct.pack("!HHI", message_type, final, COOKIE) + transaction_id + body)
    if key is not None:
        offset = len(data)
        mac = _integrity(bytes(data), offset, dialect, key)
        data += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        crc = _fingerprint(bytes(data), legacy_fingerprint)
        data += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return bytes(data)


# -- the aioice hook ----------------------------------------------------------------------------

class DialectPolicy:
    """Which dialects one ICE agent accepts and sends, and what it learned of its peer.

    ``accept``: the dialects whose integrity we accept (a real [MS-ICE2] client accepts only
    its own; the gateway both). ``prefer``: the dialect of our checks until the peer's is
    known; while unknown and both are accepted, retransmissions alternate between them, so
    a peer of either kind answers one. ``legacy_copies``: send the version-1 copy of each
    [MS-ICE2] check, as a version-2 Microsoft client does, until the peer shows a version
    (only when it differs from the check: most legacy CRCs equal the standard one). A
    version-1 peer (legacy FINGERPRINT, no version) gets legacy FINGERPRINTs."""

    def __init__(self, label: str, *, accept: Iterable[StunDialect] = tuple(StunDialect),
                 prefer: StunDialect = StunDialect.MS_ICE2,
                 legacy_copies: bool = False) -> None:
        self.label = label
        self.accept = frozenset(accept)
        if prefer not in self.accept:
            raise ValueError(f"preferred dialect {prefer.value} is not accepted")
        self.prefer = prefer
        self.legacy_copies = legacy_copies
        self.peer: StunDialect | None = None
        """The peer's dialect, learned from its first authenticated check or response."""
        self.peer_version: int | None = None
        """MS-IMPLEMENTATION-VERSION the peer sent (None: none seen)."""
        self.peer_legacy_crc = False
        """The peer is an [MS-ICE2] version-1 agent (legacy FINGERPRINT, no version): we
        write its FINGERPRINT the same way."""
        self._replies: OrderedDict[bytes, StunDialect] = OrderedDict()
        self._tries: OrderedDict[bytes, int] = OrderedDict()
        self._sent: OrderedDict[bytes, tuple[StunDialect, ...]] = OrderedDict()
        """Per check: the dialect of each transmission, in order."""
        self._refusals: OrderedDict[bytes, int] = OrderedDict()
        self._forced: OrderedDict[bytes, StunDialect] = OrderedDict()
        """Per check: the dialect left after the peer refused the others."""

    @classmethod
    def pinned(cls, label: str, dialect: StunDialect) -> DialectPolicy:
        """An agent that speaks only ``dialect`` (a real client)."""
        return cls(label, accept=(dialect,), prefer=dialect,
                   legacy_copies=dialect is StunDialect.MS_ICE2)

    def learned(self, dialect: StunDialect, version: int | None, how: str, *,
                legacy_crc: bool = False) -> None:
        if version is not None:
            self.peer_version = version
        legacy_crc = legacy_crc and dialect is StunDialect.MS_ICE2 and version is None
        if self.peer is dialect and self.peer_legacy_crc == legacy_crc:
            return
        previous, self.peer, self.peer_legacy_crc = self.peer, dialect, legacy_crc
        logger.info("%s: STUN dialect %s%s (%s%s)", self.label, dialect.value,
                    " version 1 (legacy FINGERPRINT)" if legacy_crc else "", how,
                    "" if previous is None else f"; was {previous.value}")

    def request_dialect(self, transaction_id: bytes) -> StunDialect:
        """The dialect of this transmission of our check ``transaction_id``."""
        dialect = self._request_dialect(transaction_id)
        _remember(self._sent, transaction_id, (*self._sent.get(transaction_id, ()), dialect))
        return dialect

    def _request_dialect(self, transaction_id: bytes) -> StunDialect:
        forced = self._forced.get(transaction_id)
        if forced is not None:
            return forced
        if self.peer is not None:
            return self.peer
        if len(self.accept) == 1:
            return self.prefer
        tries = self._tries.get(transaction_id, 0)
        _remember(self._tries, transaction_id, tries + 1)
        other = next(d for d in self.accept if d is not self.prefer)
        return self.prefer if tries % 2 == 0 else other

    def refused(self, transaction_id: bytes) -> StunDialect | None:
        """The peer answered our check ``transaction_id`` with an unauthenticated 400/401
        (it could not read or verify it): the dialect to send it in now, or None when every
        dialect we speak was refused (the check fails, RFC 8445 §7.2.5.2.4).

        An error response does not say which transmission it answers: the n-th refusal is
        taken to answer the n-th transmission (their order on the way out and back)."""
        sent = self._sent.get(transaction_id, ())
        count = self._refusals.get(transaction_id, 0) + 1
        _remember(self._refusals, transaction_id, count)
        refused = set(sent[:count])
        order: list[StunDialect | None] = [self.peer, self.prefer, *StunDialect]
        left: list[StunDialect] = [d for d in order
                                   if d is not None and d in self.accept and d not in refused]
        if not left:
            return None
        _remember(self._forced, transaction_id, left[0])
        return left[0]

    def last_sent(self, transaction_id: bytes) -> StunDialect | None:
        """The dialect of the latest transmission of our check ``transaction_id``."""
        sent = self._sent.get(transaction_id, ())
        return sent[-1] if sent else None

    def reply_to(self, transaction_id: bytes, dialect: StunDialect) -> None:
        """Note the dialect of a request (its syntax, then its verified integrity)."""
        if dialect in self.accept:
            _remember(self._replies, transaction_id, dialect)

    def reply_dialect(self, transaction_id: bytes) -> StunDialect:
        """Answer a request in its own dialect (when we speak it)."""
        return self._replies.get(transaction_id, self.peer or self.prefer)


def _remember(table: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > 256:  # transactions come from the network: bound the memory
        table.popitem(last=False)


class _ReceivedMessage(Message):
    """An aioice Message read by :func:`decode`, verified by :func:`verify_integrity`."""

    def __init__(self, decoded: DecodedMessage, policy: DialectPolicy,
                 attributes: dict[str, Any]) -> None:
        super().__init__(Method(decoded.message_type & 0x3EEF),
                         Class(decoded.message_type & 0x0110),
                         transaction_id=decoded.transaction_id, attributes=attributes)
        self.decoded = decoded
        self.policy = policy
        self.refusal = False
        """An unsigned 400/401 to our check, refused in every dialect: aioice's transaction
        takes it (and fails) instead of discarding it for want of MESSAGE-INTEGRITY."""

    def check_message_integrity(self, key: bytes) -> bool:
        if self.refusal:
            return True
        dialect = verify_integrity(self.decoded, key, self.policy.accept)
        if dialect is None:
            return False
        kind = "check" if self.message_class == Class.REQUEST else "response"
        if self.message_class == Class.REQUEST:
            self.policy.reply_to(self.transaction_id, dialect)
        self.policy.learned(dialect, self.decoded.implementation_version,
                            f"from the peer's {kind}",
                            legacy_crc=self.decoded.fingerprint is Fingerprint.LEGACY)
        return True


def to_aioice(decoded: DecodedMessage, policy: DialectPolicy) -> Message:
    """The aioice view of ``decoded`` (unknown attributes left out); ValueError (or
    struct.error, from aioice's unpackers) if a known attribute does not unpack or the
    method is unknown."""
    attributes: dict[str, Any] = {}
    for attr in decoded.attributes:
        entry = ATTRIBUTES_BY_TYPE.get(attr.type)
        if entry is None:
            continue
        _, name, _, unpack = entry
        if attr.type == USERNAME:
            attributes[name] = decoded.username
        elif unpack is unpack_xor_address:
            attributes[name] = unpack(attr.value, decoded.transaction_id)
        else:
            attributes[name] = unpack(attr.value)
    return _ReceivedMessage(decoded, policy, attributes)


def from_aioice(message: Message, dialect: StunDialect, *,
                candidate_identifier: str | None = None) -> list[tuple[int, bytes]]:
    """aioice's attributes (all but MESSAGE-INTEGRITY and FINGERPRINT) as (type, value), with
    the [MS-ICE2] padding and attributes added for that dialect."""
    out: list[tuple[int, bytes]] = []
    ms = dialect is StunDialect.MS_ICE2
    for name, value in message.attributes.items():
        if name in ("MESSAGE-INTEGRITY", "FINGERPRINT"):
            continue
        attr_type, _, pack, _ = ATTRIBUTES_BY_NAME[name]
        raw = pack(value, message.transaction_id) if pack is pack_xor_address else pack(value)
        if ms:
            # A reason phrase padded with spaces stays readable text.
            raw = pad_value(raw, b" " if attr_type == ERROR_CODE else b"\0")
        out.append((attr_type, raw))
    if ms:
        if message.message_class == Class.REQUEST and candidate_identifier:
            out.append((MS_CANDIDATE_IDENTIFIER, pad_value(candidate_identifier.encode())))
        out.append((MS_IMPLEMENTATION_VERSION, struct.pack("!I", MS_VERSION)))
    return out


class DialectProtocol(StunProtocol):
    """aioice's socket protocol reading and writing STUN in the peer's dialect.

    The agent (``receiver``) has a ``stun_policy`` (:class:`DialectPolicy`) and the usual
    aioice ``local_password`` / ``remote_password``. Messages without USERNAME or
    MESSAGE-INTEGRITY (binding requests to a STUN server) stay aioice's RFC 5389 bytes."""

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        addr = (addr[0], addr[1])
        data = bytes(data) if not isinstance(data, str) else data.encode()
        policy: DialectPolicy = self.receiver.stun_policy  # type: ignore[attr-defined]
        try:
            decoded = decode(data)
            message = to_aioice(decoded, policy)
        except (ValueError, struct.error) as error:  # aioice's unpackers raise struct.error
            if looks_like_stun(data):
                # A version-2 agent's legacy copy, or garbage: never media.
                logger.debug("%s: STUN from %s:%d dropped: %s", policy.label, addr[0], addr[1],
                             error)
                return
            self.receiver.data_received(data, self.local_candidate.component)
            return
        if message.message_class in (Class.RESPONSE, Class.ERROR):
            transaction = self.transactions.get(message.transaction_id)
            if transaction is None:
                return
            if (message.message_class == Class.ERROR and message.error_code in (400, 401)
                    and isinstance(message, _ReceivedMessage)
                    and decoded.get(MESSAGE_INTEGRITY) is None):
                self._refused(message, addr)
            transaction.response_received(message, addr)
        elif message.message_class == Class.REQUEST:
            policy.reply_to(decoded.transaction_id, decoded.hint)
            self.receiver.request_received(message, addr, self)

    def _refused(self, error: _ReceivedMessage, addr: tuple[str, int]) -> None:
        # aioice drops an unsigned error to a signed request (RFC 8489 §9.1.4) and waits for
        # its next retransmission (0.5 s and doubling) or its timeout (about 40 s): a check
        # sent as [MS-ICE2] to a standard agent (which answers 401) waited, and a peer done
        # with its own checks may not be answering then. A 400/401 from where the check went
        # settles it now: sent again in the dialect not refused yet, or failed.
        policy: DialectPolicy = self.receiver.stun_policy  # type: ignore[attr-defined]
        sent = self._checks().get(error.transaction_id)
        if sent is None or sent[1] != addr:
            return
        dialect = policy.refused(error.transaction_id)
        logger.info("%s: %s:%d refused a check (%s); %s", policy.label, addr[0], addr[1],
                    error.error_code,
                    "the check fails" if dialect is None else f"sent again as {dialect.value}")
        if dialect is None:
            error.refusal = True
        elif policy.last_sent(error.transaction_id) is not dialect:
            self.send_stun(sent[0], addr)

    def _checks(self) -> OrderedDict[bytes, tuple[Message, tuple[str, int]]]:
        """Our signed requests by transaction, to send again when refused."""
        checks: OrderedDict[bytes, tuple[Message, tuple[str, int]]] | None = \
            self.__dict__.get("_dialect_checks")
        if checks is None:
            checks = self.__dict__["_dialect_checks"] = OrderedDict()
        return checks

    def send_stun(self, message: Message, addr: tuple[str, int]) -> None:
        policy: DialectPolicy = self.receiver.stun_policy  # type: ignore[attr-defined]
        signed = "MESSAGE-INTEGRITY" in message.attributes
        if not signed and "USERNAME" not in message.attributes \
                and message.message_class == Class.REQUEST:
            self.transport.sendto(bytes(message), addr)  # to a STUN server: plain RFC 5389
            return
        request = message.message_class == Class.REQUEST
        if request:
            _remember(self._checks(), message.transaction_id, (message, addr))
            dialect = policy.request_dialect(message.transaction_id)
            password = self.receiver.remote_password
        else:
            dialect = policy.reply_dialect(message.transaction_id)
            password = self.receiver.local_password
        key = password.encode("utf-8") if signed and password else None
        attributes = from_aioice(message, dialect,
                                 candidate_identifier=self.local_candidate.foundation)
        message_type = message.message_method | message.message_class
        fingerprint = "FINGERPRINT" in message.attributes
        ms = dialect is StunDialect.MS_ICE2
        data = encode(message_type, message.transaction_id, attributes, dialect, key=key,
                      fingerprint=fingerprint, legacy_fingerprint=ms and policy.peer_legacy_crc)
        self.transport.sendto(data, addr)
        if (request and fingerprint and ms and policy.legacy_copies
                and policy.peer_version is None and not policy.peer_legacy_crc):
            legacy = encode(message_type, message.transaction_id, attributes, dialect,
                            key=key, legacy_fingerprint=True)
            if legacy != data:  # an identical copy would be a mere retransmission
                self.transport.sendto(legacy, addr)
