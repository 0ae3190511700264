"""What a plain SIP video endpoint offers and answers (RFC 3264 offer/answer).

Plain RTP (RTP/AVP, RTP/AVPF), or SDES-SRTP (RTP/SAVP with ``a=crypto``, RFC 4568) when the
endpoint is set to: audio PCMU, PCMA, G.722 (+ telephone-event for RFC 2833 DTMF, as Unified
CM uses), video H.264. An answer has one m= per offered m=, in order; what
the endpoint cannot take gets port 0 (RFC 3264 §6). Hold is mirrored (§6.1 / §8.4).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from media.ms_dialect import CRYPTO_SUITE, Crypto
from media.sdp import Attribute, Codec, Connection, Media, Origin, SdpError, SessionDescription

__all__ = [
    "AUDIO_CODECS",
    "MIRRORED_DIRECTION",
    "PLAIN_RTP",
    "SECURE_RTP",
    "VIDEO_CODECS",
    "answer",
    "negotiate",
    "new_crypto",
    "offer",
    "with_direction",
]

PLAIN_RTP = frozenset({"RTP/AVP", "RTP/AVPF"})
"""Profiles the endpoint can always receive: no SRTP, no ICE."""

SECURE_RTP = frozenset({"RTP/SAVP", "RTP/SAVPF"})
"""SDES-SRTP profiles, taken only when the endpoint does SRTP."""

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
    crypto: Crypto | None = None
    """SRTP: the offered key we accept (its tag is echoed in the answer, RFC 4568 §5.1.2)."""

    @property
    def accepted(self) -> bool:
        return bool(self.codecs)


def new_crypto(tag: int = 1) -> Crypto:
    """A fresh AES_CM_128_HMAC_SHA1_80 key (30 random bytes of key and salt)."""
    return Crypto(tag, CRYPTO_SUITE, secrets.token_bytes(30))


def offered_crypto(offered: Media) -> Crypto | None:
    """The first offered key of the one suite the endpoint runs, if any."""
    for value in offered.get_all("crypto"):
        try:
            crypto = Crypto.parse(value)
        except SdpError:
            continue
        if crypto.suite == CRYPTO_SUITE and crypto.mki is None:
            return crypto
    return None


def negotiate(
    offered: Media, session: SessionDescription | None = None, *, srtp: bool = False
) -> Negotiated:
    """Which of the offered codecs this endpoint takes for one m= line (SRTP m= lines only
    when ``srtp`` is on and a usable key is offered)."""
    direction = MIRRORED_DIRECTION.get(offered.direction, "sendrecv")
    connection = offered.connection or (session.connection if session is not None else None)
    if connection is not None and _is_unspecified(connection.address):
        direction = "inactive" if offered.direction == "inactive" else "recvonly"  # RFC 2543 hold
    supported = {"audio": AUDIO_CODECS, "video": VIDEO_CODECS}.get(offered.kind.lower())
    if supported is None or offered.port == 0:
        return Negotiated((), direction)
    crypto = None
    if offered.proto.upper() in SECURE_RTP and srtp:
        crypto = offered_crypto(offered)
        if crypto is None:
            return Negotiated((), direction)
    elif offered.proto.upper() not in PLAIN_RTP:
        return Negotiated((), direction)
    names = {codec.name.lower() for codec in supported}
    try:
        codecs = offered.codecs()
    except ValueError:
        return Negotiated((), direction)
    taken = tuple(codec for codec in codecs if codec.name.lower() in names)
    if all(codec.name.lower() in _AUXILIARY for codec in taken):
        return Negotiated((), direction)
    return Negotiated(taken, direction, crypto)


def offer(
    host: str,
    audio_port: int,
    video_port: int | None,
    *,
    session_id: int,
    version: int = 0,
    direction: str = "sendrecv",
    keys: Sequence[Crypto | None] = (),
    audio: Sequence[str] = (),
) -> SessionDescription:
    """The endpoint's offer: audio (and video when a port is given); RTP/SAVP with
    ``a=crypto`` for the m= lines that get a key in ``keys`` (audio first). ``audio`` names
    the audio codecs in preference order (default: all of AUDIO_CODECS)."""
    keys = tuple(keys) + (None, None)
    codecs = AUDIO_CODECS
    if audio:
        by_name = {c.name.lower(): c for c in AUDIO_CODECS}
        codecs = tuple(by_name[name.lower()] for name in audio if name.lower() in by_name)
        codecs += tuple(c for c in AUDIO_CODECS if c.name.lower() in _AUXILIARY)
    media = [_media("audio", audio_port, _proto(keys[0]), codecs, direction, keys[0])]
    if video_port is not None:
        media.append(
            _media("video", video_port, _proto(keys[1]), VIDEO_CODECS, direction, keys[1])
        )
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
    keys: Sequence[Crypto | None] = (),
) -> SessionDescription:
    """The answer to ``offer_sdp``: one m= per offered m=, refused ones with port 0.

    An accepted SRTP m= line carries our key from ``keys`` (same index) under the tag of
    the offered key it accepted."""
    media = []
    keys = tuple(keys) + (None,) * len(offer_sdp.media)
    for offered, outcome, port, key in zip(
        offer_sdp.media, outcomes, ports, keys[: len(offer_sdp.media)], strict=True
    ):
        if outcome.accepted and port is not None:
            crypto = None
            if outcome.crypto is not None:
                crypto = replace(key or new_crypto(), tag=outcome.crypto.tag)
            media.append(
                _media(offered.kind, port, offered.proto, outcome.codecs, outcome.direction, crypto)
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


def _proto(crypto: Crypto | None) -> str:
    return "RTP/AVP" if crypto is None else "RTP/SAVP"


def _media(
    kind: str,
    port: int,
    proto: str,
    codecs: Sequence[Codec],
    direction: str,
    crypto: Crypto | None = None,
) -> Media:
    attributes: list[Attribute] = []
    for codec in codecs:
        attributes.extend(codec.attributes())
    if crypto is not None:
        attributes.append(crypto.attribute())
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
