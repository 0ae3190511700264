"""Structured SIP header values (RFC 3261 §20): name-addr, Via, CSeq, and the helpers that
split comma lists and read parameter lists without breaking quoted strings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from . import grammar
from .errors import LocalProtocolError, ParseError
from .uri import URI, Params, ParseMemo, format_host, parse_host, parse_port

__all__ = [
    "COMPACT_FORMS",
    "Address",
    "CSeq",
    "Via",
    "canonical_name",
    "parse_params",
    "split_list",
]

# RFC 3261 §7.3.3 and later RFCs (3265 o/u, 3515 r, 3892 b, 4028 x, 3841 a/j/d, 4474 y/n).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}


_CANONICAL: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """The lookup key of a header name: lower-case long form."""
    key = _CANONICAL.get(name)
    if key is None:
        lname = name.lower()
        key = COMPACT_FORMS.get(lname, lname) if len(lname) == 1 else lname
        if len(_CANONICAL) < 4096:  # names come from the network: bound the memo
            _CANONICAL[name] = key
    return key


def split_list(value: str) -> list[str]:
    """Split a comma list at top level: never inside a quoted string or <...>."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    out: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError("unterminated quoted string")
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def parse_params(text: str, what: str) -> Params:
    """``*( SEMI generic-param )`` exactly as written (values keep quotes); ``text`` starts
    at the first ';' or is empty."""
    items: list[tuple[str, str | None]] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos] != ";":
            raise ParseError(f"malformed {what} parameters")
        m = grammar.GENERIC_PARAM.match(text, pos + 1)
        if m is None:
            raise ParseError(f"malformed {what} parameter")
        items.append((m["name"], m["value"]))
        pos = m.end()
    return Params(tuple(items))


def _format_display(name: str) -> str:
    if "\r" in name or "\n" in name:
        raise LocalProtocolError("display name with CR/LF")
    return grammar.quote(name)


_SEMI = re.compile(r"[ \t]*;")


@dataclass(frozen=True, slots=True)
class Address:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route ...)."""

    uri: URI
    """The addressed URI."""
    display_name: str | None = None
    """Display name, unquoted (None when absent)."""
    params: Params = field(default_factory=Params)
    """Header parameters after the URI (tag, expires, q, +sip.instance ...)."""

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse one ``(name-addr / addr-spec) *(SEMI param)``; raises ParseError."""
        return _ADDRESSES(text) if cls is Address else cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Address:
        m = grammar.NAME_ADDR.match(text)
        if m is not None:
            display = m["display"]
            if display is not None:
                display = grammar.unquote(display) if display.startswith('"') else display
            uri = URI.parse(m["uri"])
            rest = text[m.end() :]
        else:
            stripped = text.strip()
            if "<" in stripped or '"' in stripped.split(";", 1)[0]:
                raise ParseError(f"malformed name-addr {text[:80]!r}")
            # addr-spec: its URI cannot carry parameters or headers (§20.10), so the
            # first ';' starts the header parameters.
            uri_text, sep, params_text = stripped.partition(";")
            if "?" in uri_text or not uri_text:
                raise ParseError(f"addr-spec with headers must use <> {text[:80]!r}")
            display = None
            uri = URI.parse(uri_text.rstrip())
            rest = sep + params_text
        return cls(uri=uri, display_name=display, params=parse_params(rest.strip(), "address"))

    @classmethod
    def parse_many(cls, text: str) -> list[Address]:
        """Parse a comma list of addresses (Contact, Route, Record-Route)."""
        return [cls.parse(part) for part in split_list(text)]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> Address:
        return replace(self, params=self.params.with_param("tag", tag))

    def with_params(self, **values: str | None) -> Address:
        return replace(self, params=self.params.replace(**values))

    def __str__(self) -> str:
        if self.display_name is not None:
            return f"{_format_display(self.display_name)} <{self.uri}>{self.params}"
        return f"<{self.uri}>{self.params}"


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm: ``SIP/2.0/transport sent-by;params``."""

    transport: str
    """Transport token, upper-case (UDP, TCP, TLS, WS ...)."""
    host: str
    """sent-by host; IPv6 without brackets."""
    port: int | None = None
    """sent-by port, None when absent."""
    params: Params = field(default_factory=Params)
    """branch, received, rport, maddr, ttl and unknown params (ms-received-port ...)."""
    protocol: str = grammar.SIP_VERSION
    """protocol-name "/" protocol-version."""

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm; raises ParseError."""
        return _VIAS(text) if cls is Via else cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Via:
        m = grammar.VIA_HEAD.match(text)
        if m is None:
            raise ParseError(f"malformed Via {text[:80]!r}")
        params = parse_params(text[m.end() :].rstrip(), "Via")
        via = cls(
            transport=m["transport"].upper(),
            host=parse_host(m["host"]),
            port=parse_port(m["port"]),
            params=params,
            protocol=f"{m['name'].upper()}/{m['version']}",
        )
        via._check()
        return via

    @classmethod
    def parse_many(cls, text: str) -> list[Via]:
        parts = split_list(text)
        if not parts:
            raise ParseError("empty Via")
        return [cls.parse(part) for part in parts]

    def _check(self) -> None:
        for name in ("branch", "received", "maddr", "ttl"):
            if name in self.params and self.params[name] is None:
                raise ParseError(f"Via {name} without value")
        rport = self.params.get("rport")
        if rport is not None:
            parse_port(rport) if rport.isdigit() else _bad(f"Via rport {rport!r}")
        received = self.params.get("received")
        if received is not None and not re.fullmatch(r"[0-9A-Fa-f:.]+", received):
            raise ParseError(f"Via received {received!r} is not an address")

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value, None when absent or empty (see ``has_rport``)."""
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        """True when the sender asked for rport (RFC 3581), with or without value."""
        return "rport" in self.params

    def with_params(self, **values: str | None) -> Via:
        return replace(self, params=self.params.replace(**values))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {format_host(self.host)}{port}{self.params}"


def _bad(message: str) -> None:
    raise ParseError(message)


_CSEQ = re.compile(rf"[ \t]*([0-9]+)[ \t]+({grammar.TOKEN})[ \t]*")


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: seq method`` (seq below 2**31, §8.1.1.5)."""

    seq: int
    """Sequence number."""
    method: str
    """Method, case-sensitive."""

    @classmethod
    def parse(cls, text: str) -> CSeq:
        m = _CSEQ.fullmatch(text)
        if m is None:
            raise ParseError(f"malformed CSeq {text[:80]!r}")
        digits = m[1]
        if len(digits) > 10 or int(digits) >= 2**31:
            raise ParseError("CSeq number out of range")
        return cls(int(digits), m[2])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


_ADDRESSES: ParseMemo[Address] = ParseMemo(Address._parse)
_VIAS: ParseMemo[Via] = ParseMemo(Via._parse)
