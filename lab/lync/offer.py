"""SDP as a Lync 2013 / Skype for Business client writes it ([MS-SDPEXT], [MS-ICE2]).

An offer is ``multipart/alternative`` with two SDPs of the same streams: the first marked
``Content-Disposition: session; handling=optional; ms-proxy-2007fallback`` with ICE
draft-6 candidates (for OCS 2007 peers), the second with RFC 5245 candidates. Answers,
re-INVITEs and everything after the first exchange are one ``application/sdp`` in the
RFC 5245 form. Each m= line carries two SDES keys (one with a 1-byte MKI, one without),
``a=x-ssrc-range``, ``a=label`` / ``a=x-source``, ``a=rtcp-fb:* x-message`` and
``a=encryption:required``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from media.ms_dialect import Candidate, CandidateType, Crypto, SsrcRange
from media.sdp import Media, SessionDescription, parse_sdp
from sip.multipart import BodyPart, encode_multipart

__all__ = [
    "AUDIO_CODECS",
    "FALLBACK_DISPOSITION",
    "VIDEO_CODECS",
    "StreamDescription",
    "common_codecs",
    "multipart_offer",
    "sdp_text",
]

FALLBACK_DISPOSITION = "session; handling=optional; ms-proxy-2007fallback"
PRIMARY_DISPOSITION = "session; handling=optional"

# (payload type, rtpmap, fmtp or None): what a Lync 2013 client offers, best first.
AUDIO_CODECS: tuple[tuple[int, str, str | None], ...] = (
    (9, "G722/8000", None),
    (114, "x-msrta/16000", "bitrate=29000"),
    (111, "SIREN/16000", "bitrate=16000"),
    (0, "PCMU/8000", None),
    (8, "PCMA/8000", None),
    (115, "x-msrta/8000", "bitrate=11800"),
    (101, "telephone-event/8000", "0-16"),
)
VIDEO_CODECS: tuple[tuple[int, str, str | None], ...] = (
    (122, "X-H264UC/90000", "packetization-mode=1;mst-mode=NI-TC"),
    (123, "H264/90000", "packetization-mode=1;profile-level-id=42C01F"),
    (121, "x-rtvc1/90000", None),
)
CODECS = {"audio": AUDIO_CODECS, "video": VIDEO_CODECS}
RTCP_FB = {"audio": "x-message app send:dsh recv:dsh",
           "video": "x-message app send:src,x-pli recv:src,x-pli"}


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """What one of our m= lines says."""

    kind: str
    """"audio" or "video"."""
    ufrag: str
    pwd: str
    candidates: tuple[Candidate, ...]
    """RFC 5245 candidates, components 1 and 2."""
    cryptos: tuple[Crypto, ...]
    """Our SDES keys."""
    ssrc_range: SsrcRange
    direction: str = "sendrecv"
    codecs: tuple[tuple[int, str, str | None], ...] = ()
    """Payload formats (default: everything we support for ``kind``)."""
    port: int | None = None
    """0 to refuse the stream in an answer; None: the default candidate's port."""

    def default(self, component: int) -> Candidate | None:
        """The candidate in m=/c= (relay first, as Lync, then srflx, then host)."""
        ranked = sorted((c for c in self.candidates if c.component == component),
                        key=lambda c: _DEFAULT_RANK[c.type])
        return ranked[0] if ranked else None


_DEFAULT_RANK = {CandidateType.RELAY: 0, CandidateType.SRFLX: 1, CandidateType.PRFLX: 2,
                 CandidateType.HOST: 3}


def _legacy_credentials(stream: StreamDescription) -> tuple[str, str]:
    """Draft-6 user/password: base64 of the RFC 5245 ones, padded as Lync writes them."""
    user = base64.b64encode(stream.ufrag.encode().ljust(24, b"\0")).decode()
    pwd = base64.b64encode(stream.pwd.encode()[:16].ljust(16, b"\0")).decode()
    return user, pwd


