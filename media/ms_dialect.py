"""Reading (and writing) the Microsoft Lync / Skype for Business dialect of SDP.

References: [MS-SDPEXT] (SDP extensions), [MS-ICE] / [MS-ICE2] (ICE draft 6 and draft 19),
[MS-SDP] (``a=encryption``), RFC 4568 (SDES ``a=crypto``), RFC 5245 (ICE candidates).

What Microsoft sends that a standard peer does not:
- an offer as ``multipart/alternative`` with two SDPs: the one marked
  ``Content-Disposition: session; handling=optional; ms-proxy-2007fallback`` carries ICE
  draft-6 candidates for OCS 2007 peers, the other RFC 5245 (draft 19) candidates;
- draft-6 candidates ``a=candidate:<b64 user> <comp> <b64 pwd> UDP 0.<q> <ip> <port>``;
- RFC 5245 candidates with transports UDP, TCP-ACT, TCP-PASS, IPv6 ones in
  ``a=x-candidate-ipv6``;
- ``a=crypto`` with an MKI (``inline:<key>|2^31|1:1``), ``a=cryptoscale``, ``a=encryption``;
- ``a=x-ssrc-range``, ``a=x-caps``, ``a=label``, ``a=x-source``, ``a=rtcp-fb:* x-message``;
- codecs X-H264UC, x-rtvc1, x-msrta, SIREN, G7221, x-ulpfecuc.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from dataclasses import dataclass

from media.sdp import Attribute, Media, SdpError, SessionDescription, parse_sdp
from sip.errors import RemoteProtocolError

__all__ = [
    "CRYPTO_SUITE",
    "MICROSOFT_ONLY_ATTRIBUTES",
    "Candidate",
    "CandidateTransport",
    "CandidateType",
    "Crypto",
    "EncryptionLevel",
    "EncryptionMismatch",
    "EncryptionPolicy",
    "IceVersion",
    "LegacyCandidate",
    "MsStream",
    "SsrcRange",
    "negotiate_encryption",
    "offered_encryption",
    "parse_candidate",
    "parse_legacy_candidate",
    "pick_sdp",
    "pick_sdp_body",
    "read_microsoft",
    "read_stream",
]

CRYPTO_SUITE = "AES_CM_128_HMAC_SHA1_80"
"""The one SRTP suite both sides here speak (RFC 4568 §6.2.1): 16-byte key + 14-byte salt."""
_KEY_SALT_LEN = 30

# Attributes only Microsoft peers understand (or ICE, which the video side does not run).
MICROSOFT_ONLY_ATTRIBUTES = frozenset({
    "candidate", "x-candidate-ipv6", "x-candidate-info", "remote-candidates", "ice-ufrag",
    "ice-pwd", "ice-options", "ice-lite", "x-ssrc-range", "x-caps", "label", "x-source",
    "cryptoscale", "encryption", "x-devicecaps", "x-mediabw", "x-bw", "x-mediasettings",
    "x-signaling-fb", "x-ms-ignore-ws", "x-stream-id", "x-fallback-candidate-info",
})


class IceVersion(enum.Enum):
    """Which ICE the candidates of an SDP follow."""

    NONE = "none"
    DRAFT6 = "draft-6"
    """[MS-ICE]: OCS 2007 era, base64 user/password in each candidate."""
    RFC5245 = "rfc5245"
    """[MS-ICE2]: ICE draft 19, which became RFC 5245."""


class CandidateTransport(enum.Enum):
    UDP = "UDP"
    TCP_ACT = "TCP-ACT"
    """Microsoft's active TCP candidate (connects out)."""
    TCP_PASS = "TCP-PASS"
    """Microsoft's passive TCP candidate (listens)."""
    TCP = "TCP"


class CandidateType(enum.Enum):
    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


