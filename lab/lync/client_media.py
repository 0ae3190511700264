"""A Lync client's media: ICE with aioice (host, srflx, relay), SDES-SRTP with or without
an MKI, and paced RTP with real sequence numbers and timestamps.

Why not ``aioice.Connection.gather_candidates``: it gathers on every interface (and never on
127.0.0.1), so :class:`ClientIce` binds its host candidates on the client's loopback
address itself and reuses aioice's STUN and TURN client pieces, as ``media.ice_leg`` does
for the gateway. Every STUN message and packet goes through :class:`GuardedProtocol`,
which refuses (and logs, once per destination) any destination outside the client's
``allowed_networks`` (loopback unless configured: the lab never sends elsewhere).

STUN: a client speaks one dialect (``ClientConfig.stun_dialect``): [MS-ICE2] version 2 as
Lync 2013 / Skype for Business clients and libnice's OC2007R2 mode do (the default, with
the version-1 copies of each check such a client sends until it hears version 2), or RFC
5389 as the older behaviour; ``media.ms_stun`` holds the codec and the aioice hook.

MKI: pylibsrtp has no MKI setting; RFC 3711 §3.1 puts the MKI between the encrypted
payload and the auth tag and leaves it out of the authentication, so it is inserted after
``protect`` and removed (``media.srtp.strip_mki``) before ``unprotect``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from aioice import Candidate as IceCandidate
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate
from aioice.stun import Message

from lab.lync.ms_turn_client import MsTurnTransport, create_ms_turn_endpoint
from media.ice_leg import (
    Network,
    PriorityAgent,
    Relay,
    TurnServerSettings,
    address_allowed,
    gathered,
    host_candidate,
    to_sdp_candidate,
    turn_relay,
)
from media.ms_dialect import CRYPTO_SUITE, Candidate, CandidateTransport, Crypto, SsrcRange
from media.ms_stun import DialectPolicy, DialectProtocol, StunDialect
from media.srtp import AUTH_TAG_LEN, SrtpError, strip_mki

__all__ = [
    "ClientIce",
    "GuardedProtocol",
    "MediaStream",
    "StreamCounters",
    "LOOPBACK",
    "insert_mki",
    "networks",
    "rtp_packet",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]
MKI = (1, 1)
"""(value, length): the MKI Lync writes as ``|1:1``."""
SSRC_RANGES = {"audio": 1, "video": 100}
"""How many SSRCs each kind announces in x-ssrc-range."""
CLOCK = {"audio": 8000, "video": 90000}
AUDIO_PAYLOAD = bytes(160)
VIDEO_PAYLOAD = bytes(400)


LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))
"""Where a client's media may go unless told otherwise."""


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (``ClientConfig.allowed_networks``) as networks."""
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def insert_mki(packet: bytes, mki: bytes) -> bytes:
    """Put ``mki`` before the auth tag of a protected packet (RFC 3711 §3.1)."""
    return packet[:-AUTH_TAG_LEN] + mki + packet[-AUTH_TAG_LEN:]


def rtp_packet(payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes,
               marker: bool = False) -> bytes:
    """An RTP packet (RFC 3550 §5.1), version 2, no CSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF,
                       timestamp & 0xFFFFFFFF, ssrc) + payload


class GuardedProtocol(DialectProtocol):
    """The dialect-aware socket protocol that sends only inside the agent's allowed networks,
    with an RTP fast path."""

    receiver: ClientIce

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        # RFC 7983 §7: a first byte 128..191 is RTP/RTCP, never STUN.
        if isinstance(data, bytes) and data and 127 < data[0] < 192:
            self.receiver.data_received(data, self.local_candidate.component)
            return
        super().datagram_received(data, addr)

    def send_stun(self, message: Message, addr: tuple[str, int]) -> None:
        if self.receiver.guard(addr):
            super().send_stun(message, addr)

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.receiver.guard(addr):
            self.transport.sendto(data, addr)


@dataclass(frozen=True, slots=True)
class IceServers:
    """Where srflx and relay candidates come from."""

    stun: Address | None = None
    turn: Address | None = None
    turn_username: str = ""
    turn_password: str = ""
    relay_only: bool = False
    ms_turn: bool = False
    """Allocate on ``turn`` with MS-TURN (the A/V Edge, MRAS credentials), not RFC 8656."""
    ms_turn_username: bytes = b""
    """Raw MS-TURN username (MRAS's base64 decoded, as MS clients use it)."""
    ms_turn_password: bytes = b""


