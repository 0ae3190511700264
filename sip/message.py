"""SIP messages (RFC 3261 §7): a header list kept as raw text and parsed on access,
requests, responses, the datagram parser, and response construction."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import grammar
from .errors import LocalProtocolError, ParseError, ProtocolError
from .headers import Address, CSeq, Via, canonical_name, split_list
from .uri import URI

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_REASON_LENGTH",
    "REASON_PHRASES",
    "Headers",
    "Message",
    "Request",
    "Response",
    "bounded_reason",
    "error_response",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 65536
MAX_REASON_LENGTH = 100
"""Longest reason phrase we write: a reason naming input (an alias, a header) must not
echo it whole; over UDP every retransmission of the response would reflect it."""
T = TypeVar("T")

# Headers whose values contain commas that are not list separators (§7.3.1 exceptions,
# credentials, dates) or that are single-valued: getlist() does not split them.
_NOT_LISTS = frozenset(
    {
        "www-authenticate", "authorization", "proxy-authenticate", "proxy-authorization",
        "authentication-info", "date", "call-id", "cseq", "from", "to", "content-length",
        "content-type", "content-disposition", "max-forwards", "expires", "min-expires",
        "subject", "user-agent", "server", "organization", "timestamp", "retry-after",
        "mime-version", "priority", "reply-to", "refer-to", "referred-by", "event",
        "subscription-state", "session-expires", "min-se", "rack", "rseq",
    }
)  # fmt: skip


class Headers:
    """Ordered, mutable list of (name, raw value) with case-insensitive, compact-form-aware
    lookups. Structured values are parsed on first access and cached until a header of
    that name changes (a proxy's added Via leaves the parsed From, To, CSeq ... in place)."""

    __slots__ = ("_items", "_cache")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(n, v) for n, v in items]
        self._cache: dict[str, Any] = {}

    # -- reading -------------------------------------------------------------
    def _index(self) -> dict[str, list[str]]:
        # canonical name -> values, built in one pass and dropped on any change.
        index: dict[str, list[str]] | None = self._cache.get("")
        if index is None:
            index = {}
            for n, v in self._items:
                index.setdefault(canonical_name(n), []).append(v)
            self._cache[""] = index
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (raw text), or ``default``."""
        values = self._index().get(canonical_name(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every header line's raw value for ``name``, in order, unsplit."""
        return list(self._index().get(canonical_name(name), ()))

    def getlist(self, name: str) -> list[str]:
        """All values of ``name``; comma lists split (never inside quotes or <>)."""
        values = self.get_all(name)
        if canonical_name(name) in _NOT_LISTS:
            return values
        out: list[str] = []
        for v in values:
            out += split_list(v)
        return out

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return canonical_name(name) in self._index()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def parsed(self, key: str, parse: Callable[[Headers], T]) -> T:
        """``parse(self)`` cached under ``key`` until a ``key`` header changes: ``key`` is
        the canonical name (lower-case long form) of the one header ``parse`` reads."""
        cache = self._cache
        if key in cache:
            return cache[key]  # type: ignore[no-any-return]
        value = parse(self)
        cache[key] = value
        return value

    # -- writing -------------------------------------------------------------
    def add(self, name: str, value: object) -> None:
        """Append ``name: value``."""
        self._items.append((name, _check_value(name, value)))
        self._changed(name)

    def prepend(self, name: str, value: object) -> None:
        """Insert ``name: value`` before the first header of that name (or at the top):
        how a proxy adds its Via or a Record-Route."""
        key = canonical_name(name)
        text = _check_value(name, value)
        for i, (n, _) in enumerate(self._items):
            if canonical_name(n) == key:
                self._items.insert(i, (name, text))
                break
        else:
            self._items.insert(0, (name, text))
        self._changed(key)

    def set(self, name: str, value: object) -> None:
        """Replace every ``name`` header by one (at the first one's place, or appended)."""
        key = canonical_name(name)
        text = _check_value(name, value)
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self._items:
            if canonical_name(n) == key:
                if not placed:
                    out.append((name, text))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((name, text))
        self._items = out
        self._changed(key)

    def remove(self, name: str) -> None:
        """Remove every ``name`` header."""
        key = canonical_name(name)
        self._items = [(n, v) for n, v in self._items if canonical_name(n) != key]
        self._changed(key)

    def pop_first(self, name: str) -> str | None:
        """Remove one value from the top of ``name`` (the first element of a comma list):
        how a proxy removes its Via or a Route entry. Returns it, or None."""
        key = canonical_name(name)
        for i, (n, v) in enumerate(self._items):
            if canonical_name(n) == key:
                parts = split_list(v)
                if len(parts) > 1:
                    self._items[i] = (n, ", ".join(parts[1:]))
                else:
                    del self._items[i]
                self._changed(key)
                return parts[0] if parts else None
        return None

    def _changed(self, name: str) -> None:
        cache = self._cache
        cache.pop("", None)
        cache.pop(canonical_name(name), None)

    def copy(self) -> Headers:
        """An independent copy; what was already parsed carries over (immutable values)."""
        h = Headers()
        h._items = list(self._items)
        h._cache = dict(self._cache)
        return h

    def __eq__(self, other: object) -> bool:
        """Same headers in the same order. Content-Length is left out: it describes the
        framing, and encode() always rewrites it from the body."""
        if not isinstance(other, Headers):
            return NotImplemented
        return self._without_length() == other._without_length()

    __hash__ = None  # type: ignore[assignment]

    def _without_length(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self._items if canonical_name(n) != "content-length"]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _check_value(name: str, value: object) -> str:
    text = str(value)
    if not grammar.TOKEN_RE.fullmatch(name):
        raise LocalProtocolError(f"invalid header name {name!r}")
    if "\r" in text or "\n" in text:
        raise LocalProtocolError(f"header {name} value contains CR/LF")
    return text.strip()