def _media_lines(stream: StreamDescription, draft6: bool, host: str) -> list[str]:
    rtp = stream.default(1)
    rtcp = stream.default(2) or rtp
    address = rtp.address if rtp is not None else host
    port = stream.port if stream.port is not None else (rtp.port if rtp is not None else 0)
    codecs = stream.codecs or CODECS[stream.kind]
    lines = [f"m={stream.kind} {port} RTP/SAVP {' '.join(str(pt) for pt, _, _ in codecs)}",
             f"c=IN IP4 {address}"]
    if port == 0:
        return lines + [f"a=rtpmap:{pt} {name}" for pt, name, _ in codecs]
    if not draft6:
        lines += [f"a=x-ssrc-range:{stream.ssrc_range.first}-{stream.ssrc_range.last}",
                  f"a=rtcp-fb:* {RTCP_FB[stream.kind]}",
                  f"a=label:main-{stream.kind}", f"a=x-source:main-{stream.kind}",
                  f"a=ice-ufrag:{stream.ufrag}", f"a=ice-pwd:{stream.pwd}"]
        lines += [f"a={c.attribute()}" for c in stream.candidates]
    else:
        user, pwd = _legacy_credentials(stream)
        for c in stream.candidates:
            quality = "0.830" if c.type is CandidateType.HOST else "0.490"
            lines.append(f"a=candidate:{user} {c.component} {pwd} UDP {quality} "
                         f"{c.address} {c.port}")
    lines += [f"a={crypto.attribute()}" for crypto in stream.cryptos]
    if rtcp is not None:
        lines.append(f"a=rtcp:{rtcp.port}")
    if stream.direction != "sendrecv":
        lines.append(f"a={stream.direction}")
    for pt, name, fmtp in codecs:
        lines.append(f"a=rtpmap:{pt} {name}")
        if fmtp is not None:
            lines.append(f"a=fmtp:{pt} {fmtp}")
    lines.append("a=encryption:required")
    return lines


def sdp_text(streams: Sequence[StreamDescription], *, host: str, session_id: int,
             version: int, draft6: bool = False) -> bytes:
    """One SDP for ``streams`` (RFC 5245 candidates, or draft-6 ones with ``draft6``)."""
    lines = ["v=0", f"o=- {session_id} {version} IN IP4 {host}", "s=session",
             f"c=IN IP4 {host}", "b=CT:99980", "t=0 0"]
    if not draft6:
        kinds = ";".join(f"{s.kind}:send,recv" for s in streams)
        lines.append(f"a=x-devicecaps:{kinds}")
    for stream in streams:
        lines += _media_lines(stream, draft6, host)
    return ("\r\n".join(lines) + "\r\n").encode()


def multipart_offer(streams: Sequence[StreamDescription], *, host: str, session_id: int,
                    version: int) -> tuple[str, bytes]:
    """(Content-Type, body) of the first offer: draft-6 fallback part, then RFC 5245."""
    parts = [
        BodyPart("application/sdp", (
            ("Content-Transfer-Encoding", "7bit"),
            ("Content-Disposition", FALLBACK_DISPOSITION),
        ), sdp_text(streams, host=host, session_id=session_id, version=version, draft6=True)),
        BodyPart("application/sdp", (
            ("Content-Transfer-Encoding", "7bit"),
            ("Content-Disposition", PRIMARY_DISPOSITION),
        ), sdp_text(streams, host=host, session_id=session_id, version=version)),
    ]
    return encode_multipart(parts, "alternative")


def common_codecs(offered: Media, kind: str) -> tuple[tuple[int, str, str | None], ...]:
    """The offer's formats we support, in the offer's order and with its payload types."""
    ours = {name.lower(): (name, fmtp) for _, name, fmtp in CODECS.get(kind, ())}
    found: list[tuple[int, str, str | None]] = []
    for codec in offered.codecs():
        key = f"{codec.name}/{codec.clock_rate}".lower()
        if key in ours:
            found.append((codec.payload_type, ours[key][0], codec.fmtp or ours[key][1]))
    return tuple(found)


def parse(body: bytes) -> SessionDescription:
    """Parse one SDP body (an ``SdpError`` when it is not SDP)."""
    return parse_sdp(body)
