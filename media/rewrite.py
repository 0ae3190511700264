"""Rewriting SDP between the Microsoft dialect and the standard video network.

Pure functions of (parsed SDP, a frozen ``SdpPlan``): the plan holds what the gateway puts on
the side being written (its address, one ``StreamPlan`` per m= line with ports, ICE
credentials and candidates, SRTP key, SSRC range) and the policy. The relay engine fills the
plan with real sockets' values; ``gateway sdp`` fills it with demo values.

- ``to_standard``: Microsoft -> video side. One plain SDP; c=/m= at the gateway; no ICE and no
  Microsoft-only attributes; only codecs the video side takes (X-H264UC becomes H.264
  packetization-mode=1; G.722, PCMU, PCMA, telephone-event); RTP/AVP or SDES-SRTP.
- ``to_microsoft``: video side -> Microsoft. RTP/SAVP with AES_CM_128_HMAC_SHA1_80 keys without
  MKI; ice-ufrag/ice-pwd; host/srflx/relay candidates; x-ssrc-range, label, x-source,
  rtcp-fb x-message, a=rtcp, a=encryption per policy; never a=ice-options.
- ``build_delayed_offer``: the pre-configured offer toward Microsoft when the video side sent
  an INVITE without SDP.

Each function writes an offer, or, given ``answer_to`` (the offer being answered), an answer
whose m= lines match that offer one for one (RFC 3264 §6).
"""

from __future__ import annotations

import base64
import enum
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from media.ms_dialect import (
    CRYPTO_SUITE,
    Candidate,
    Crypto,
    EncryptionLevel,
    EncryptionMismatch,
    EncryptionPolicy,
    SsrcRange,
    negotiate_encryption,
    offered_encryption,
)
from media.sdp import (
    Attribute,
    Codec,
    Connection,
    Media,
    Origin,
    SessionDescription,
)
from sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_OFFER_CODECS",
    "H264_STANDARD_FMTP",
    "H264UC_FMTP",
    "NoCommonCodec",
    "SdpPlan",
    "StreamPlan",
    "VideoSecurity",
    "build_delayed_offer",
    "check_ice_credentials",
    "make_ice_credentials",
    "to_microsoft",
    "to_standard",
]

H264_STANDARD_FMTP = "profile-level-id=42E01F;packetization-mode=1"
"""What X-H264UC becomes toward the video side: constrained baseline, level 3.1, mode 1."""
H264UC_FMTP = "packetization-mode=1;mst-mode=NI-TC"
"""Microsoft's H.264 UC parameters for a single-stream (non-interleaved) sender."""

# Encoding names each side takes, lower case (channels must be 1 or absent).
_STANDARD_AUDIO = frozenset({"g722", "pcmu", "pcma", "telephone-event"})
_MICROSOFT_AUDIO = frozenset({"g722", "pcmu", "pcma", "telephone-event", "cn"})
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")


class VideoSecurity(enum.Enum):
    """What the gateway offers the video side."""

    RTP = "rtp"
    """RTP/AVP, no keys."""
    SRTP = "srtp"
    """RTP/SAVP with an SDES a=crypto (RFC 4568)."""


class NoCommonCodec(RemoteProtocolError):
    """No stream of the SDP has a codec the other side takes: answered 488."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 488)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The gateway's end of one m= line on the side being written."""

    kind: str
    """audio, video (anything else is written rejected)."""
    port: int
    """Local RTP port (RTCP is ``rtcp_port``); 0 rejects the stream."""
    source_index: int | None = None
    """Which m= line of the SDP being converted this stream carries; None for none."""
    rtcp_port: int | None = None
    """Local RTCP port; None means port + 1."""
    ice_ufrag: str | None = None
    """Toward Microsoft: our ICE user fragment (4..256 ice-chars, not 6 long)."""
    ice_pwd: str | None = None
    """Toward Microsoft: our ICE password (22..256 ice-chars, not 32 long)."""
    candidates: tuple[Candidate, ...] = ()
    """Toward Microsoft: our host, srflx and relay candidates, both components."""
    srtp_key: bytes | None = None
    """Our sending master key + salt (30 bytes), when this leg may run SRTP."""
    ssrc_range: SsrcRange | None = None
    """Toward Microsoft: the SSRCs we send with."""

    @property
    def effective_rtcp_port(self) -> int:
        return self.rtcp_port if self.rtcp_port is not None else self.port + 1