# -- structured accessors, shared by requests and responses -------------------------


def _parse_via(h: Headers) -> list[Via]:
    vias: list[Via] = []
    for value in h.get_all("via"):
        vias += Via.parse_many(value)
    return vias


def _parse_contact(h: Headers) -> list[Address]:
    out: list[Address] = []
    for value in h.get_all("contact"):
        if value.strip() == "*":
            continue
        out += Address.parse_many(value)
    return out


def _parse_route(name: str) -> Callable[[Headers], list[Address]]:
    def parse(h: Headers) -> list[Address]:
        out: list[Address] = []
        for value in h.get_all(name):
            out += Address.parse_many(value)
        return out

    return parse


def _parse_int(name: str, limit: int) -> Callable[[Headers], int | None]:
    def parse(h: Headers) -> int | None:
        values = h.get_all(name)
        if not values:
            return None
        if len(values) > 1:
            raise ParseError(f"more than one {name} header")
        text = values[0].strip()
        if not text.isdigit() or not text.isascii() or len(text) > 10 or int(text) > limit:
            raise ParseError(f"invalid {name} value {text[:20]!r}")
        return int(text)

    return parse


def _parse_single(name: str, parse_value: Callable[[str], T]) -> Callable[[Headers], T]:
    def parse(h: Headers) -> T:
        values = h.get_all(name)
        if not values:
            raise ParseError(f"missing {name} header")
        if len(values) > 1:
            raise ParseError(f"more than one {name} header")
        return parse_value(values[0])

    return parse


def _call_id(text: str) -> str:
    # callid = word [ "@" word ]
    if not re.fullmatch(rf"{grammar.WORD}(?:@{grammar.WORD})?", text):
        raise ParseError(f"malformed Call-ID {text[:60]!r}")
    return text


_parse_call_id = _parse_single("Call-ID", _call_id)
_parse_from = _parse_single("From", Address.parse)
_parse_to = _parse_single("To", Address.parse)
_parse_cseq = _parse_single("CSeq", CSeq.parse)
_parse_max_forwards = _parse_int("Max-Forwards", 255)
_parse_content_length = _parse_int("Content-Length", 2**31 - 1)
_parse_expires = _parse_int("Expires", 2**32 - 1)
_parse_record_route = _parse_route("record-route")
_parse_routes = _parse_route("route")


