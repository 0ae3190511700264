"""Test peers for the relay engine: a Lync/SfB media peer (from ``lab.lync.peer``: aioice +
pylibsrtp, Microsoft SDP dialect) and a plain RTP video endpoint (two UDP sockets), all on
loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aioice import Connection

from lab.lync.peer import CODECS, LYNC_SSRC, MKI, LyncPeer, rtcp_rr, rtp, ssrc_of
from media.ice_leg import IceLeg
from media.sdp import Media, SessionDescription, parse_sdp

__all__ = ["CODECS", "LYNC_SSRC", "MKI", "LyncPeer", "VideoPeer", "aioice_peer",
           "media_of", "rtcp_rr", "rtp",
           "ssrc_of"]


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[tuple[bytes, tuple[str, int], int]],
                 component: int) -> None:
        self.queue = queue
        self.component = component
        self.transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1]), self.component))


class VideoPeer:
    """A plain RTP endpoint: RTP and RTCP sockets on 127.0.0.1, no ICE, no SRTP."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int], int]] = asyncio.Queue()
        self.sockets: list[_Socket] = []
        self.gateway: dict[int, tuple[str, tuple[int, int]]] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for component in (1, 2):
            _, proto = await loop.create_datagram_endpoint(
                lambda c=component: _Socket(self.received, c), local_addr=(self.host, 0))
            self.sockets.append(proto)

    @property
    def ports(self) -> tuple[int, int]:
        return tuple(s.transport.get_extra_info("sockname")[1]  # type: ignore[return-value]
                     for s in self.sockets)

    def answer(self, offer: SessionDescription) -> SessionDescription:
        """Answer the gateway's offer: same codecs, mirrored direction, our sockets."""
        flip = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
        lines = ["v=0", f"o=- 1 1 IN IP4 {self.host}", "s=-", f"c=IN IP4 {self.host}", "t=0 0"]
        for index, media in enumerate(offer.media):
            conn = offer.connection_for(media)
            assert conn is not None
            rtcp = int(media.get("rtcp") or media.port + 1)
            self.gateway[index] = (conn.address, (media.port, rtcp))
            port = self.ports[0] if media.port else 0
            lines.append(f"m={media.kind} {port} {media.proto} {' '.join(media.formats)}")
            lines.append(f"a=rtcp:{self.ports[1]}")
            lines += [f"a={a}" for a in media.attributes if a.name in ("rtpmap", "fmtp")]
            if media.direction != "sendrecv":
                lines.append(f"a={flip[media.direction]}")
        return parse_sdp("\r\n".join(lines) + "\r\n")

    def send(self, index: int, packet: bytes, component: int = 1) -> None:
        host, ports = self.gateway[index]
        self.sockets[component - 1].transport.sendto(packet, (host, ports[component - 1]))

    def close(self) -> None:
        for s in self.sockets:
            s.transport.close()


def media_of(sdp: SessionDescription, index: int) -> Media:
    return sdp.media[index]


async def aioice_peer(leg: IceLeg, *, controlling: bool) -> Connection:
    """A plain aioice agent (two components) on loopback that knows ``leg``'s candidates and
    credentials: ready to ``connect``. aioice gathers on every interface but 127.0.0.1, so
    its candidates come from its own helper on loopback only."""
    peer = Connection(ice_controlling=controlling, components=2)
    for component in (1, 2):
        peer._local_candidates += await peer.get_component_candidates(
            component, addresses=["127.0.0.1"])
    peer._local_candidates_start = peer._local_candidates_end = True
    for c in leg.agent.local_candidates:
        await peer.add_remote_candidate(c)
    await peer.add_remote_candidate(None)
    peer.remote_username, peer.remote_password = leg.ufrag, leg.pwd
    return peer


async def until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Wait (bounded) for a state the sockets or relays reach on their own, where there is
    no event to wait on (aioice's answered checks, a relay's counters)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None
