"""What a plain SIP video endpoint offers and answers (RFC 3264 offer/answer).

Plain RTP only (RTP/AVP, RTP/AVPF): audio PCMU, PCMA, G.722 (+ telephone-event for RFC 2833
DTMF, as Unified CM uses), video H.264. An answer has one m= per offered m=, in order; what
the endpoint cannot take gets port 0 (RFC 3264 §6). Hold is mirrored (§6.1 / §8.4).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from media.sdp import Attribute, Codec, Connection, Media, Origin, SessionDescription

__all__ = [
    "AUDIO_CODECS",
    "MIRRORED_DIRECTION",
    "PLAIN_RTP",
    "VIDEO_CODECS",
    "answer",
    "negotiate",
    "offer",
    "with_direction",
]

PLAIN_RTP = frozenset({"RTP/AVP", "RTP/AVPF"})
"""Profiles the endpoint can receive: no SRTP, no ICE."""

AUDIO_CODECS: tuple[Codec, ...] = (
    Codec(9, "G722", 8000),
    Codec(0, "PCMU", 8000),
    Codec(8, "PCMA", 8000),
    Codec(101, "telephone-event", 8000, fmtp="0-15"),
)
"""Offered audio, in preference order (payload types as Unified CM uses them)."""

VIDEO_CODECS: tuple[Codec, ...] = (
    Codec(97, "H264", 90000, fmtp="profile-level-id=42801f;packetization-mode=1"),
)
"""Offered video."""

# Codecs that carry no media on their own: an m= line with only these is refused.
_AUXILIARY = frozenset({"telephone-event", "cn"})

MIRRORED_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
"""RFC 3264 §6.1: the answer's direction for each offered one (hold: sendonly -> recvonly)."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome for one offered m= line."""

    codecs: tuple[Codec, ...]
    """Accepted codecs in the offer's order with the offer's payload types; empty: refused."""
    direction: str
    """The answer's direction attribute."""

    @property
    def accepted(self) -> bool:
        return bool(self.codecs)


def negotiate(offered: Media, session: SessionDescription | None = None) -> Negotiated:
    """Which of the offered codecs this endpoint takes for one m= line."""
    direction = MIRRORED_DIRECTION.get(offered.direction, "sendrecv")
    connection = offered.connection or (session.connection if session is not None else None)
    if connection is not None and _is_unspecified(connection.address):
        direction = "inactive" if offered.direction == "inactive" else "recvonly"  # RFC 2543 hold
    supported = {"audio": AUDIO_CODECS, "video": VIDEO_CODECS}.get(offered.kind.lower())
    if supported is None or offered.port == 0 or offered.proto.upper() not in PLAIN_RTP:
        return Negotiated((), direction)
    names = {codec.name.lower() for codec in supported}
    try:
        codecs = offered.codecs()
    except ValueError:
        return Negotiated((), direction)
    taken = tuple(codec for codec in codecs if codec.name.lower() in names)
    if all(codec.name.lower() in _AUXILIARY for codec in taken):
        return Negotiated((), direction)
    return Negotiated(taken, direction)


def offer(
    host: str,
    audio_port: int,
    video_port: int | None,
    *,
    session_id: int,
    version: int = 0,
    direction: str = "sendrecv",
) -> SessionDescription:
    """The endpoint's offer: audio (and video when a port is given)."""
    media = [_media("audio", audio_port, "RTP/AVP", AUDIO_CODECS, direction)]
    if video_port is not None:
        media.append(_media("video", video_port, "RTP/AVP", VIDEO_CODECS, direction))
    return SessionDescription(
        origin=_origin(host, session_id, version),
        session_name="gateway-emulator endpoint",
        connection=Connection(host, _addrtype(host)),
        media=tuple(media),
    )


def answer(
    offer_sdp: SessionDescription,
    outcomes: Sequence[Negotiated],
    ports: Sequence[int | None],
    host: str,
    *,
    session_id: int,
    version: int,
) -> SessionDescription:
    """The answer to ``offer_sdp``: one m= per offered m=, refused ones with port 0."""
    media = []
    for offered, outcome, port in zip(offer_sdp.media, outcomes, ports, strict=True):
        if outcome.accepted and port is not None:
            media.append(
                _media(offered.kind, port, offered.proto, outcome.codecs, outcome.direction)
            )
        else:
            # §6: a refused stream keeps its m= with port 0 and at least one format.
            media.append(Media(offered.kind, 0, offered.proto, offered.formats[:1] or ("0",)))
    return SessionDescription(
        origin=_origin(host, session_id, version),
        session_name="gateway-emulator endpoint",
        connection=Connection(host, _addrtype(host)),
        media=tuple(media),
    )


def with_direction(sdp: SessionDescription, direction: str, version: int) -> SessionDescription:
    """``sdp`` again with every live m= set to ``direction`` (hold / resume re-offers)."""
    media = []
    for m in sdp.media:
        kept = [a for a in m.attributes if a.name.lower() not in MIRRORED_DIRECTION]
        kept.append(Attribute(direction if m.port else "inactive"))
        media.append(m.with_attributes(kept))
    return replace(
        sdp, origin=replace(sdp.origin, session_version=str(version)), media=tuple(media)
    )


def _media(kind: str, port: int, proto: str, codecs: Sequence[Codec], direction: str) -> Media:
    attributes: list[Attribute] = []
    for codec in codecs:
        attributes.extend(codec.attributes())
    attributes.append(Attribute(direction))
    return Media(
        kind,
        port,
        proto,
        tuple(str(codec.payload_type) for codec in codecs),
        attributes=tuple(attributes),
    )


def _origin(host: str, session_id: int, version: int) -> Origin:
    return Origin("-", str(session_id), str(version), "IN", _addrtype(host), host)


def _addrtype(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def _is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False