class EncryptionLevel(enum.Enum):
    """The value of ``a=encryption`` ([MS-SDP] 3.1.5.3)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    REJECTED = "rejected"


class EncryptionPolicy(enum.Enum):
    """The gateway's Microsoft-side encryption setting."""

    REQUIRE = "RequireEncryption"
    SUPPORT = "SupportEncryption"
    DO_NOT_SUPPORT = "DoNotSupportEncryption"

    @property
    def level(self) -> EncryptionLevel:
        """What this policy writes in ``a=encryption``."""
        return _POLICY_LEVEL[self]


_POLICY_LEVEL = {
    EncryptionPolicy.REQUIRE: EncryptionLevel.REQUIRED,
    EncryptionPolicy.SUPPORT: EncryptionLevel.OPTIONAL,
    EncryptionPolicy.DO_NOT_SUPPORT: EncryptionLevel.REJECTED,
}


class EncryptionMismatch(RemoteProtocolError):
    """The peer's encryption level cannot meet our policy; the B2BUA answers 488."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 488)

    reason_phrase = "Encryption Levels not compatible"
    """The reason phrase Microsoft itself uses in this 488 ([MS-SDP] 4.2)."""


# -- multipart -----------------------------------------------------------------------------

def pick_sdp_body(content_type: str, body: bytes) -> tuple[bytes, IceVersion]:
    """The SDP to use from a Microsoft body, and the ICE version its candidates follow.

    ``application/sdp`` is returned as is (its ICE version read from its candidates). From a
    ``multipart/alternative`` (or /mixed) body, the ``application/sdp`` part without the
    ``ms-proxy-2007fallback`` disposition wins (RFC 5245 candidates); the fallback part is
    used only when it is the only SDP there (draft-6 candidates).
    """
    data, sdp = _pick(content_type, body)
    return data, ice_version_of(sdp)


def pick_sdp(content_type: str, body: bytes) -> tuple[SessionDescription, IceVersion]:
    """As :func:`pick_sdp_body`, with the chosen part already parsed (it is parsed to read
    its ICE version anyway: the B2BUA needs the description, not the bytes)."""
    _, sdp = _pick(content_type, body)
    return sdp, ice_version_of(sdp)


def _pick(content_type: str, body: bytes) -> tuple[bytes, SessionDescription]:
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/sdp":
        return body, parse_sdp(body)
    if not mime.startswith("multipart/"):
        raise SdpError(f"no SDP in a {mime or 'typeless'} body", 415)
    from sip.multipart import parse_multipart  # the message layer's parser

    primary: bytes | None = None
    fallback: bytes | None = None
    for part in parse_multipart(content_type, body):
        if part.content_type.split(";", 1)[0].strip().lower() != "application/sdp":
            continue
        disposition = (part.disposition or "").lower()
        if "ms-proxy-2007fallback" in disposition:
            fallback = fallback if fallback is not None else part.body
        elif primary is None:
            primary = part.body
    if primary is not None:
        return primary, parse_sdp(primary)
    if fallback is not None:
        return fallback, parse_sdp(fallback)
    raise SdpError("multipart body has no application/sdp part", 415)


def ice_version_of(sdp: SessionDescription) -> IceVersion:
    """RFC 5245 when any ice-ufrag or RFC 5245-shaped candidate is present, else draft 6
    when there are draft-6 candidates, else NONE."""
    if sdp.get("ice-ufrag") is not None:
        return IceVersion.RFC5245
    legacy = False
    for media in sdp.media:
        if media.has("ice-ufrag"):
            return IceVersion.RFC5245
        for value in media.get_all("candidate"):
            if _is_legacy(value):
                legacy = True
            else:
                return IceVersion.RFC5245
    return IceVersion.DRAFT6 if legacy else IceVersion.NONE


# -- candidates ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Candidate:
    """An RFC 5245 candidate (``a=candidate`` / ``a=x-candidate-ipv6``)."""

    foundation: str
    component: int
    """1 RTP, 2 RTCP."""
    transport: CandidateTransport
    priority: int
    address: str
    port: int
    type: CandidateType
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()
    """Trailing name/value pairs, kept for the round trip."""

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address

    def value(self) -> str:
        """The attribute value (after ``candidate:``)."""
        parts = [self.foundation, str(self.component), self.transport.value,
                 str(self.priority), self.address, str(self.port), "typ", self.type.value]
        if self.related_address is not None:
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        for name, val in self.extensions:
            parts += [name, val]
        return " ".join(parts)

    def attribute(self) -> Attribute:
        """``a=x-candidate-ipv6`` for an IPv6 address ([MS-SDPEXT] 3.1.5.21.2), else candidate."""
        return Attribute("x-candidate-ipv6" if self.is_ipv6 else "candidate", self.value())


@dataclass(frozen=True, slots=True)
class LegacyCandidate:
    """An ICE draft-6 candidate ([MS-ICE]): credentials travel in every candidate."""

    username: str
    """Base64 user name fragment shared by the candidates of a stream."""
    component: int
    password: str
    """Base64 password."""
    transport: CandidateTransport
    quality: str
    """The q-value as written ("0.830"): kept as text so it round-trips."""
    address: str
    port: int

    def value(self) -> str:
        return " ".join((self.username, str(self.component), self.password,
                         self.transport.value, self.quality, self.address, str(self.port)))

    def attribute(self) -> Attribute:
        return Attribute("candidate", self.value())


_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")
_B64 = re.compile(r"[A-Za-z0-9+/=]+")
_QVALUE = re.compile(r"(?:0(?:\.\d{1,3})?|1(?:\.0{1,3})?)")


def _is_legacy(value: str) -> bool:
    fields = value.split()
    return len(fields) == 7 and _QVALUE.fullmatch(fields[4]) is not None


def _port(text: str, what: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise SdpError(f"bad {what} port {text!r} in candidate")
    return int(text)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SdpError(f"bad address {text!r} in candidate") from None


def _transport(text: str) -> CandidateTransport:
    try:
        return CandidateTransport(text.upper())
    except ValueError:
        raise SdpError(f"unknown candidate transport {text!r}") from None


def parse_candidate(value: str) -> Candidate:
    """Parse an RFC 5245 candidate attribute value (``a=candidate`` or ``a=x-candidate-ipv6``)."""
    f = value.split()
    if len(f) < 8 or f[6] != "typ":
        raise SdpError(f"malformed candidate {value[:80]!r}")
    if not _FOUNDATION.fullmatch(f[0]) or not f[1].isdigit() or not f[3].isdigit():
        raise SdpError(f"malformed candidate {value[:80]!r}")
    try:
        ctype = CandidateType(f[7])
    except ValueError:
        raise SdpError(f"unknown candidate type {f[7]!r}") from None
    raddr: str | None = None
    rport: int | None = None
    ext: list[tuple[str, str]] = []
    rest = f[8:]
    if len(rest) % 2:
        raise SdpError(f"dangling extension in candidate {value[:80]!r}")
    for name, val in zip(rest[::2], rest[1::2], strict=True):
        if name == "raddr":
            raddr = _address(val)
        elif name == "rport":
            rport = _port(val, "related")
        else:
            ext.append((name, val))
    component = int(f[1])
    if not 1 <= component <= 256:
        raise SdpError(f"candidate component {component} out of range")
    return Candidate(f[0], component, _transport(f[2]), int(f[3]), _address(f[4]),
                     _port(f[5], "candidate"), ctype, raddr, rport, tuple(ext))


def parse_legacy_candidate(value: str) -> LegacyCandidate:
    """Parse an ICE draft-6 candidate: ``<b64 user> <comp> <b64 pwd> UDP 0.<q> <ip> <port>``."""
    f = value.split()
    if (len(f) != 7 or not _B64.fullmatch(f[0]) or not f[1].isdigit()
            or not _B64.fullmatch(f[2]) or _QVALUE.fullmatch(f[4]) is None):
        raise SdpError(f"malformed draft-6 candidate {value[:80]!r}")
    return LegacyCandidate(f[0], int(f[1]), f[2], _transport(f[3]), f[4], _address(f[5]),
                           _port(f[6], "candidate"))


# -- crypto --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Crypto:
    """An SDES ``a=crypto`` line (RFC 4568 §9.1) with a single inline key."""

    tag: int
    suite: str
    key_salt: bytes
    """Master key followed by master salt (30 bytes for AES_CM_128)."""
    lifetime: str | None = None
    """"2^31" or a decimal count, as written."""
    mki: tuple[int, int] | None = None
    """(MKI value, MKI length in bytes): Microsoft sends (1, 1)."""
    session_params: tuple[str, ...] = ()

    @property
    def master_key(self) -> bytes:
        return self.key_salt[:16]

    @property
    def master_salt(self) -> bytes:
        return self.key_salt[16:]

    def value(self) -> str:
        key = "inline:" + base64.b64encode(self.key_salt).decode("ascii")
        if self.lifetime is not None:
            key += f"|{self.lifetime}"
        if self.mki is not None:
            key += f"|{self.mki[0]}:{self.mki[1]}"
        return " ".join((str(self.tag), self.suite, key, *self.session_params))

    def attribute(self) -> Attribute:
        return Attribute("crypto", self.value())

    @classmethod
    def parse(cls, value: str) -> Crypto:
        f = value.split()
        if len(f) < 3 or not f[0].isdigit() or not f[2].startswith("inline:"):
            raise SdpError(f"malformed a=crypto:{value[:80]}")
        key_part, *params = f[2][len("inline:"):].split("|")
        try:
            key_salt = base64.b64decode(key_part, validate=True)
        except (binascii.Error, ValueError):
            raise SdpError("a=crypto key is not base64") from None
        if f[1] == CRYPTO_SUITE and len(key_salt) != _KEY_SALT_LEN:
            raise SdpError(f"a=crypto {CRYPTO_SUITE} key must be 30 bytes, not {len(key_salt)}")
        lifetime: str | None = None
        mki: tuple[int, int] | None = None
        for param in params:
            if ":" in param:  # MKI ":" length (RFC 4568 §9.2)
                mki_value, _, mki_len = param.partition(":")
                if not (mki_value.isdigit() and mki_len.isdigit()) or not 1 <= int(mki_len) <= 128:
                    raise SdpError(f"bad MKI {param!r} in a=crypto")
                mki = (int(mki_value), int(mki_len))
            elif re.fullmatch(r"\d+|2\^\d+", param):
                lifetime = param
            else:
                raise SdpError(f"bad key parameter {param!r} in a=crypto")
        return cls(int(f[0]), f[1], key_salt, lifetime, mki, tuple(f[3:]))


# -- x-ssrc-range --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SsrcRange:
    """``a=x-ssrc-range:<first>-<last>`` ([MS-SDPEXT] 3.1.5.31): SSRCs a sender will use."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last <= 0xFFFFFFFF:
            raise ValueError(f"bad SSRC range {self.first}-{self.last}")

    def attribute(self) -> Attribute:
        return Attribute("x-ssrc-range", f"{self.first}-{self.last}")

    @classmethod
    def parse(cls, value: str) -> SsrcRange:
        first, dash, last = value.strip().partition("-")
        if not dash or not first.isdigit() or not last.isdigit():
            raise SdpError(f"bad a=x-ssrc-range:{value}")
        try:
            return cls(int(first), int(last))
        except ValueError as exc:
            raise SdpError(str(exc)) from None


