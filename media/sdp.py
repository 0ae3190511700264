"""SDP (RFC 8866) model: parse and serialise, keeping attribute order and unknown attributes.

Why not aiortc's ``aiortc.sdp``: it keeps only the attributes WebRTC needs and drops the rest
(``b=`` lines, ``a=crypto``, ``a=label``, every ``a=x-*``), so a Microsoft offer does not
survive a round trip through it. The rewrites here need the exact lines, so this module keeps
every line it is given, in order, as plain text fields on frozen dataclasses.

The model is deliberately thin: an ``Attribute`` is ``name`` + raw ``value``; readers of
particular attributes (rtpmap, candidate, crypto ...) live next to their users
(``media.ms_dialect``). Every decode failure is an ``SdpError`` (a ``sip.errors.ParseError``),
never another exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from sip.errors import ParseError

__all__ = [
    "Attribute",
    "Bandwidth",
    "Codec",
    "Connection",
    "Media",
    "Origin",
    "SdpError",
    "SessionDescription",
    "parse_sdp",
]

# The order RFC 8866 §5 fixes for session-level lines; r= belongs to the t= before it, so it
# shares t='s rank (a stable sort then keeps "t r r t r" as written).
_SESSION_ORDER = {"v": 0, "o": 1, "s": 2, "i": 3, "u": 4, "e": 5, "p": 6, "c": 7, "b": 8,
                  "t": 9, "r": 9, "z": 10, "k": 11, "a": 12, "m": 13}
# Media-level order (§5): m= i= c= b= k= a=.
_MEDIA_ORDER = {"i": 0, "c": 1, "b": 2, "k": 3}

# RFC 8866 §9: type = %x61-7A ; value = byte-string (no NUL, CR, LF)
_LINE = re.compile(r"([a-z])=([^\x00\r\n]*)")
_TYPE_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
# att-field = token (RFC 8866 §9; token chars of RFC 4566)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# media-field = %s"m" "=" media SP port ["/" integer] SP proto 1*(SP fmt)
_MEDIA = re.compile(r"([!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+) (\d{1,5})(?:/(\d+))? (\S+)((?: \S+)+)")
# rtpmap-value = payload-type SP encoding-name "/" clock-rate [ "/" encoding-params ]
_RTPMAP = re.compile(r"(\d{1,3}) ([^/\s]+)/(\d+)(?:/(\d+))?")

MAX_SDP_SIZE = 65536

_GOOD_NAMES: set[str] = set()
"""Attribute names already checked against _TOKEN (a description repeats a few dozen)."""


class SdpError(ParseError):
    """An SDP body that cannot be decoded (answered 400, or 488 where the hint says so)."""


@dataclass(frozen=True, slots=True)
class Attribute:
    """One ``a=`` line, kept verbatim."""

    name: str
    """The attribute name (case kept as received; compare with ``is_named``)."""
    value: str | None = None
    """Everything after the first colon; None for a property attribute (``a=sendrecv``)."""

    def is_named(self, name: str) -> bool:
        own = self.name
        return own == name or own.lower() == name.lower()

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Attribute:
        name, colon, value = text.partition(":")
        if name not in _GOOD_NAMES:
            if not _TOKEN.fullmatch(name):
                raise SdpError(f"bad attribute name in a={text!r}")
            if len(_GOOD_NAMES) < 1024:  # names come from the network: bound the memo
                _GOOD_NAMES.add(name)
        return cls(name, value if colon else None)


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line."""

    username: str = "-"
    """User name, "-" when none."""
    session_id: str = "0"
    """Numeric session id (kept as text: Microsoft sends 0, others 64-bit values)."""
    session_version: str = "0"
    """Numeric version, bumped on each change of the description."""
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"
    """Unicast address of the machine that made the description."""

    def __str__(self) -> str:
        return " ".join((self.username, self.session_id, self.session_version, self.nettype,
                         self.addrtype, self.address))

    @classmethod
    def parse(cls, text: str) -> Origin:
        parts = text.split(" ")
        if len(parts) != 6 or not all(parts):
            raise SdpError(f"o= needs six fields: {text!r}")
        if not (parts[1].isdigit() and parts[2].isdigit()):
            raise SdpError(f"o= session id and version must be numeric: {text!r}")
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line."""

    address: str
    """Connection address (unicast for everything here)."""
    addrtype: str = "IP4"
    """IP4 or IP6."""
    nettype: str = "IN"

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"

    @classmethod
    def parse(cls, text: str) -> Connection:
        parts = text.split(" ")
        if len(parts) != 3 or not all(parts):
            raise SdpError(f"c= needs three fields: {text!r}")
        return cls(address=parts[2], addrtype=parts[1], nettype=parts[0])


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """A ``b=`` line (``CT``, ``AS``, ``TIAS`` ...)."""

    bwtype: str
    value: int
    """Kilobits per second (bits per second for TIAS)."""

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Bandwidth:
        bwtype, colon, value = text.partition(":")
        if not colon or not _TOKEN.fullmatch(bwtype) or not value.isdigit():
            raise SdpError(f"bad b= line: {text!r}")
        return cls(bwtype, int(value))


@dataclass(frozen=True, slots=True)
class Codec:
    """A payload type as an ``a=rtpmap`` (+ ``a=fmtp``) describes it."""

    payload_type: int
    name: str
    """Encoding name as written (``PCMU``, ``X-H264UC`` ...)."""
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None
    """The a=fmtp parameters for this payload type, verbatim."""

    def rtpmap(self) -> Attribute:
        tail = f"/{self.channels}" if self.channels is not None else ""
        return Attribute("rtpmap", f"{self.payload_type} {self.name}/{self.clock_rate}{tail}")

    def attributes(self) -> list[Attribute]:
        """The rtpmap and (when there are parameters) fmtp lines for this codec."""
        out = [self.rtpmap()]
        if self.fmtp is not None:
            out.append(Attribute("fmtp", f"{self.payload_type} {self.fmtp}"))
        return out


# RFC 3551 table 4/5: static payload types a description may use without an rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1), 8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1), 13: ("CN", 8000, 1), 18: ("G729", 8000, 1), 34: ("H263", 90000, None),
}


@dataclass(frozen=True, slots=True)
class Media:
    """One media description: the ``m=`` line and everything up to the next one."""

    kind: str
    """audio, video, applicationsharing, data ..."""
    port: int
    proto: str
    """RTP/AVP, RTP/SAVP, TCP/RTP/AVP ..."""
    formats: tuple[str, ...]
    """Payload types (or other format names) in preference order."""
    port_count: int | None = None
    """The "/2" of "m=audio 5000/2 ..." (rare)."""
    info: str | None = None
    """i= line."""
    connection: Connection | None = None
    """Media-level c= (overrides the session's)."""
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    """k= line (obsolete, still sent by old Microsoft clients)."""
    attributes: tuple[Attribute, ...] = ()

    # -- reading ---------------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The value of the first attribute called ``name`` ("" for a property attribute)."""
        for attr in self.attributes:
            if attr.is_named(name):
                return "" if attr.value is None else attr.value
        return None

    def get_all(self, name: str) -> list[str]:
        return [a.value or "" for a in self.attributes if a.is_named(name)]

    def has(self, name: str) -> bool:
        return any(a.is_named(name) for a in self.attributes)

    @property
    def direction(self) -> str:
        """sendrecv / sendonly / recvonly / inactive (sendrecv when absent, RFC 3264 §5.1)."""
        for attr in self.attributes:
            if attr.value is None and attr.name.lower() in _DIRECTIONS:
                return attr.name.lower()
        return "sendrecv"

    def codecs(self) -> list[Codec]:
        """The RTP payload types of this m= line in m= order, with rtpmap and fmtp joined.

        A format with neither an rtpmap nor a static assignment is skipped; a malformed rtpmap
        raises ``SdpError``.
        """
        maps: dict[int, tuple[str, int, int | None]] = {}
        fmtps: dict[int, str] = {}
        for attr in self.attributes:
            name = attr.name.lower()
            if name == "rtpmap":
                m = _RTPMAP.fullmatch((attr.value or "").strip())
                if m is None:
                    raise SdpError(f"bad a=rtpmap:{attr.value}")
                channels = int(m.group(4)) if m.group(4) else None
                maps[int(m.group(1))] = (m.group(2), int(m.group(3)), channels)
            elif name == "fmtp":
                pt_text, _, params = (attr.value or "").partition(" ")
                if pt_text.isdigit():
                    fmtps[int(pt_text)] = params.strip()
        out = []
        for fmt in self.formats:
            if not fmt.isdigit():
                continue
            pt = int(fmt)
            known = maps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if known is None:
                continue
            name, rate, channels = known
            if pt not in maps:
                channels = None  # static type without rtpmap: keep the form minimal
            out.append(Codec(pt, name, rate, channels, fmtps.get(pt)))
        return out

    # -- building --------------------------------------------------------------------------
    def with_attributes(self, attributes: Iterable[Attribute]) -> Media:
        return replace(self, attributes=tuple(attributes))

    def without(self, *names: str) -> Media:
        """A copy with every attribute whose name is one of ``names`` removed."""
        drop = {n.lower() for n in names}
        return replace(self, attributes=tuple(a for a in self.attributes
                                              if a.name.lower() not in drop))

    def lines(self) -> Iterator[str]:
        count = f"/{self.port_count}" if self.port_count is not None else ""
        yield f"m={self.kind} {self.port}{count} {self.proto} {' '.join(self.formats)}"
        if self.info is not None:
            yield f"i={self.info}"
        if self.connection is not None:
            yield f"c={self.connection}"
        for bw in self.bandwidths:
            yield f"b={bw}"
        if self.key is not None:
            yield f"k={self.key}"
        for attr in self.attributes:
            yield f"a={attr}"


_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole SDP body. ``str()`` gives the CRLF-terminated text, ``bytes()`` its UTF-8."""

    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    """s= (Microsoft writes "session"; "-" when there is nothing to say)."""
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    timing: tuple[str, ...] = ("0 0",)
    """The t= values (with any r= lines kept in ``extra_fields``)."""
    extra_fields: tuple[tuple[str, str], ...] = ()
    """Other session-level lines (i u e p r z k) as (type, value), in received order."""
    attributes: tuple[Attribute, ...] = ()
    media: tuple[Media, ...] = ()

    def get(self, name: str) -> str | None:
        for attr in self.attributes:
            if attr.is_named(name):
                return "" if attr.value is None else attr.value
        return None

    def connection_for(self, media: Media) -> Connection | None:
        """The c= that applies to ``media`` (its own, else the session's)."""
        return media.connection or self.connection

    def lines(self) -> Iterator[str]:
        tagged: list[tuple[str, str]] = [("v", "0"), ("o", str(self.origin)),
                                         ("s", self.session_name)]
        if self.connection is not None:
            tagged.append(("c", str(self.connection)))
        tagged.extend(("b", str(bw)) for bw in self.bandwidths)
        tagged.extend(("t", t) for t in self.timing)
        tagged.extend(self.extra_fields)
        tagged.sort(key=lambda item: _SESSION_ORDER[item[0]])  # stable: keeps t/r grouping
        for kind, value in tagged:
            yield f"{kind}={value}"
        for attr in self.attributes:
            yield f"a={attr}"
        for media in self.media:
            yield from media.lines()

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body (RFC 8866). Lines may end in CRLF or bare LF.

    Raises ``SdpError`` for anything that is not a well-formed description: missing v/o/s/t,
    a line out of place, an unknown type letter, a bad m= or o= line, a non-UTF-8 body.
    """
    if isinstance(data, bytes):
        if len(data) > MAX_SDP_SIZE:
            raise SdpError(f"SDP body of {len(data)} bytes is too large", 413)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(f"SDP body is not UTF-8: {exc.reason}") from None
    else:
        text = data
    raw_lines = text.replace("\r\n", "\n").split("\n")
    while raw_lines and raw_lines[-1].strip() == "":
        raw_lines.pop()
    if not raw_lines:
        raise SdpError("empty SDP body")
    if "\x00" in text or "\r" in text.replace("\r\n", ""):
        # Rare: let the full line pattern name the first bad line.
        for raw in raw_lines:
            if _LINE.fullmatch(raw) is None:
                raise SdpError(f"malformed SDP line {raw[:60]!r}")
    lines: list[tuple[str, str]] = []
    for raw in raw_lines:
        # What _LINE checks, without NUL and CR (none in the text, tested above).
        if len(raw) < 2 or raw[1] != "=" or raw[0] not in _TYPE_LETTERS:
            raise SdpError(f"malformed SDP line {raw[:60]!r}")
        lines.append((raw[0], raw[2:]))
    if lines[0] != ("v", "0"):
        raise SdpError("SDP must start with v=0")
    return _Builder().build(lines[1:])


class _Builder:
    """Walks the typed lines once, checking RFC 8866 §5 order as it goes."""

    def __init__(self) -> None:
        self.origin: Origin | None = None
        self.session_name: str | None = None
        self.connection: Connection | None = None
        self.bandwidths: list[Bandwidth] = []
        self.timing: list[str] = []
        self.extra: list[tuple[str, str]] = []
        self.attributes: list[Attribute] = []
        self.media: list[Media] = []

    def build(self, lines: list[tuple[str, str]]) -> SessionDescription:
        rank = 0
        index = 0
        while index < len(lines):
            kind, value = lines[index]
            if kind == "m":
                break
            new_rank = _SESSION_ORDER.get(kind)
            if new_rank is None or kind == "v":
                raise SdpError(f"unexpected {kind}= line at session level")
            if new_rank < rank:
                raise SdpError(f"{kind}= line out of order at session level")
            rank = new_rank
            self._session_line(kind, value)
            index += 1
        if self.origin is None:
            raise SdpError("SDP has no o= line")
        if self.session_name is None:
            raise SdpError("SDP has no s= line")
        if not self.timing:
            raise SdpError("SDP has no t= line")
        while index < len(lines):
            start = index
            index += 1
            while index < len(lines) and lines[index][0] != "m":
                index += 1
            self.media.append(_media(lines[start][1], lines[start + 1:index]))
        return SessionDescription(
            origin=self.origin, session_name=self.session_name, connection=self.connection,
            bandwidths=tuple(self.bandwidths), timing=tuple(self.timing),
            extra_fields=tuple(self.extra), attributes=tuple(self.attributes),
            media=tuple(self.media))

    def _session_line(self, kind: str, value: str) -> None:
        if kind == "o":
            if self.origin is not None:
                raise SdpError("more than one o= line")
            self.origin = Origin.parse(value)
        elif kind == "s":
            if self.session_name is not None:
                raise SdpError("more than one s= line")
            self.session_name = value
        elif kind == "c":
            if self.connection is not None:
                raise SdpError("more than one session-level c= line")
            self.connection = Connection.parse(value)
        elif kind == "b":
            self.bandwidths.append(Bandwidth.parse(value))
        elif kind == "t":
            self.timing.append(value)
        elif kind == "a":
            self.attributes.append(Attribute.parse(value))
        else:
            self.extra.append((kind, value))


def _media(m_value: str, body: list[tuple[str, str]]) -> Media:
    m = _MEDIA.fullmatch(m_value)
    if m is None:
        raise SdpError(f"malformed m= line {m_value[:80]!r}")
    port = int(m.group(2))
    if port > 65535:
        raise SdpError(f"m= port {port} out of range")
    info: str | None = None
    connection: Connection | None = None
    key: str | None = None
    bandwidths: list[Bandwidth] = []
    attributes: list[Attribute] = []
    rank = 0
    for kind, value in body:
        if kind == "a":
            attributes.append(Attribute.parse(value))
            rank = 4
            continue
        new_rank = _MEDIA_ORDER.get(kind)
        if new_rank is None:
            raise SdpError(f"unexpected {kind}= line in m={m.group(1)} section")
        if new_rank < rank:
            raise SdpError(f"{kind}= line out of order in m={m.group(1)} section")
        if (kind == "i" and info is not None) or (kind == "k" and key is not None):
            raise SdpError(f"more than one {kind}= line in m={m.group(1)} section")
        rank = new_rank
        if kind == "i":
            info = value
        elif kind == "c":
            # Several c= lines are legal only for multicast; one is all a unicast peer sends.
            if connection is not None:
                raise SdpError(f"more than one c= line in m={m.group(1)} section")
            connection = Connection.parse(value)
        elif kind == "b":
            bandwidths.append(Bandwidth.parse(value))
        else:
            key = value
    return Media(
        kind=m.group(1), port=port, proto=m.group(4), formats=tuple(m.group(5).split()),
        port_count=int(m.group(3)) if m.group(3) else None, info=info, connection=connection,
        bandwidths=tuple(bandwidths), key=key, attributes=tuple(attributes))