class ClientIce(PriorityAgent):
    """One stream's ICE agent (components 1 RTP and 2 RTCP) on the client's address; like a
    real client it ends on the highest-priority nominated pair (``PriorityAgent``)."""

    def __init__(self, host: str, servers: IceServers, *, controlling: bool,
                 on_media: Callable[[bytes, int], None],
                 allowed: Sequence[Network] = LOOPBACK,
                 stun_dialect: StunDialect = StunDialect.MS_ICE2) -> None:
        super().__init__(ice_controlling=controlling, components=2)
        self.host = host
        self.label = f"ICE {host}"
        self.stun_policy = DialectPolicy.pinned(f"ICE {host}", stun_dialect)
        """The one STUN dialect we speak, and what we learned of the peer."""
        self.servers = servers
        self.on_media = on_media
        self.allowed = tuple(allowed)
        """The only networks we send to."""
        self.refused: set[Address] = set()
        """Destinations the guard refused."""

    def allows(self, host: str) -> bool:
        return address_allowed(host, self.allowed)

    def guard(self, addr: Address) -> bool:
        """Whether we may send to ``addr``; a refusal is logged once per destination."""
        if self.allows(addr[0]):
            return True
        if (addr[0], addr[1]) not in self.refused:
            self.refused.add((addr[0], addr[1]))
            logger.warning("ICE %s: refusing to send to %s:%d (not in %s)", self.host,
                           addr[0], addr[1], ",".join(str(n) for n in self.allowed))
        return False

    def data_received(self, data: bytes, component: int) -> None:
        self.on_media(data, component)

    async def gather(self) -> None:
        """Host candidates on ``host`` (ephemeral ports), then srflx and relay."""
        loop = asyncio.get_running_loop()
        candidates: list[IceCandidate] = []
        hosts: list[GuardedProtocol] = []
        servers = self.servers
        if not servers.relay_only:
            for component in (1, 2):
                _, proto = await loop.create_datagram_endpoint(
                    lambda: GuardedProtocol(self), local_addr=(self.host, 0))
                port = proto.transport.get_extra_info("sockname")[1]
                proto.local_candidate = host_candidate(self.host, port, component)
                hosts.append(proto)
                candidates.append(proto.local_candidate)
            self._protocols += hosts
        tasks: list[asyncio.Future[tuple[IceCandidate, StunProtocol | None]]] = []
        if servers.stun is not None and self.guard(servers.stun):
            tasks += [asyncio.ensure_future(server_reflexive_candidate(p, servers.stun))
                      for p in hosts]
        if servers.turn is not None and self.guard(servers.turn):
            tasks += [asyncio.ensure_future(self._relayed(component)) for component in (1, 2)]
        def failed(error: BaseException) -> None:
            logger.warning("ICE %s: gathering failed: %r", self.host, error)

        for candidate, protocol in await gathered(tasks, failed):
            if candidate.type == "srflx" and any(
                    c.host == candidate.host and c.port == candidate.port
                    for c in candidates):
                continue  # no NAT on loopback: srflx equal to its host is redundant
            candidates.append(candidate)
            if protocol is not None:
                self._protocols.append(protocol)
        if not any(c.component == 1 for c in candidates):
            raise ConnectionError(f"ICE {self.host}: no candidate could be gathered")
        candidates.sort(key=lambda c: (c.component, -c.priority))
        self._local_candidates = candidates
        self._local_candidates_start = True
        self._local_candidates_end = True

    async def _relayed(self, component: int) -> tuple[IceCandidate, StunProtocol]:
        # Kept in ``relays`` so that close releases them together, bounded (PriorityAgent).
        servers = self.servers
        assert servers.turn is not None
        if servers.ms_turn:
            candidate, protocol = await ms_relayed_candidate(
                component, servers, self.host, lambda: GuardedProtocol(self))
            transport = protocol.transport
            assert isinstance(transport, MsTurnTransport)
            relay = Relay(protocol, transport.protocol.release, servers.turn)
        else:
            candidate, relay = await turn_relay(
                lambda: GuardedProtocol(self),
                TurnServerSettings(servers.turn, servers.turn_username, servers.turn_password),
                (self.host, 0), component)
        self.relays.append(relay)
        return candidate, relay.protocol

    @property
    def sdp_candidates(self) -> tuple[Candidate, ...]:
        return tuple(to_sdp_candidate(c) for c in self.local_candidates)

    async def set_active_destinations(self) -> None:
        """On MS-TURN relays, make each nominated peer the active destination (as Lync
        clients do once ICE has chosen), so media then travels unencapsulated."""
        for pair in list(self._nominated.values()):
            transport = pair.protocol.transport
            if isinstance(transport, MsTurnTransport):
                try:
                    await transport.set_active_destination(pair.remote_addr)
                except (ConnectionError, TimeoutError) as error:
                    logger.warning("ICE %s: Set Active Destination failed: %s", self.host,
                                   error)

    async def run(self, ufrag: str, pwd: str, candidates: Iterable[Candidate],
                  timeout: float) -> None:
        """Connectivity checks; ConnectionError / TimeoutError when they fail."""
        self.remote_username = ufrag
        self.remote_password = pwd
        for c in candidates:
            if c.transport is not CandidateTransport.UDP or c.component not in (1, 2):
                continue
            if not self.allows(c.address):
                logger.info("ICE %s: ignoring remote candidate %s:%d (not in %s)", self.host,
                            c.address, c.port, ",".join(str(n) for n in self.allowed))
                continue
            await self.add_remote_candidate(IceCandidate(
                foundation=c.foundation, component=c.component, transport="udp",
                priority=c.priority, host=c.address, port=c.port, type=c.type.value,
                related_address=c.related_address, related_port=c.related_port))
        await self.add_remote_candidate(None)
        await asyncio.wait_for(self.connect(), timeout)
        await self.set_active_destinations()

    @property
    def pair_type(self) -> str | None:
        """"local/remote" candidate types of the nominated RTP pair."""
        pair = self._nominated.get(1)
        if pair is None:
            return None
        return f"{pair.local_candidate.type}/{pair.remote_candidate.type}"

    def send_media(self, data: bytes, component: int) -> bool:
        """Send on the nominated pair; False before ICE completes."""
        pair = self._nominated.get(component)
        if pair is None or not self.guard(pair.remote_addr):
            return False
        pair.protocol.transport.sendto(data, pair.remote_addr)
        return True