# -- one stream, read --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MsStream:
    """What the relay and the rewrites need from one Microsoft m= line."""

    index: int
    """Position of the m= line in the SDP."""
    media: Media
    address: str | None
    """The connection address (media c= else session c=)."""
    ice_version: IceVersion
    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: tuple[Candidate, ...]
    """RFC 5245 candidates, IPv6 ones (x-candidate-ipv6) included."""
    legacy_candidates: tuple[LegacyCandidate, ...]
    cryptos: tuple[Crypto, ...]
    encryption: EncryptionLevel
    """Offered level: a=encryption if present, else inferred from proto and a=crypto."""
    ssrc_range: SsrcRange | None
    label: str | None
    x_source: str | None
    rtcp_port: int | None
    """From a=rtcp (None: RTP port + 1)."""


def offered_encryption(media: Media) -> EncryptionLevel:
    """a=encryption when present; otherwise RTP/SAVP means required, RTP/AVP with a=crypto
    optional (best effort), plain RTP/AVP rejected."""
    explicit = media.get("encryption")
    if explicit is not None:
        try:
            return EncryptionLevel(explicit.strip().lower())
        except ValueError:
            raise SdpError(f"unknown a=encryption:{explicit}") from None
    if "SAVP" in media.proto.upper():
        return EncryptionLevel.REQUIRED
    return EncryptionLevel.OPTIONAL if media.has("crypto") else EncryptionLevel.REJECTED