class Message:
    """What requests and responses share: headers, body and structured header access."""

    __slots__ = ()
    headers: Headers
    body: bytes

    @property
    def via(self) -> list[Via]:
        return self.headers.parsed("via", _parse_via)

    @property
    def top_via(self) -> Via:
        vias = self.via
        if not vias:
            raise ParseError("missing Via header")
        return vias[0]

    @property
    def call_id(self) -> str:
        return self.headers.parsed("call-id", _parse_call_id)

    @property
    def cseq(self) -> CSeq:
        return self.headers.parsed("cseq", _parse_cseq)

    @property
    def from_(self) -> Address:
        return self.headers.parsed("from", _parse_from)

    @property
    def to(self) -> Address:
        return self.headers.parsed("to", _parse_to)

    @property
    def contact(self) -> list[Address]:
        """Contact addresses ([] when absent or ``*``)."""
        return self.headers.parsed("contact", _parse_contact)

    @property
    def record_route(self) -> list[Address]:
        return self.headers.parsed("record-route", _parse_record_route)

    @property
    def route(self) -> list[Address]:
        return self.headers.parsed("route", _parse_routes)

    @property
    def max_forwards(self) -> int | None:
        return self.headers.parsed("max-forwards", _parse_max_forwards)

    @property
    def expires(self) -> int | None:
        return self.headers.parsed("expires", _parse_expires)

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as written (parameters included), or None."""
        return self.headers.get("Content-Type")

    def _encode(self, start_line: str) -> bytes:
        lines = [start_line]
        has_length = False
        for name, value in self.headers._items:
            if canonical_name(name) == "content-length":
                if has_length:
                    continue
                has_length = True
                value = str(len(self.body))
            lines.append(f"{name}: {value}")
        if not has_length:
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


@dataclass(slots=True, eq=True)
class Request(Message):
    """A SIP request."""

    method: str
    """Method, case-sensitive (INVITE, ACK, ...)."""
    uri: URI
    """Request-URI."""
    headers: Headers = field(default_factory=Headers)
    """Header list, raw text."""
    body: bytes = b""
    """Message body."""

    def encode(self) -> bytes:
        """Wire bytes; Content-Length is written from the body."""
        if not grammar.TOKEN_RE.fullmatch(self.method):
            raise LocalProtocolError(f"invalid method {self.method!r}")
        return self._encode(f"{self.method} {self.uri} {grammar.SIP_VERSION}")

    def copy(self) -> Request:
        return Request(self.method, self.uri, self.headers.copy(), self.body)


@dataclass(slots=True, eq=True)
class Response(Message):
    """A SIP response."""

    status: int
    """Status code, 100-699."""
    reason: str = ""
    """Reason phrase."""
    headers: Headers = field(default_factory=Headers)
    """Header list, raw text."""
    body: bytes = b""
    """Message body."""

    def encode(self) -> bytes:
        """Wire bytes; Content-Length is written from the body."""
        if not 100 <= self.status <= 699:
            raise LocalProtocolError(f"status {self.status} out of range")
        if "\r" in self.reason or "\n" in self.reason:
            raise LocalProtocolError("reason phrase contains CR/LF")
        return self._encode(f"{grammar.SIP_VERSION} {self.status} {self.reason}")

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)


# -- parsing ------------------------------------------------------------------------

_LINE_SPLIT = re.compile(r"\r?\n")
_FOLD = re.compile(r"[ \t]*\r?\n[ \t]+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header block without the blank line, the rest) of a message."""
    m = _HEADER_END.search(data)
    if m is None:
        raise ParseError("no blank line after the headers")
    return data[: m.start()], data[m.end():]