@dataclass(frozen=True, slots=True)
class SdpPlan:
    """Everything a rewrite needs to know about the gateway's side being written."""

    address: str
    """The gateway's media address on that side (o= and c=)."""
    streams: tuple[StreamPlan, ...]
    """One per m= line to write, in order."""
    encryption: EncryptionPolicy = EncryptionPolicy.REQUIRE
    """Microsoft-side policy (RequireEncryption by default)."""
    video_security: VideoSecurity = VideoSecurity.RTP
    """What to offer the video side."""
    session_id: int = 0
    session_version: int = 0
    """Bump on every new description of the same session (RFC 3264 §8)."""

    @property
    def address_type(self) -> str:
        return "IP6" if ":" in self.address else "IP4"


DEFAULT_OFFER_CODECS: dict[str, tuple[Codec, ...]] = {
    "audio": (Codec(9, "G722", 8000), Codec(0, "PCMU", 8000), Codec(8, "PCMA", 8000),
              Codec(101, "telephone-event", 8000, fmtp="0-16")),
    "video": (Codec(122, "H264", 90000, fmtp=H264_STANDARD_FMTP),),
}
"""The pre-configured list offered to Microsoft for a delayed-offer INVITE (standard names;
``to_microsoft`` turns H264 into X-H264UC)."""


# -- ICE credentials -----------------------------------------------------------------------

def check_ice_credentials(ufrag: str, pwd: str) -> None:
    """Raise ``LocalProtocolError`` unless Microsoft will take these credentials.

    RFC 8839: ufrag 4..256, pwd 22..256 ice-chars. [MS-SDPEXT] 3.1.5.21.5: Microsoft tells
    base64 (draft-6) credentials from plain ones by length, so a 6-byte ufrag or a 32-byte
    pwd must not be offered.
    """
    if not (4 <= len(ufrag) <= 256 and _ICE_CHARS.fullmatch(ufrag)) or len(ufrag) == 6:
        raise LocalProtocolError(f"ice-ufrag {ufrag!r} is not one Microsoft accepts")
    if not (22 <= len(pwd) <= 256 and _ICE_CHARS.fullmatch(pwd)) or len(pwd) == 32:
        raise LocalProtocolError("ice-pwd is not one Microsoft accepts (22..256, not 32)")


def make_ice_credentials() -> tuple[str, str]:
    """Fresh (ufrag, pwd) of 4 and 24 ice-chars, the lengths Lync itself uses."""
    # The base64 alphabet is exactly the 64 ice-chars (RFC 5245 §15.1: ALPHA / DIGIT / "+" /
    # "/"), and 21 random bytes encode to 28 characters without padding, each uniform: one
    # read of the system's CSPRNG instead of 28 ``secrets.choice`` calls.
    chars = base64.b64encode(secrets.token_bytes(21)).decode("ascii")
    return chars[:4], chars[4:]


# -- helpers -------------------------------------------------------------------------------

