"""Multipart MIME bodies (RFC 2046 §5.1) as SIP carries them (RFC 3261 §7.4, RFC 5621).

Microsoft Lync offers SDP as multipart/alternative: two application/sdp parts, the first
with ``Content-Disposition: session; handling=optional; ms-proxy-2007fallback``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from . import grammar
from .errors import LocalProtocolError, ParseError
from .headers import parse_params

__all__ = ["BodyPart", "encode_multipart", "media_type", "parse_multipart"]


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One part of a multipart body."""

    content_type: str
    """The part's Content-Type value as written ("text/plain" when the part has none)."""
    headers: tuple[tuple[str, str], ...] = ()
    """The part's other headers (Content-Disposition, Content-ID ...), in order."""
    body: bytes = b""
    """The part's content."""

    @property
    def disposition(self) -> str | None:
        """The Content-Disposition value, or None."""
        return self.header("Content-Disposition")

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    @property
    def media_type(self) -> str:
        """type/subtype, lower-case, without parameters."""
        return media_type(self.content_type)[0]


_MEDIA_TYPE = re.compile(rf"[ \t]*({grammar.TOKEN})[ \t]*/[ \t]*({grammar.TOKEN})[ \t]*")


def media_type(content_type: str) -> tuple[str, dict[str, str | None]]:
    """("type/subtype" lower-cased, parameters with quoted values unquoted)."""
    m = _MEDIA_TYPE.match(content_type)
    if m is None:
        raise ParseError(f"malformed Content-Type {content_type[:60]!r}")
    params = parse_params(content_type[m.end():].strip(), "Content-Type")
    values: dict[str, str | None] = {}
    for name, value in params.items():
        if value is not None and value.startswith('"'):
            value = grammar.unquote(value)
        values[name.lower()] = value
    return f"{m[1]}/{m[2]}".lower(), values


_FOLD = re.compile(rb"\r?\n[ \t]+")
_LINE = re.compile(rb"\r?\n")
# boundary := 0*69<bchars> bcharsnospace (RFC 2046 §5.1.1)
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def parse_multipart(content_type: str, body: bytes) -> list[BodyPart]:
    """Split a multipart body into its parts; raises ParseError."""
    kind, params = media_type(content_type)
    if not kind.startswith("multipart/"):
        raise ParseError(f"{kind} is not multipart")
    boundary = params.get("boundary")
    if not boundary or not _BOUNDARY.fullmatch(boundary):
        raise ParseError("multipart body without a valid boundary")
    marks = _delimiters(body, b"--" + boundary.encode("ascii"))
    if not marks:
        raise ParseError("multipart body has no boundary delimiter")
    parts: list[BodyPart] = []
    for i, (_, end, close) in enumerate(marks):
        if close:  # close delimiter: the epilogue follows
            break
        if i + 1 == len(marks):
            raise ParseError("multipart body has no closing delimiter")
        parts.append(_parse_part(body[end: marks[i + 1][0]]))
    else:
        raise ParseError("multipart body has no closing delimiter")
    if not parts:
        raise ParseError("multipart body has no parts")
    return parts


def _delimiters(body: bytes, dash: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, is-close) of each delimiter line, in order, not overlapping.

    A delimiter is ``dash ["--"] *LWSP (CRLF / LF / end)`` at the start of the body or
    after a line break, the line break belonging to it. Found with bytes.find on the dash
    (a regex anchored on "start or line break" is tried at every byte of the body)."""
    marks: list[tuple[int, int, bool]] = []
    floor = 0  # delimiters do not overlap: the line break must lie after the last one
    size = len(body)
    k = body.find(dash)
    while k >= 0:
        if k == 0:
            start = 0
        elif k - 2 >= floor and body[k - 2: k] == b"\r\n":
            start = k - 2
        elif k - 1 >= floor and body[k - 1] == 0x0A:
            start = k - 1
        else:
            start = -1
        if start >= 0:
            end = k + len(dash)
            close = body.startswith(b"--", end)
            if close:
                end += 2
            while end < size and body[end] in b" \t":
                end += 1
            if end == size or body.startswith(b"\n", end):
                end = min(end + 1, size)
            elif body.startswith(b"\r\n", end):
                end += 2
            else:
                start = -1
            if start >= 0:
                marks.append((start, end, close))
                floor = end
                k = body.find(dash, end)
                continue
        k = body.find(dash, k + 1)
    return marks


def _parse_part(data: bytes) -> BodyPart:
    if data.startswith(b"\r\n") or data.startswith(b"\n"):
        head, content = b"", data[2 if data.startswith(b"\r\n") else 1:]
    else:
        m = re.search(rb"\r?\n\r?\n", data)
        if m is None:
            raise ParseError("multipart part without a blank line after its headers")
        head, content = data[: m.start()], data[m.end():]
    content_type = "text/plain"
    headers: list[tuple[str, str]] = []
    if head:
        text = _FOLD.sub(b" ", head).decode("utf-8", "surrogateescape")
        for line in _LINE.split(text.encode("utf-8", "surrogateescape")):
            hm = grammar.HEADER_LINE.fullmatch(line.decode("utf-8", "surrogateescape"))
            if hm is None:
                raise ParseError("malformed multipart part header")
            name, value = hm["name"], hm["value"]
            if name.lower() in ("content-type", "c"):
                content_type = value
            else:
                headers.append((name, value))
    return BodyPart(content_type, tuple(headers), content)


def encode_multipart(
    parts: Iterable[BodyPart], subtype: str = "alternative", boundary: str | None = None
) -> tuple[str, bytes]:
    """(Content-Type value, body) for ``parts`` as multipart/``subtype``."""
    parts = list(parts)
    if not parts:
        raise LocalProtocolError("a multipart body needs at least one part")
    if boundary is None:
        boundary = secrets.token_hex(12)
    elif not _BOUNDARY.fullmatch(boundary):
        raise LocalProtocolError(f"invalid multipart boundary {boundary!r}")
    dash = b"--" + boundary.encode("ascii")
    out = bytearray()
    for part in parts:
        if dash in part.body:
            raise LocalProtocolError("multipart boundary occurs in a part")
        out += dash + b"\r\n"
        lines = [f"Content-Type: {part.content_type}"]
        lines += [f"{n}: {v}" for n, v in part.headers]
        for line in lines:
            if "\r" in line or "\n" in line:
                raise LocalProtocolError("multipart header contains CR/LF")
        out += ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        out += part.body + b"\r\n"
    out += dash + b"--\r\n"
    return f'multipart/{subtype};boundary="{boundary}"', bytes(out)
