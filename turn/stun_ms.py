"""The two codec pieces Microsoft's STUN dialects share: [MS-ICE2] version 2 connectivity
checks (``media.ms_stun``) and [MS-TURN] (``turn.ms_turn``).

- Attributes may be read without 4-byte alignment: libnice's Microsoft modes (and so Lync,
  as libnice reproduces it) write each value right after its header, its length being the
  value's own length.
- MESSAGE-INTEGRITY is HMAC-SHA1 over its input zero-padded to a multiple of 64 bytes (the
  RFC 3489 rule). What the input's length field counts is the dialect's own: MS-ICE2 counts
  the FINGERPRINT after MESSAGE-INTEGRITY, MS-TURN ends at MESSAGE-INTEGRITY (it has no
  FINGERPRINT); the callers set it.

Hand-written: aioice and the other STUN codecs we know read only the RFC 5389 layout and
compute only the RFC 5389 integrity. Lives in ``turn`` so that ``media`` (which may import
``turn``) and ``turn`` (which must not import ``media``) both use it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = ["AttributeLayoutError", "RawAttribute", "padded_hmac_sha1", "walk_attributes"]

_ATTR = struct.Struct("!HH")


class AttributeLayoutError(ValueError):
    """The attributes do not fill the message in the layout asked for."""


@dataclass(frozen=True, slots=True)
class RawAttribute:
    type: int
    value: bytes
    offset: int
    """Where the attribute's header starts in the message."""


def walk_attributes(data: bytes, start: int, aligned: bool) -> tuple[RawAttribute, ...]:
    """Every attribute from ``start`` to the end of ``data``, values padded to 4 bytes when
    ``aligned`` (RFC 5389) or not (the Microsoft layout); raises
    :class:`AttributeLayoutError` when they do not end exactly with ``data``."""
    attributes: list[RawAttribute] = []
    pos, end = start, len(data)
    while pos < end:
        if end - pos < 4:
            raise AttributeLayoutError("truncated attribute header")
        attr_type, length = _ATTR.unpack_from(data, pos)
        stop = pos + 4 + length
        if stop > end:
            raise AttributeLayoutError(f"attribute 0x{attr_type:04x} overruns the message")
        attributes.append(RawAttribute(attr_type, data[pos + 4:stop], pos))
        pos = stop + (-length % 4 if aligned else 0)
    if pos != end:
        raise AttributeLayoutError("attributes do not end with the message")
    return tuple(attributes)


def padded_hmac_sha1(text: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 of ``text`` zero-padded to a multiple of 64 bytes."""
    return hmac.new(key, text + bytes(-len(text) % 64), hashlib.sha1).digest()