async def ms_relayed_candidate(
    component: int, servers: IceServers, host: str,
    protocol_factory: Callable[[], StunProtocol],
) -> tuple[IceCandidate, StunProtocol]:
    """A relay candidate from an MS-TURN allocation (``aioice.ice.relayed_candidate``'s
    counterpart: aioice's TURN client speaks only RFC 8656)."""
    assert servers.turn is not None
    _, protocol = await create_ms_turn_endpoint(
        protocol_factory, server=servers.turn, username=servers.ms_turn_username,
        password=servers.ms_turn_password, local_host=host)
    assert isinstance(protocol, StunProtocol)
    relayed = protocol.transport.get_extra_info("sockname")
    related = protocol.transport.get_extra_info("related_address")
    protocol.local_candidate = IceCandidate(
        foundation=candidate_foundation("relay", "udp", relayed[0]), component=component,
        transport="udp", priority=candidate_priority(component, "relay"), host=relayed[0],
        port=relayed[1], type="relay", related_address=related[0], related_port=related[1])
    return protocol.local_candidate, protocol


@dataclass(slots=True)
class StreamCounters:
    """Per-stream packet counts."""

    sent: int = 0
    received: int = 0
    rtcp_received: int = 0
    bad: int = 0
    """Packets that failed SRTP (or were not RTP)."""
    refused: dict[str, int] = field(default_factory=dict)
    """``bad`` by reason ("no SRTP keys yet", "SRTP: authentication failure", "RTCP on
    component 1: ..."), so that a dead direction names its cause."""
    last_seq: int | None = None
    """Sequence number of the newest RTP packet received."""


def new_crypto(tag: int, mki: bool) -> Crypto:
    return Crypto(tag, CRYPTO_SUITE, os.urandom(30), "2^31", MKI if mki else None)


def _mki_bytes(crypto: Crypto) -> bytes:
    if crypto.mki is None:
        return b""
    value, length = crypto.mki
    return value.to_bytes(length, "big")