def negotiate_encryption(offered: EncryptionLevel, policy: EncryptionPolicy) -> bool:
    """Whether the Microsoft leg runs SRTP, given the offered level and our policy.

    Raises ``EncryptionMismatch`` (488) when the two cannot meet: the peer requires
    encryption and we do not support it, or the peer rejects it and we require it.
    """
    if offered is EncryptionLevel.REQUIRED:
        if policy is EncryptionPolicy.DO_NOT_SUPPORT:
            raise EncryptionMismatch(
                "peer requires encryption, policy is DoNotSupportEncryption")
        return True
    if offered is EncryptionLevel.REJECTED:
        if policy is EncryptionPolicy.REQUIRE:
            raise EncryptionMismatch("peer rejects encryption, policy is RequireEncryption")
        return False
    return policy is not EncryptionPolicy.DO_NOT_SUPPORT


def read_stream(sdp: SessionDescription, index: int) -> MsStream:
    """Read the Microsoft-specific facts of ``sdp.media[index]``."""
    media = sdp.media[index]
    connection = sdp.connection_for(media)
    candidates: list[Candidate] = []
    legacy: list[LegacyCandidate] = []
    for attr in media.attributes:
        name = attr.name.lower()
        if name == "candidate":
            value = attr.value or ""
            if _is_legacy(value):
                legacy.append(parse_legacy_candidate(value))
            else:
                candidates.append(parse_candidate(value))
        elif name == "x-candidate-ipv6":
            candidates.append(parse_candidate(attr.value or ""))
    ufrag = media.get("ice-ufrag") or sdp.get("ice-ufrag")
    pwd = media.get("ice-pwd") or sdp.get("ice-pwd")
    if candidates or ufrag:
        version = IceVersion.RFC5245
    elif legacy:
        version = IceVersion.DRAFT6
    else:
        version = IceVersion.NONE
    ssrc = media.get("x-ssrc-range")
    rtcp = media.get("rtcp")
    rtcp_port: int | None = None
    if rtcp is not None:
        first = rtcp.split()[0] if rtcp.split() else ""
        rtcp_port = _port(first, "a=rtcp")
    return MsStream(
        index=index, media=media, address=connection.address if connection else None,
        ice_version=version, ice_ufrag=ufrag, ice_pwd=pwd, candidates=tuple(candidates),
        legacy_candidates=tuple(legacy),
        cryptos=tuple(Crypto.parse(v) for v in media.get_all("crypto")),
        encryption=offered_encryption(media),
        ssrc_range=SsrcRange.parse(ssrc) if ssrc is not None else None,
        label=media.get("label"), x_source=media.get("x-source"), rtcp_port=rtcp_port)


def read_microsoft(sdp: SessionDescription) -> tuple[MsStream, ...]:
    """Every m= line of a Microsoft SDP, read (raises ``SdpError`` on a malformed one)."""
    return tuple(read_stream(sdp, i) for i in range(len(sdp.media)))
