"""`gateway sdp`: rewrite an SDP body Microsoft <-> standard, for interop debugging.

    gateway sdp --to standard  [--content-type TYPE] < lync-offer.txt
    gateway sdp --to microsoft [--content-type TYPE] < endpoint-offer.sdp

Reads a body on stdin (a multipart/alternative Microsoft body too: give its Content-Type, or
let the tool take the boundary from the body's first line), prints the rewritten SDP on
stdout, or an error on stderr with exit status 1. Addresses, ports, keys and candidates are
fixed demo values (documentation addresses); nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from media.ms_dialect import (
    Candidate,
    CandidateTransport,
    CandidateType,
    EncryptionPolicy,
    SsrcRange,
    pick_sdp_body,
)
from media.rewrite import SdpPlan, StreamPlan, VideoSecurity, to_microsoft, to_standard
from media.sdp import SessionDescription, parse_sdp
from sip.errors import ProtocolError

# Demo values: RFC 5737 documentation addresses, a fixed key, credentials of the lengths
# Microsoft accepts (4 / 24).
DEMO_VIDEO_SIDE = "192.0.2.10"
DEMO_MICROSOFT_SIDE = "192.0.2.20"
DEMO_SRFLX = "198.51.100.20"
DEMO_RELAY = "203.0.113.30"
DEMO_KEY = bytes(range(1, 31))
DEMO_UFRAG, DEMO_PWD = "GwB2", "DemoDemoDemoDemoDemo0000"

_POLICIES = {"required": EncryptionPolicy.REQUIRE, "supported": EncryptionPolicy.SUPPORT,
             "none": EncryptionPolicy.DO_NOT_SUPPORT}


def demo_candidates(port: int) -> tuple[Candidate, ...]:
    """Host, server-reflexive and relay candidates for both components of a stream."""
    out: list[Candidate] = []
    for component in (1, 2):
        p = port + component - 1
        out += [
            Candidate("1", component, CandidateTransport.UDP, 2130706432 - component,
                      DEMO_MICROSOFT_SIDE, p, CandidateType.HOST),
            Candidate("2", component, CandidateTransport.UDP, 1694498816 - component,
                      DEMO_SRFLX, p, CandidateType.SRFLX, DEMO_MICROSOFT_SIDE, p),
            Candidate("3", component, CandidateTransport.UDP, 16777216 - component,
                      DEMO_RELAY, 24000 + p - 56000, CandidateType.RELAY, DEMO_SRFLX, p),
        ]
    return tuple(out)


def demo_plan(sdp: SessionDescription, to: str, policy: EncryptionPolicy,
              video_security: VideoSecurity) -> SdpPlan:
    """A plan for every m= line of ``sdp``: audio/video get ports from 56000 up, the rest 0."""
    streams: list[StreamPlan] = []
    port = 56000
    for index, media in enumerate(sdp.media):
        if media.kind not in ("audio", "video") or media.port == 0:
            streams.append(StreamPlan(media.kind, 0, index))
            continue
        if to == "microsoft":
            ssrc = SsrcRange(1000, 1000) if media.kind == "audio" else SsrcRange(2000, 2099)
            streams.append(StreamPlan(media.kind, port, index, ice_ufrag=DEMO_UFRAG,
                                      ice_pwd=DEMO_PWD, candidates=demo_candidates(port),
                                      srtp_key=DEMO_KEY, ssrc_range=ssrc))
        else:
            streams.append(StreamPlan(media.kind, port, index, srtp_key=DEMO_KEY))
        port += 2
    address = DEMO_MICROSOFT_SIDE if to == "microsoft" else DEMO_VIDEO_SIDE
    return SdpPlan(address, tuple(streams), encryption=policy, video_security=video_security)


def _guess_content_type(body: bytes) -> str:
    """application/sdp, or multipart/alternative with the boundary the body starts with."""
    first = body.lstrip(b"\r\n").split(b"\n", 1)[0].strip()
    if first.startswith(b"--") and len(first) > 2:
        return f'multipart/alternative;boundary="{first[2:].decode("ascii", "replace")}"'
    return "application/sdp"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway sdp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, choices=("standard", "microsoft"),
                        help="the side the rewritten body is for")
    parser.add_argument("--content-type", help="the body's Content-Type (default: sniffed)")
    parser.add_argument("--encryption", choices=tuple(_POLICIES), default="required",
                        help="Microsoft-side policy (default: required)")
    parser.add_argument("--video-srtp", action="store_true",
                        help="offer SDES-SRTP to the video side instead of RTP/AVP")
    args = parser.parse_args(list(argv))
    body = sys.stdin.buffer.read()
    content_type = args.content_type or _guess_content_type(body)
    try:
        sdp_bytes, _ = pick_sdp_body(content_type, body)
        sdp = parse_sdp(sdp_bytes)
        security = VideoSecurity.SRTP if args.video_srtp else VideoSecurity.RTP
        plan = demo_plan(sdp, args.to, _POLICIES[args.encryption], security)
        rewrite = to_microsoft if args.to == "microsoft" else to_standard
        result = rewrite(sdp, plan)
    except ProtocolError as exc:
        sys.stderr.write(f"gateway sdp: error: {exc.message} (SIP {exc.status_hint})\n")
        return 1
    sys.stdout.write(str(result))
    return 0