class MediaStream:
    """One m= line of a call: ICE agent, SRTP keys, a paced RTP sender and counters."""

    def __init__(self, kind: str, host: str, servers: IceServers, *, controlling: bool,
                 on_packet: Callable[[], None], rate: int,
                 allowed: Sequence[Network] = LOOPBACK,
                 stun_dialect: str = StunDialect.MS_ICE2.value) -> None:
        self.kind = kind
        self.ice = ClientIce(host, servers, controlling=controlling, on_media=self._received,
                             allowed=allowed, stun_dialect=StunDialect(stun_dialect))
        self.ice.stun_policy.label = f"ICE {host} {kind}"
        self.cryptos: tuple[Crypto, ...] = (new_crypto(1, True), new_crypto(2, False))
        """Our keys as offered: one with the MKI Lync uses, one without."""
        first = secrets.randbelow(2**31 - 1000) + 1
        self.ssrc_range = SsrcRange(first, first + SSRC_RANGES[kind] - 1)
        self.ssrc = first
        self.direction = "sendrecv"
        """Our direction (what we said in our last SDP)."""
        self.remote_direction = "sendrecv"
        self.payload_type: int | None = None
        self.counters = StreamCounters()
        self.connected = False
        self.failed: str | None = None
        self.rate = rate
        """Packets per second we send."""
        self._on_packet = on_packet
        self._tx: pylibsrtp.Session | None = None
        self._tx_mki = b""
        self._rx: pylibsrtp.Session | None = None
        self._rx_mki = b""
        self._sender: asyncio.Task[None] | None = None
        self._ice_task: asyncio.Task[None] | None = None
        self.ice_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def sending(self) -> bool:
        """Whether we send now: ICE up, keys set, and neither side holds the other off."""
        return (self.connected and self._tx is not None
                and self.direction in ("sendrecv", "sendonly")
                and self.remote_direction in ("sendrecv", "recvonly"))

    def set_keys(self, send: Crypto, receive: Crypto) -> None:
        """Our key (with its MKI, if any) and the peer's; kept across re-INVITEs."""
        if self._tx is not None:
            return
        self._tx = pylibsrtp.Session(pylibsrtp.Policy(
            key=send.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        self._tx_mki = _mki_bytes(send)
        self._rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=receive.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        self._rx_mki = _mki_bytes(receive)

    def start_ice(self, ufrag: str, pwd: str, candidates: Iterable[Candidate],
                  timeout: float) -> None:
        """Run the checks in the background, then start sending."""
        if self._ice_task is not None:
            return
        self._ice_task = asyncio.ensure_future(self._ice(ufrag, pwd, tuple(candidates), timeout))

    async def _ice(self, ufrag: str, pwd: str, candidates: tuple[Candidate, ...],
                   timeout: float) -> None:
        try:
            await self.ice.run(ufrag, pwd, candidates, timeout)
        except (ConnectionError, TimeoutError, OSError) as error:
            self.failed = f"ICE failed: {error!r}"
            logger.warning("%s stream: %s", self.kind, self.failed)
            if not self.ice_done.done():
                self.ice_done.set_exception(ConnectionError(self.failed))
                self.ice_done.exception()
            return
        self.connected = True
        logger.info("%s stream: ICE connected (%s)", self.kind, self.ice.pair_type)
        if not self.ice_done.done():
            self.ice_done.set_result(None)
        self._sender = asyncio.ensure_future(self._send_loop())

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        seq = secrets.randbelow(2**16)
        timestamp = secrets.randbelow(2**32)
        step = CLOCK[self.kind] // self.rate
        payload = AUDIO_PAYLOAD if self.kind == "audio" else VIDEO_PAYLOAD
        deadline = loop.time()
        while True:
            if self.sending and self._tx is not None and self.payload_type is not None:
                packet = rtp_packet(self.payload_type, seq, timestamp, self.ssrc, payload,
                                    marker=self.kind == "video")
                try:
                    data = insert_mki(self._tx.protect(packet), self._tx_mki)
                except pylibsrtp.Error as error:
                    logger.warning("%s stream: protect failed: %s", self.kind, error)
                else:
                    if self.ice.send_media(data, 1):
                        self.counters.sent += 1
                        self._on_packet()
                seq = (seq + 1) & 0xFFFF
            timestamp = (timestamp + step) & 0xFFFFFFFF
            # Pace against the clock, not the previous send, so the rate does not drift.
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    def _refuse(self, reason: str) -> None:
        self.counters.bad += 1
        self.counters.refused[reason] = self.counters.refused.get(reason, 0) + 1

    def _received(self, data: bytes, component: int) -> None:
        rx = self._rx
        if rx is None:
            self._refuse("no SRTP keys yet")
            return
        rtcp = component == 2 or (len(data) > 1 and 192 <= data[1] <= 223)
        try:
            if self._rx_mki:
                data = strip_mki(data, self._rx_mki)
            plain = rx.unprotect_rtcp(data) if rtcp else rx.unprotect(data)
        except (pylibsrtp.Error, SrtpError) as error:
            kind = "SRTCP" if rtcp else "SRTP"
            self._refuse(f"{kind} on component {component}: {error}")
            return
        if rtcp:
            self.counters.rtcp_received += 1
            return
        if len(plain) < 12:
            self._refuse("shorter than an RTP header")
            return
        self.counters.received += 1
        self.counters.last_seq = struct.unpack_from("!H", plain, 2)[0]
        self._on_packet()

    async def close(self) -> None:
        for task in (self._sender, self._ice_task):
            if task is not None:
                task.cancel()
        for task in (self._sender, self._ice_task):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        try:
            await asyncio.wait_for(self.ice.close(), 5.0)
        except (TimeoutError, OSError) as error:
            logger.warning("%s stream: ICE close: %r", self.kind, error)
