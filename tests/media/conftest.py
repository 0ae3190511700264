"""Shared loaders for the SDP vectors in tests/data/sdp (see its README for sources)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data" / "sdp"


def crlf(text: str) -> bytes:
    """SIP bodies use CRLF; the files on disk use LF for readability."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def load_sdp(name: str) -> bytes:
    return crlf((DATA / name).read_text())


def load_mime(name: str) -> tuple[str, bytes]:
    """(Content-Type, body) of a .mime vector: a Content-Type line, a blank line, the body."""
    header, _, body = (DATA / name).read_text().partition("\n\n")
    name_, _, value = header.partition(":")
    assert name_.lower() == "content-type"
    return value.strip(), crlf(body)


def mime_parts(name: str) -> list[bytes]:
    """The SDP parts of a .mime vector, split by hand (independent of sip.multipart)."""
    content_type, body = load_mime(name)
    boundary = content_type.split("boundary=", 1)[1].strip('"')
    chunks = body.split(b"--" + boundary.encode())[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") + b"\r\n"
            for chunk in chunks]


@pytest.fixture
def lync_v19() -> bytes:
    return mime_parts("lync2013_av_offer.mime")[1]


@pytest.fixture
def lync_v6() -> bytes:
    return mime_parts("lync2013_av_offer.mime")[0]
