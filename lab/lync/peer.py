"""A bare Lync media peer for driving the gateway's relay engine directly (no SIP): aioice
(relay-only through a TURN server, or host candidates on a loopback address), SRTP with the
1-byte MKI Lync puts in every packet, ``a=x-ssrc-range``; plus RTP/RTCP packet helpers.

:class:`lab.lync.client.LyncClient` is the full client; this peer is what the media tests
and the relay benchmark use when they hand SDP to a ``MediaSession`` themselves.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from dataclasses import dataclass, field

import aioice
import pylibsrtp
from aioice import Connection, TransportPolicy

from lab.lync.client_media import insert_mki
from media.ms_dialect import Crypto
from media.sdp import SessionDescription, parse_sdp

__all__ = ["CODECS", "LYNC_SSRC", "MKI", "LyncPeer", "rtcp_rr", "rtp", "ssrc_of"]

MKI = b"\x01"
LYNC_SSRC = {"audio": (1000, 1099), "video": (2000, 2099)}
CODECS = {"audio": ("0 8 101", ["rtpmap:0 PCMU/8000", "rtpmap:8 PCMA/8000",
                                "rtpmap:101 telephone-event/8000", "fmtp:101 0-16"]),
          "video": ("122", ["rtpmap:122 X-H264UC/90000",
                            "fmtp:122 packetization-mode=1;mst-mode=NI-TC"])}


def rtp(ssrc: int, seq: int, payload: bytes, pt: int = 0) -> bytes:
    """An RTP packet (RFC 3550 §5.1) with timestamp ``seq * 160``."""
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF,
                       ssrc) + payload


def rtcp_rr(ssrc: int, about: int) -> bytes:
    """An RR with one report block about ``about`` (RFC 3550 §6.4.2)."""
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + struct.pack("!I", about) + bytes(20)


def ssrc_of(packet: bytes) -> int:
    return int(struct.unpack_from("!I", packet, 8)[0])


@dataclass
class _LyncStream:
    kind: str
    conn: Connection
    key: bytes = field(default_factory=lambda: os.urandom(30))
    tx: pylibsrtp.Session | None = None
    rx: pylibsrtp.Session | None = None
    received: asyncio.Queue[tuple[bytes, int]] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None


class LyncPeer:
    """Plays a Lync client's media: ICE with aioice (relay-only via a TURN server, or host
    candidates on ``host``), SRTP with an MKI, x-ssrc-range."""

    def __init__(self, turn: tuple[str, int] | None = None, username: str = "",
                 password: str = "", host: str = "127.0.0.1") -> None:
        self.turn = turn
        self.username = username
        self.password = password
        self.host = host
        self.streams: list[_LyncStream] = []
        self.version = 0

    async def add_stream(self, kind: str) -> None:
        if self.turn is not None:
            conn = Connection(ice_controlling=True, components=2, turn_server=self.turn,
                              turn_username=self.username, turn_password=self.password,
                              transport_policy=TransportPolicy.RELAY)
            await conn.gather_candidates()
        else:
            # aioice gathers on every interface but 127.0.0.1: bind the loopback host only.
            conn = Connection(ice_controlling=True, components=2)
            for component in (1, 2):
                conn._local_candidates += await conn.get_component_candidates(
                    component, addresses=[self.host])
            conn._local_candidates_start = conn._local_candidates_end = True
        self.streams.append(_LyncStream(kind, conn))

    def offer(self, direction: str = "sendrecv") -> SessionDescription:
        self.version += 1
        lines = ["v=0", f"o=- 0 {self.version} IN IP4 {self.host}", "s=session",
                 f"c=IN IP4 {self.host}", "b=CT:99980", "t=0 0"]
        for s in self.streams:
            cands = s.conn.local_candidates
            rtp_c = next(c for c in cands if c.component == 1)
            rtcp_c = next((c for c in cands if c.component == 2), rtp_c)
            formats, attrs = CODECS[s.kind]
            lines.append(f"m={s.kind} {rtp_c.port} RTP/SAVP {formats}")
            lines.append(f"c=IN IP4 {rtp_c.host}")
            first, last = LYNC_SSRC[s.kind]
            lines += [f"a=x-ssrc-range:{first}-{last}",
                      "a=rtcp-fb:* x-message app send:dsh recv:dsh",
                      f"a=label:main-{s.kind}", f"a=x-source:main-{s.kind}",
                      f"a=ice-ufrag:{s.conn.local_username}", f"a=ice-pwd:{s.conn.local_password}"]
            lines += [f"a=candidate:{c.to_sdp()}" for c in cands]
            key = base64.b64encode(s.key).decode()
            lines.append(f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
            lines.append(f"a=rtcp:{rtcp_c.port}")
            if direction != "sendrecv":
                lines.append(f"a={direction}")
            lines += [f"a={a}" for a in attrs]
            lines.append("a=encryption:required")
        return parse_sdp("\r\n".join(lines) + "\r\n")

    async def start(self, answer: SessionDescription) -> None:
        """Take the answer: keys, then ICE (we are the offerer: controlling)."""
        for s, media in zip(self.streams, answer.media, strict=False):
            crypto = Crypto.parse(media.get_all("crypto")[0])
            s.tx = pylibsrtp.Session(pylibsrtp.Policy(
                key=s.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
            s.rx = pylibsrtp.Session(pylibsrtp.Policy(
                key=crypto.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
            if s.reader is not None:
                continue  # a re-INVITE: ICE keeps running
            s.conn.remote_username = media.get("ice-ufrag")
            s.conn.remote_password = media.get("ice-pwd")
            for value in media.get_all("candidate"):
                await s.conn.add_remote_candidate(aioice.Candidate.from_sdp(value))
            await s.conn.add_remote_candidate(None)
        await asyncio.gather(*(self._connect(s) for s in self.streams if s.reader is None))

    async def _connect(self, s: _LyncStream) -> None:
        await s.conn.connect()
        s.reader = asyncio.create_task(self._read(s))

    async def _read(self, s: _LyncStream) -> None:
        while True:
            try:
                data, component = await s.conn.recvfrom()
            except ConnectionError:
                return
            if s.rx is None:
                continue
            try:
                plain = s.rx.unprotect_rtcp(data) if component == 2 else s.rx.unprotect(data)
            except pylibsrtp.Error:
                continue
            s.received.put_nowait((plain, component))

    async def send(self, index: int, packet: bytes, component: int = 1) -> None:
        """Protect and send, with the MKI Lync puts before the auth tag."""
        s = self.streams[index]
        if s.tx is None:
            raise RuntimeError("no SRTP keys yet: start() first")
        data = s.tx.protect_rtcp(packet) if component == 2 else s.tx.protect(packet)
        await s.conn.sendto(insert_mki(data, MKI), component)

    async def close(self) -> None:
        for s in self.streams:
            if s.reader is not None:
                s.reader.cancel()
            await s.conn.close()