def parse_header_block(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The start line and (name, value) pairs of a header block, folding undone."""
    if "\n " in text or "\n\t" in text:
        text = _FOLD.sub(" ", text)
    lines = _LINE_SPLIT.split(text)
    items: list[tuple[str, str]] = []
    match = grammar.HEADER_LINE.fullmatch
    for line in lines[1:]:
        m = match(line)
        if m is None:
            raise ParseError(f"malformed header line {line[:60]!r}")
        items.append((m["name"], m["value"]))
    return lines[0], items


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # §7.3.1: header text is UTF-8, but a stray byte must not cost the whole
        # message; surrogateescape keeps it for an exact re-encode.
        return data.decode("utf-8", "surrogateescape")


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Request | Response:
    """Parse one whole message (a datagram, or one framed by StreamFramer).

    Validates the start line and the headers every transaction needs (Via, From, To,
    Call-ID, CSeq, Max-Forwards, Content-Length); other headers are parsed on access.
    Raises ParseError only.
    """
    try:
        return _parse_message(data, max_size)
    except ProtocolError as exc:
        if isinstance(exc, ParseError):
            raise
        raise ParseError(exc.message, exc.status_hint) from exc
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
        # The fuzz invariant: nothing but ParseError leaves the parser.
        logger.debug("unexpected parser failure", exc_info=True)
        raise ParseError(f"malformed message ({type(exc).__name__})") from exc


def _parse_message(data: bytes, max_size: int) -> Request | Response:
    if len(data) > max_size:
        raise ParseError(f"message larger than {max_size} bytes", 413)
    data = data.lstrip(b"\r\n")  # §7.5: ignore CRLFs before the start line
    if not data:
        raise ParseError("empty message")
    head, rest = split_head(data)
    start, items = parse_header_block(_decode(head))
    headers = Headers()
    headers._items = items
    message: Request | Response
    if start.startswith("SIP/"):
        m = grammar.STATUS_LINE.fullmatch(start)
        if m is None:
            raise ParseError(f"malformed status line {start[:80]!r}")
        if m["version"] != grammar.SIP_VERSION:
            raise ParseError(f"unsupported version {m['version'][:20]!r}", 505)
        status = int(m["status"])
        if not 100 <= status <= 699:
            raise ParseError(f"status code {status} out of range")
        message = Response(status, m["reason"] or "", headers)
    else:
        m = grammar.REQUEST_LINE.fullmatch(start)
        if m is None:
            raise ParseError(f"malformed request line {start[:80]!r}")
        version = m["version"]
        if version.upper() != grammar.SIP_VERSION:
            if re.fullmatch(r"SIP/[0-9]+\.[0-9]+", version, re.IGNORECASE):
                raise ParseError(f"unsupported version {version[:20]!r}", 505)
            raise ParseError(f"malformed request line {start[:80]!r}")
        uri = URI.parse(m["uri"])
        if uri.headers:
            raise ParseError("Request-URI carries headers")  # §19.1.5: not allowed there
        message = Request(m["method"], uri, headers)
        if message.cseq.method != message.method:
            raise ParseError("CSeq method does not match the request method")
    _validate(message)
    length = message.headers.parsed("content-length", _parse_content_length)
    if length is None:
        message.body = rest
    elif length > len(rest):
        raise ParseError("body shorter than Content-Length")
    else:
        message.body = rest[:length]  # §18.3: bytes beyond Content-Length are dropped
    return message


def _validate(message: Request | Response) -> None:
    """Touch every header the lower layers rely on, so a bad one fails here."""
    if not message.via:
        raise ParseError("missing Via header")
    message.call_id  # noqa: B018
    message.cseq  # noqa: B018
    message.from_  # noqa: B018
    message.to  # noqa: B018
    message.max_forwards  # noqa: B018
    message.contact  # noqa: B018


# -- building -----------------------------------------------------------------------

REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie + 64 random bits)."""
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag (48 random bits, §19.3 asks for at least 32)."""
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    """A fresh Call-ID ``random@host``."""
    return f"{secrets.token_hex(12)}@{host}"


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` per §8.2.6: Via, From, To (+ ``to_tag`` unless one is
    there), Call-ID, CSeq and Timestamp copied."""
    headers = Headers()
    items = headers._items
    for name, value in request.headers._items:
        key = canonical_name(name)
        if key == "to":
            if to_tag is not None and request.to.tag is None:
                value = f"{value};tag={to_tag}"
            items.append(("To", value))
        elif key in _COPIED:
            items.append((_COPIED[key], value))
    if content_type is not None:
        items.append(("Content-Type", content_type))
    elif body:
        raise LocalProtocolError("a response body needs a content type")
    text = REASON_PHRASES.get(status, "") if reason is None else bounded_reason(reason)
    return Response(status, text, headers, body)


def bounded_reason(text: str) -> str:
    """``text`` as a reason phrase: one line, at most :data:`MAX_REASON_LENGTH` chars."""
    if len(text) <= MAX_REASON_LENGTH and text.isprintable():
        return text
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    if len(text) > MAX_REASON_LENGTH:
        text = text[: MAX_REASON_LENGTH - 3].rstrip() + "..."
    return text


_COPIED = {"via": "Via", "from": "From", "call-id": "Call-ID", "cseq": "CSeq",
           "timestamp": "Timestamp"}


def _reason_text(message: str) -> str:
    # A reason phrase is one line of printable text.
    return bounded_reason(message) or "Bad Request"


def error_response(data: bytes, error: ProtocolError) -> bytes | None:
    """The best-effort reply to a request that failed to parse (its reason names the
    problem), built from whatever headers can be read; None for a response, an ACK, or
    bytes with no Via to answer to."""
    try:
        data = data.lstrip(b"\r\n")
        m = _HEADER_END.search(data)
        head = data[: m.start()] if m else data
        text = _decode(head)
        if "\n " in text or "\n\t" in text:
            text = _FOLD.sub(" ", text)
        lines = _LINE_SPLIT.split(text)
        start = lines[0]
        if start.startswith("SIP/"):
            return None
        method = start.split(" ", 1)[0]
        if method == "ACK" or not grammar.TOKEN_RE.fullmatch(method):
            return None
        copied: list[tuple[str, str]] = []
        have_via = have_to_tag = False
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            name = name.strip()
            if not sep or not grammar.TOKEN_RE.fullmatch(name):
                continue
            key = canonical_name(name)
            value = value.strip()
            if key == "to":
                have_to_tag = ";tag=" in value.replace(" ", "").lower()
                copied.append(("To", value))
            elif key in _COPIED:
                have_via = have_via or key == "via"
                copied.append((_COPIED[key], value))
        if not have_via:
            return None
        out: list[tuple[str, str]] = []
        for name, value in copied:
            if name == "To" and not have_to_tag:
                value = f"{value};tag={new_tag()}"
            out.append((name, value))
        status = error.status_hint if 400 <= error.status_hint <= 699 else 400
        return Response(status, _reason_text(error.message), Headers(out)).encode()
    except Exception:  # best effort: never let the error path itself fail a listener
        logger.debug("could not build an error response", exc_info=True)
        return None
