"""SIP/SIPS URIs (RFC 3261 §19.1) and the ordered, case-insensitive parameter map they share
with Via and name-addr."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import quote as _pct_quote
from urllib.parse import unquote_to_bytes

from . import grammar
from .errors import LocalProtocolError, ParseError

T = TypeVar("T")

__all__ = ["PARSE_MEMO_SIZE", "URI", "ParseMemo", "Params", "parse_host"]


class Params:
    """Immutable ordered mapping name -> value | None; names compare case-insensitively.

    Values keep their exact text (a quoted-string keeps its quotes), so a parsed parameter
    list serialises back to what was received.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str | None]] = ()) -> None:
        self._items: tuple[tuple[str, str | None], ...] = tuple(items)

    @classmethod
    def of(cls, **values: str | None) -> Params:
        """Params from keyword arguments (``Params.of(lr=None, transport="tcp")``)."""
        return cls(tuple(values.items()))

    def _index(self, name: str) -> int:
        items = self._items
        # Exact spelling first (callers and peers almost always write names lower-case).
        for i, (n, _) in enumerate(items):
            if n == name:
                return i
        lname = name.lower()
        for i, (n, _) in enumerate(items):
            if n.lower() == lname:
                return i
        return -1

    def __getitem__(self, name: str) -> str | None:
        i = self._index(name)
        if i < 0:
            raise KeyError(name)
        return self._items[i][1]

    def get(self, name: str, default: str | None = None) -> str | None:
        i = self._index(name)
        return default if i < 0 else self._items[i][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index(name) >= 0

    def __iter__(self) -> Iterator[str]:
        return (n for n, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def items(self) -> tuple[tuple[str, str | None], ...]:
        return self._items

    def with_param(self, name: str, value: str | None = None) -> Params:
        """A copy with ``name`` set (in place if present, else appended)."""
        i = self._index(name)
        if i < 0:
            return Params(self._items + ((name, value),))
        items = list(self._items)
        items[i] = (items[i][0], value)
        return Params(tuple(items))

    def replace(self, **values: str | None) -> Params:
        """A copy with each keyword set (``replace(received="192.0.2.1", rport="5060")``)."""
        out = self
        for name, value in values.items():
            out = out.with_param(name.replace("_", "-"), value)
        return out

    def without(self, name: str) -> Params:
        """A copy without ``name``."""
        lname = name.lower()
        return Params(tuple(item for item in self._items if item[0].lower() != lname))

    def _key(self) -> tuple[tuple[str, str | None], ...]:
        return tuple((n.lower(), v) for n, v in self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Params({list(self._items)!r})"

    def __str__(self) -> str:
        return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self._items)


_IPV4 = re.compile(grammar.IPV4)


def parse_host(host: str) -> str:
    """``host`` as stored: IPv6 without brackets (checked), anything else as written."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ParseError(f"invalid IPv6 reference {host!r}") from None
        return host[1:-1]
    if host[:1].isdigit() and _IPV4.fullmatch(host):
        # 1*3DIGIT per octet (leading zeros allowed by the ABNF), each at most 255.
        if any(int(octet) > 255 for octet in host.split(".")):
            raise ParseError(f"invalid IPv4 address {host!r}")
    return host


def format_host(host: str) -> str:
    """``host`` as written in a URI or Via: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def parse_port(text: str | None) -> int | None:
    if text is None:
        return None
    port = int(text) if len(text) <= 5 else 65536
    if port > 65535:
        raise ParseError(f"port {text} out of range")
    return port


# Characters a user part may carry unescaped (unreserved / user-unreserved).
_USER_SAFE = "-_.!~*'()&=+$,;?/"
_PASSWORD_SAFE = "-_.!~*'()&=+$,"
_URI_PARAM = re.compile(rf";({grammar.PARAMCHAR}+)(?:=({grammar.PARAMCHAR}+))?")


def _unescape(text: str) -> str:
    # surrogateescape keeps bytes that are not UTF-8, so re-escaping restores them.
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _escape(text: str, safe: str) -> str:
    return _pct_quote(text.encode("utf-8", "surrogateescape"), safe=safe)


PARSE_MEMO_SIZE = 4096
"""Parsed texts remembered per header kind (oldest forgotten first): the texts come from
the network, so the memo must stay bounded."""


class ParseMemo(Generic[T]):
    """text -> parsed immutable value, bounded; a failed parse raises and is not kept.

    A call's messages repeat the same URI, name-addr and Via texts (and the gateway sends
    them on again), so each is parsed once.
    """

    __slots__ = ("_items", "_parse")

    def __init__(self, parse: Callable[[str], T]) -> None:
        self._parse = parse
        self._items: dict[str, T] = {}

    def __call__(self, text: str) -> T:
        value = self._items.get(text)
        if value is None:
            value = self._items[text] = self._parse(text)
            if len(self._items) > PARSE_MEMO_SIZE:
                del self._items[next(iter(self._items))]
        return value

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class URI:
    """A SIP or SIPS URI; other schemes (tel:, http: ...) keep their text in ``opaque``."""

    scheme: str
    """Lower-case scheme: "sip", "sips", or another for an absoluteURI."""
    user: str | None = None
    """User part, %-escapes decoded."""
    password: str | None = None
    """Password, %-escapes decoded (deprecated by RFC 3261 but still parsed)."""
    host: str = ""
    """Host name or address; IPv6 without brackets."""
    port: int | None = None
    """Port, or None for the transport default."""
    params: Params = field(default_factory=Params)
    """URI parameters (transport, lr, maddr, ...), raw text."""
    headers: tuple[tuple[str, str], ...] = ()
    """``?name=value`` URI headers, raw (still escaped) text."""
    opaque: str | None = None
    """For a non-SIP scheme: everything after "scheme:"."""

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse a SIP/SIPS URI or an absoluteURI; raises ParseError."""
        return _URIS(text) if cls is URI else cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> URI:
        m = grammar.SIP_URI.fullmatch(text)
        if m is None:
            if text[:4].lower() in ("sip:", "sips"):
                raise ParseError(f"malformed SIP URI {text[:80]!r}")
            m2 = grammar.ABSOLUTE_URI.fullmatch(text)
            if m2 is None:
                raise ParseError(f"malformed URI {text[:80]!r}")
            return cls(scheme=m2["scheme"].lower(), opaque=m2["rest"])
        user = m["user"]
        password = m["password"]
        params = Params((p[1], p[2]) for p in _URI_PARAM.finditer(m["params"] or ""))
        headers: tuple[tuple[str, str], ...] = ()
        if m["headers"]:
            pairs = (h.partition("=") for h in m["headers"].split("&"))
            headers = tuple((name, value) for name, _, value in pairs)
        return cls(
            scheme=m["scheme"].lower(),
            user=None if user is None else _unescape(user),
            password=None if password is None else _unescape(password),
            host=parse_host(m["host"]),
            port=parse_port(m["port"]),
            params=params,
            headers=headers,
        )

    @property
    def is_sip(self) -> bool:
        return self.opaque is None

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def with_params(self, **values: str | None) -> URI:
        from dataclasses import replace

        return replace(self, params=self.params.replace(**values))

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if not self.host:
            raise LocalProtocolError("SIP URI without host")
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_escape(self.user, _USER_SAFE))
            if self.password is not None:
                out += [":", _escape(self.password, _PASSWORD_SAFE)]
            out.append("@")
        out.append(format_host(self.host))
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(str(self.params))
        if self.headers:
            out += ["?", "&".join(f"{n}={v}" for n, v in self.headers)]
        return "".join(out)


_URIS: ParseMemo[URI] = ParseMemo(URI._parse)