def _fmtp_param(fmtp: str | None, name: str) -> str | None:
    for item in (fmtp or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _mono(codec: Codec) -> bool:
    return codec.channels in (None, 1)


def _to_standard_codec(codec: Codec) -> Codec | None:
    name = codec.name.lower()
    if name in _STANDARD_AUDIO and _mono(codec) and codec.clock_rate == 8000:
        return codec
    if name == "x-h264uc":
        return Codec(codec.payload_type, "H264", 90000, None, H264_STANDARD_FMTP)
    if name == "h264" and _fmtp_param(codec.fmtp, "packetization-mode") == "1":
        return codec
    return None


def _to_microsoft_codec(codec: Codec) -> Codec | None:
    name = codec.name.lower()
    if name in _MICROSOFT_AUDIO and _mono(codec) and codec.clock_rate == 8000:
        return codec
    if name == "h264" and _fmtp_param(codec.fmtp, "packetization-mode") == "1":
        return Codec(codec.payload_type, "X-H264UC", 90000, None, H264UC_FMTP)
    if name == "x-h264uc":
        return codec
    return None


def _answer_codecs(mapped: list[Codec], offer: Media | None) -> list[Codec]:
    """In an answer, keep only payload types the offer had, written as the offer wrote them."""
    if offer is None:
        return mapped
    offered = {c.payload_type: c for c in offer.codecs()}
    return [offered[c.payload_type] for c in mapped if c.payload_type in offered]


def _direction(media: Media | None) -> list[Attribute]:
    if media is None or media.direction == "sendrecv":
        return []
    return [Attribute(media.direction)]


def _passthrough(media: Media | None) -> list[Attribute]:
    """Attributes both dialects share and that survive a rewrite unchanged."""
    if media is None:
        return []
    return [a for a in media.attributes if a.name.lower() == "ptime"]


def _rejected(kind: str, proto: str, formats: Sequence[str]) -> Media:
    return Media(kind=kind, port=0, proto=proto, formats=tuple(formats) or ("0",))


def _source(sdp: SessionDescription | None, stream: StreamPlan) -> Media | None:
    if sdp is None or stream.source_index is None:
        return None
    if not 0 <= stream.source_index < len(sdp.media):
        raise LocalProtocolError(f"plan refers to m= line {stream.source_index}, "
                                 f"the SDP has {len(sdp.media)}")
    return sdp.media[stream.source_index]


def _answered(plan: SdpPlan, answer_to: SessionDescription | None) -> list[Media | None]:
    if answer_to is None:
        return [None] * len(plan.streams)
    if len(answer_to.media) != len(plan.streams):
        raise LocalProtocolError(f"an answer needs {len(answer_to.media)} m= lines, "
                                 f"the plan has {len(plan.streams)}")
    return list(answer_to.media)


def _chosen_crypto(offer: Media) -> Crypto | None:
    """The offered a=crypto we accept: our suite, preferring one without MKI."""
    ours = [Crypto.parse(v) for v in offer.get_all("crypto")]
    ours = [c for c in ours if c.suite == CRYPTO_SUITE]
    for crypto in ours:
        if crypto.mki is None:
            return crypto
    return ours[0] if ours else None


def _our_crypto(stream: StreamPlan, tag: int) -> Attribute:
    if stream.srtp_key is None or len(stream.srtp_key) != 30:
        raise LocalProtocolError(f"{stream.kind} stream needs a 30-byte SRTP key")
    return Crypto(tag, CRYPTO_SUITE, stream.srtp_key, lifetime="2^31").attribute()


def _session(plan: SdpPlan, name: str, media: list[Media]) -> SessionDescription:
    if not any(m.port for m in media):
        raise NoCommonCodec("no stream has a codec the other side can take")
    return SessionDescription(
        origin=Origin("-", str(plan.session_id), str(plan.session_version), "IN",
                      plan.address_type, plan.address),
        session_name=name,
        connection=Connection(plan.address, plan.address_type),
        timing=("0 0",),
        media=tuple(media),
    )


# -- Microsoft -> standard -----------------------------------------------------------------

def to_standard(sdp: SessionDescription, plan: SdpPlan, *,
                answer_to: SessionDescription | None = None) -> SessionDescription:
    """Rewrite a Microsoft SDP (offer, or answer to ``answer_to``) for the video side.

    Raises ``NoCommonCodec`` (488) when no stream keeps a codec, ``EncryptionMismatch`` (488)
    when the Microsoft stream's encryption level cannot meet ``plan.encryption``.
    """
    answered = _answered(plan, answer_to)
    out: list[Media] = []
    for stream, offer in zip(plan.streams, answered, strict=True):
        source = _source(sdp, stream)
        if source is not None and source.port:
            # The Microsoft leg must agree with our policy before we involve the video side.
            negotiate_encryption(offered_encryption(source), plan.encryption)
        out.append(_standard_media(stream, source, offer, plan))
    return _session(plan, "-", out)


def _standard_media(stream: StreamPlan, source: Media | None, offer: Media | None,
                    plan: SdpPlan) -> Media:
    kind = offer.kind if offer is not None else stream.kind
    proto = offer.proto if offer is not None else (
        "RTP/SAVP" if plan.video_security is VideoSecurity.SRTP else "RTP/AVP")
    codecs: list[Codec] = []
    if source is not None and source.port and kind in ("audio", "video"):
        codecs = [c for c in map(_to_standard_codec, source.codecs()) if c is not None]
        codecs = _answer_codecs(codecs, offer)
    if stream.port == 0 or not codecs:
        return _rejected(kind, proto, offer.formats if offer is not None else
                         (source.formats if source is not None else ("0",)))
    attrs: list[Attribute] = []
    crypto = _standard_crypto(stream, offer, plan)
    if crypto is not None:
        attrs.append(crypto)
    if stream.rtcp_port is not None and stream.rtcp_port != stream.port + 1:
        attrs.append(Attribute("rtcp", str(stream.rtcp_port)))
    for codec in codecs:
        attrs.extend(codec.attributes())
    attrs.extend(_passthrough(source))
    attrs.extend(_direction(source))
    return Media(kind=kind, port=stream.port, proto=proto,
                 formats=tuple(str(c.payload_type) for c in codecs), attributes=tuple(attrs))


def _standard_crypto(stream: StreamPlan, offer: Media | None, plan: SdpPlan) -> Attribute | None:
    if offer is None:
        return _our_crypto(stream, 1) if plan.video_security is VideoSecurity.SRTP else None
    chosen = _chosen_crypto(offer)
    if "SAVP" in offer.proto.upper():
        if chosen is None:
            raise RemoteProtocolError("video side offers RTP/SAVP without a usable a=crypto", 488)
        if plan.video_security is not VideoSecurity.SRTP:
            raise RemoteProtocolError("video side requires SRTP, gateway offers RTP", 488)
    if chosen is not None and plan.video_security is VideoSecurity.SRTP:
        return _our_crypto(stream, chosen.tag)
    return None


# -- standard -> Microsoft -----------------------------------------------------------------

def to_microsoft(sdp: SessionDescription, plan: SdpPlan, *,
                 answer_to: SessionDescription | None = None) -> SessionDescription:
    """Rewrite a video-side SDP (offer, or answer to Microsoft's ``answer_to``) for Microsoft.

    Raises ``EncryptionMismatch`` (488) when answering a Microsoft stream whose encryption
    level cannot meet ``plan.encryption``, ``NoCommonCodec`` (488) when nothing is left,
    ``LocalProtocolError`` when the plan is unusable (bad ICE credentials, no SRTP key, no
    candidate at the c=/m= address).
    """
    answered = _answered(plan, answer_to)
    out = [_microsoft_media(stream, _source(sdp, stream), offer, plan)
           for stream, offer in zip(plan.streams, answered, strict=True)]
    return _session(plan, "session", out)


def _microsoft_media(stream: StreamPlan, source: Media | None, offer: Media | None,
                     plan: SdpPlan) -> Media:
    kind = offer.kind if offer is not None else stream.kind
    encrypt, proto, tag = _microsoft_security(offer, plan)
    codecs: list[Codec] = []
    if source is not None and source.port and kind in ("audio", "video"):
        codecs = [c for c in map(_to_microsoft_codec, source.codecs()) if c is not None]
        codecs = _answer_codecs(codecs, offer)
    if stream.port == 0 or not codecs:
        return _rejected(kind, proto, offer.formats if offer is not None else
                         (source.formats if source is not None else ("0",)))
    attrs: list[Attribute] = []
    if stream.ssrc_range is not None:
        attrs.append(stream.ssrc_range.attribute())
    attrs.append(Attribute("rtcp-fb", "* x-message app send:dsh recv:dsh"))
    attrs.append(Attribute("label", f"main-{kind}"))
    attrs.append(Attribute("x-source", f"main-{kind}"))
    attrs.extend(_ice_attributes(stream, plan))
    if encrypt:
        attrs.append(_our_crypto(stream, tag))
    attrs.append(Attribute("rtcp", str(stream.effective_rtcp_port)))
    attrs.extend(_direction(source))
    attrs.extend(_passthrough(source))
    for codec in codecs:
        attrs.extend(codec.attributes())
    attrs.append(Attribute("encryption", plan.encryption.level.value))
    return Media(kind=kind, port=stream.port, proto=proto,
                 formats=tuple(str(c.payload_type) for c in codecs), attributes=tuple(attrs))


def _microsoft_security(offer: Media | None, plan: SdpPlan) -> tuple[bool, str, int]:
    """(run SRTP?, proto, crypto tag) for one Microsoft stream."""
    if offer is None:
        policy = plan.encryption
        if policy is EncryptionPolicy.REQUIRE:
            return True, "RTP/SAVP", 1
        # SupportEncryption offers keys on RTP/AVP: the answerer may take them or not.
        return policy is EncryptionPolicy.SUPPORT, "RTP/AVP", 1
    if not offer.port:
        return False, offer.proto, 1
    encrypt = negotiate_encryption(offered_encryption(offer), plan.encryption)
    chosen = _chosen_crypto(offer)
    if encrypt and chosen is None:
        # Encryption was agreed but there is no key we can use: only fine if both allow RTP.
        if (offered_encryption(offer) is EncryptionLevel.REQUIRED
                or plan.encryption is EncryptionPolicy.REQUIRE):
            raise EncryptionMismatch(f"no {CRYPTO_SUITE} a=crypto in a stream that must be SRTP")
        encrypt = False
    return encrypt, offer.proto, chosen.tag if chosen is not None else 1


def _ice_attributes(stream: StreamPlan, plan: SdpPlan) -> list[Attribute]:
    if stream.ice_ufrag is None or stream.ice_pwd is None:
        if stream.candidates:
            raise LocalProtocolError("candidates without ice-ufrag/ice-pwd")
        return []
    check_ice_credentials(stream.ice_ufrag, stream.ice_pwd)
    if stream.candidates and not any(
            c.component == 1 and c.port == stream.port and c.address == plan.address
            for c in stream.candidates):
        # RFC 8839 §4.2.1: the default destination (c=/m=) must be one of the candidates.
        raise LocalProtocolError(f"no RTP candidate at {plan.address}:{stream.port} (the m= line)")
    out = [Attribute("ice-ufrag", stream.ice_ufrag), Attribute("ice-pwd", stream.ice_pwd)]
    out.extend(c.attribute() for c in stream.candidates)
    return out


def build_delayed_offer(plan: SdpPlan,
                        codecs: dict[str, tuple[Codec, ...]] | None = None) -> SessionDescription:
    """The offer toward Microsoft for an INVITE that came without SDP (a delayed offer).

    One m= line per plan stream, carrying the pre-configured codecs for its kind.
    """
    table = DEFAULT_OFFER_CODECS if codecs is None else codecs
    media: list[Media] = []
    streams: list[StreamPlan] = []
    for index, stream in enumerate(plan.streams):
        chosen = table.get(stream.kind, ())
        attrs = [a for c in chosen for a in c.attributes()]
        media.append(Media(kind=stream.kind, port=9 if chosen else 0, proto="RTP/AVP",
                           formats=tuple(str(c.payload_type) for c in chosen) or ("0",),
                           attributes=tuple(attrs)))
        streams.append(replace(stream, source_index=index))
    template = SessionDescription(origin=Origin(address=plan.address), media=tuple(media))
    return to_microsoft(template, replace(plan, streams=tuple(streams)))
