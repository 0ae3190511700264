"""The Microsoft leg of a stream: ICE (RFC 5245, as [MS-ICE2]) with aioice, one agent per
stream, components 1 (RTP) and 2 (RTCP).

Why a subclass of ``aioice.Connection`` and not its ``gather_candidates``: aioice (0.10 to
0.13) gathers host candidates on every interface ``ifaddr`` reports (and skips 127.0.0.1),
binds ephemeral ports, and offers no parameter to change either. The gateway must offer only
its configured media address, on its pool ports, so ``IceLeg.gather`` binds the host
candidates itself and reuses aioice's STUN and TURN client pieces for srflx and relay
candidates. It fills the same fields ``gather_candidates`` would (``_protocols``,
``_local_candidates``, the two ``_local_candidates_*`` flags): that is aioice internals,
pinned by the tests in tests/media/test_ice_leg.py.

STUN goes through ``media.ms_stun.DialectProtocol``: the leg reads checks in [MS-ICE2]
version 2 (Lync, libnice's OC2007R2 mode) and in RFC 5389, answers each in its own dialect,
and sends its own checks in the dialect the peer showed (MS-ICE2 first, alternating on
retransmission while unknown; ``IceSettings.stun_dialect`` pins one). A check the peer
refuses unsigned (400/401: a standard agent given an [MS-ICE2] check) goes out again at once
in the other dialect, and fails its pair once refused in both. The dialect is logged once
per leg when learned.

Every STUN message and packet this leg sends goes through ``_Protocol``, which refuses any
destination outside ``allowed_networks`` (the lab keeps all traffic on loopback) and records
the destinations it used. Remote candidates outside those networks are never added.

The ICE role must be right before the first check can arrive, not only when ``connect``
runs: the agent answers checks as soon as its sockets are bound, and aioice repairs a
"conflict" (RFC 8445 §7.3.1.1) by switching roles on both sides from random tie-breakers.
When the gateway offers, the answerer starts its checks as soon as it sends its answer, so
they reach us before we have applied that answer. Had the agent been waiting as controlled,
half the time it answered 487 and the peer turned controlling, nominated with its (now
successful) retry and completed; our ``connect`` then made us controlling again, a second
conflict made us controlled, and the peer's USE-CANDIDATE, held as an early check, had been
read while we were controlling and was ignored: the peer sent to us on its pair while we
waited for a nomination that never came, and sent nothing. Hence the default role: a leg
whose offer/answer is not applied yet can only be reached if we offered (an answer is
applied, with ``set_role``, before it leaves), and the offerer controls (RFC 8445 §6.1.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aioice import Candidate as IceCandidate
from aioice import Connection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import (
    CandidatePair,
    StunProtocol,
    candidate_pair_priority,
    server_reflexive_candidate,
)
from aioice.stun import Message
from aioice.turn import (
    DEFAULT_ALLOCATION_LIFETIME,
    DEFAULT_CHANNEL_REFRESH_TIME,
    TurnClientUdpProtocol,
    TurnTransport,
)

from media.ice_adapter import RelayTransport
from media.ms_dialect import Candidate, CandidateTransport, CandidateType
from media.ms_stun import DialectPolicy, DialectProtocol, StunDialect

__all__ = [
    "IceLeg",
    "IceSettings",
    "PriorityAgent",
    "Relay",
    "TurnServerSettings",
    "gathered",
    "host_candidate",
    "to_sdp_candidate",
    "turn_relay",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
GATHER_TIMEOUT = 5.0
TURN_RELEASE_TIMEOUT = 1.0
"""Seconds ``PriorityAgent.close`` waits for a TURN server to confirm the deallocations (all at
once); after that the sockets close anyway and the server lets the allocations expire."""


@dataclass(frozen=True, slots=True)
class Relay:
    """A relay candidate's protocol (in the agent's ``_protocols``) and how to delete its
    allocation; ``release`` closes the TURN socket however it ends, cancelled included."""

    protocol: StunProtocol
    release: Callable[[], Awaitable[None]]
    server: Address


@dataclass(frozen=True, slots=True)
class TurnServerSettings:
    """One TURN server the gateway takes relay candidates from."""

    address: Address
    """(host, port), port 3478 by default."""
    username: str = "GatewayB2BUA"
    password: str = ""


@dataclass(frozen=True, slots=True)
class IceSettings:
    """What every ICE leg of the gateway shares."""

    stun_server: Address | None = None
    """STUN server for server-reflexive candidates (None: no srflx)."""
    turn_servers: tuple[TurnServerSettings, ...] = ()
    """Relay candidates come from each of these."""
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Networks this leg may send to; candidates elsewhere are ignored."""
    connect_timeout: float = 30.0
    """Seconds the connectivity checks may take before the stream fails."""
    stun_dialect: str = "auto"
    """STUN dialect of the checks: "auto" (the peer's: [MS-ICE2] v2 or RFC 5389), or
    "ms-ice2" / "rfc5389" to speak only that one."""

    def __post_init__(self) -> None:
        if self.stun_dialect != "auto":
            StunDialect(self.stun_dialect)  # ValueError naming the value


def dialect_policy(label: str, setting: str) -> DialectPolicy:
    """The :class:`DialectPolicy` for an ``IceSettings.stun_dialect`` value."""
    if setting == "auto":
        # No version-1 copies: a standard peer (aioice) takes a message whose FINGERPRINT
        # fails for media. A version-1 peer is answered in its way once it has checked us.
        return DialectPolicy(label)
    return DialectPolicy(label, accept=(StunDialect(setting),), prefer=StunDialect(setting))


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    cidrs = tuple(cidrs)
    networks = _PARSED_NETWORKS.get(cidrs)
    if networks is None:
        networks = tuple(ipaddress.ip_network(c) for c in cidrs)
        if len(_PARSED_NETWORKS) < 64:  # one entry per configuration in practice
            _PARSED_NETWORKS[cidrs] = networks
    return networks


_PARSED_NETWORKS: dict[tuple[str, ...], tuple[Network, ...]] = {}


def address_allowed(host: str, networks: Sequence[Network]) -> bool:
    """True when ``host`` (an IP address text) lies in one of ``networks``."""
    # Asked for every STUN message sent and every remote candidate, with a handful of
    # distinct addresses: remember the answers (networks are hashable values).
    key = (host, tuple(networks))
    allowed = _ALLOWED.get(key)
    if allowed is None:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            allowed = False
        else:
            allowed = any(ip in net for net in networks)
        if len(_ALLOWED) >= 4096:  # addresses come from the network: bound the memo
            del _ALLOWED[next(iter(_ALLOWED))]
        _ALLOWED[key] = allowed
    return allowed


_ALLOWED: dict[tuple[str, tuple[Network, ...]], bool] = {}


class _Protocol(DialectProtocol):
    """The dialect-aware socket protocol with an RFC 7983 fast path for RTP/RTCP and a send
    guard."""

    receiver: _Agent

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        # RFC 7983 §7: first byte 128..191 is RTP/RTCP; skip aioice's STUN parse attempt.
        if data and 127 < data[0] < 192:  # type: ignore[operator]
            sink = self.receiver.leg.on_media
            if sink is not None:
                sink(data, self.local_candidate.component)  # type: ignore[arg-type]
            return
        super().datagram_received(data, addr)

    def send_stun(self, message: Message, addr: tuple[str, int]) -> None:
        if self.receiver.leg.guard(addr):
            super().send_stun(message, addr)

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.receiver.leg.guard(addr):
            self.transport.sendto(data, addr)


class PriorityAgent(Connection):
    """An aioice agent that ends on the highest-priority nominated pair of each component.

    aioice nominates aggressively when controlling (every check carries USE-CANDIDATE) and
    takes the first nominated pair to succeed, cancels every other check, and, controlled,
    takes whatever pair was nominated last. So when a host check is slower than a relay check
    (a loaded peer, a lost first transmission) both agents stay on the relay, and a late
    USE-CANDIDATE on a lower pair moves a controlled agent down. RFC 5245 §8.1.2 (aggressive
    nomination, as [MS-ICE2] and libnice's Microsoft modes use it) keeps higher-priority
    checks in progress running and uses the highest-priority nominated pair: so does this.
    ``check_complete`` is aioice's (1.0 / 0.13) with those two changes; pinned by
    tests/media/test_ice_nomination.py.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._upgrades: set[asyncio.Task[None]] = set()
        """Checks of pairs better than the nominated one, left running after completion."""
        self.relays: list[Relay] = []
        """Relay candidates' protocols, released together and bounded by ``close``."""
        self.label = "ICE"
        """Names the agent in logs."""

    def pair_priority(self, pair: CandidatePair) -> int:
        return candidate_pair_priority(pair.local_candidate, pair.remote_candidate,
                                       self.ice_controlling)

    def nominated_pair(self, pair: CandidatePair) -> None:
        """Called when ``pair`` replaces a lower nominated pair after the checks completed."""

    def check_complete(self, pair: CandidatePair) -> None:
        pair.task = None
        if pair.state == CandidatePair.State.SUCCEEDED:
            if pair.nominated:
                self._select(pair)
            if self._check_list_maybe_complete():
                self._keep_better_checks()
                return
            # Updating candidate pair states (RFC 8445 section 7.2.5.3.3).
            for p in self._check_list:
                if (p.local_candidate.foundation == pair.local_candidate.foundation
                        and p.state == CandidatePair.State.FROZEN):
                    self.check_state(p, CandidatePair.State.WAITING)
        self._check_list_maybe_fail()

    def _select(self, pair: CandidatePair) -> None:
        current = self._nominated.get(pair.component)
        priority = self.pair_priority(pair)
        if current is not None and current is not pair \
                and self.pair_priority(current) > priority:
            return  # a better pair is nominated already: it stays
        self._nominated[pair.component] = pair
        # Pairs not checked yet that can only be worse are not needed (RFC 5245 §8.1.2).
        for p in [p for p in self._check_list if p.component == pair.component
                  and p.state in (CandidatePair.State.WAITING, CandidatePair.State.FROZEN)
                  and self.pair_priority(p) < priority]:
            if p.task is not None:
                p.task.cancel()
            self._check_list.remove(p)
        if current is not None and current is not pair:
            logger.info("ICE: %s nominated over %s (higher priority)", pair, current)
            self.nominated_pair(pair)

    def _keep_better_checks(self) -> None:
        # connect() cancels the check tasks it finds once the list completes, and starts no
        # more: better pairs still in progress keep running out of its reach (close() cancels
        # them), and better pairs not checked yet (an early check made a worse pair go
        # first) are checked now, as nothing else would check them.
        waiting = (CandidatePair.State.WAITING, CandidatePair.State.FROZEN)
        for p in self._check_list:
            best = self._nominated.get(p.component)
            if best is None or self.pair_priority(p) <= self.pair_priority(best):
                continue
            task = p.task
            if task is None and p.state in waiting:
                task = asyncio.create_task(self.check_start(p))
                self.check_state(p, CandidatePair.State.IN_PROGRESS)  # no second check
            if task is not None:
                self._upgrades.add(task)
                task.add_done_callback(self._upgrades.discard)
                p.task = None

    async def close(self) -> None:
        """Stop the checks and close every socket within about TURN_RELEASE_TIMEOUT.

        aioice's ``Connection.close`` closes its protocols one after the other, and a relay
        protocol's close waits for its TURN deallocation (REFRESH with LIFETIME 0, or
        MS-TURN's Allocate with LIFETIME 0), retried for up to 31.5 s when the server is
        slow or gone: four relays of a loaded call took over 5 s. Here the ``relays`` are
        taken out of aioice's list and released together, each deallocation bounded (the
        server frees an allocation it never heard about when it expires, RFC 8656 §6);
        aioice then closes the host sockets and stops its tasks."""
        upgrades = list(self._upgrades)
        for task in upgrades:
            task.cancel()
        if upgrades:
            await asyncio.wait(upgrades)
        relays, self.relays = self.relays, []
        self._protocols = [p for p in self._protocols
                           if all(p is not relay.protocol for relay in relays)]
        results = await asyncio.gather(super().close(),
                                       *(_release(r, self.label) for r in relays),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.warning("%s: close: %r", self.label, result)


class _Agent(PriorityAgent):
    def __init__(self, leg: IceLeg, stun_policy: DialectPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leg = leg
        self.stun_policy = stun_policy
        self.label = f"ICE leg {leg.host}:{leg.ports[0]}"

    def data_received(self, data: bytes, component: int) -> None:
        sink = self.leg.on_media
        if sink is not None:
            sink(data, component)

    def nominated_pair(self, pair: CandidatePair) -> None:
        self.leg.route(pair)


def _role(controlling: bool) -> str:
    return "controlling" if controlling else "controlled"


def host_candidate(host: str, port: int, component: int) -> IceCandidate:
    """A UDP host candidate on ``host:port`` with aioice's foundation and priority."""
    return IceCandidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component, transport="udp",
        priority=candidate_priority(component, "host"),
        host=host, port=port, type="host")


Gathered = tuple[IceCandidate, StunProtocol | None]


async def gathered(tasks: Sequence[asyncio.Future[Gathered]],
                   on_error: Callable[[BaseException], None]) -> list[Gathered]:
    """The srflx/relay candidates (and their protocols) that ``tasks`` gathered within
    GATHER_TIMEOUT; the rest are cancelled, a failed one is passed to ``on_error``."""
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=GATHER_TIMEOUT)
    for task in pending:
        task.cancel()
    results = []
    for task in done:
        error = task.exception()
        if error is not None:
            on_error(error)
            continue
        results.append(task.result())
    return results


def to_sdp_candidate(c: IceCandidate) -> Candidate:
    return Candidate(c.foundation, c.component, CandidateTransport.UDP, c.priority, c.host,
                     c.port, CandidateType(c.type), c.related_address, c.related_port)


def _to_ice_candidate(c: Candidate) -> IceCandidate:
    return IceCandidate(foundation=c.foundation, component=c.component, transport="udp",
                        priority=c.priority, host=c.address, port=c.port, type=c.type.value,
                        related_address=c.related_address, related_port=c.related_port)


async def turn_relay(protocol_factory: Callable[[], StunProtocol],
                     server: TurnServerSettings, local_addr: Address,
                     component: int) -> tuple[IceCandidate, Relay]:
    """A relay candidate from an RFC 8656 allocation on ``server``, its socket bound on
    ``local_addr`` (aioice's ``relayed_candidate`` binds where the OS likes and hides its
    TURN client, which ``PriorityAgent.close`` needs for a bounded deallocation)."""
    loop = asyncio.get_running_loop()
    inner_transport, inner = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(server.address, username=server.username,
                                      password=server.password,
                                      lifetime=DEFAULT_ALLOCATION_LIFETIME,
                                      channel_refresh_time=DEFAULT_CHANNEL_REFRESH_TIME),
        local_addr=local_addr, remote_addr=server.address)
    try:
        protocol = protocol_factory()
        transport = TurnTransport(inner)
        await transport._connect(protocol)
    except BaseException:
        inner_transport.close()
        raise
    relayed = transport.get_extra_info("sockname")
    related = transport.get_extra_info("related_address") or local_addr
    protocol.local_candidate = IceCandidate(
        foundation=candidate_foundation("relay", "udp", relayed[0]), component=component,
        transport="udp", priority=candidate_priority(component, "relay"),
        host=relayed[0], port=relayed[1], type="relay",
        related_address=related[0], related_port=related[1])
    # delete() closes the TURN socket however it ends, cancelled included.
    return protocol.local_candidate, Relay(protocol, inner.delete, server.address)


class IceLeg:
    """ICE toward Microsoft for one stream: host candidates on ``host``:``port``/``port+1``,
    relay candidates from TURN connections bound on ``turn_ports`` (one pair per server).

    ``controlling`` is the role until ``set_role``: controlling, as a leg can only get checks
    before its offer/answer is applied when we made the offer (see the module docstring)."""

    def __init__(self, host: str, port: int, settings: IceSettings, *, ufrag: str, pwd: str,
                 turn_ports: Sequence[int] = (), controlling: bool = True) -> None:
        self.host = host
        self.ports = (port, port + 1)
        self.settings = settings
        self.turn_ports = tuple(turn_ports)
        self.networks = _networks(settings.allowed_networks)
        self.stun_policy = dialect_policy(f"ICE leg {host}:{port}", settings.stun_dialect)
        """Which STUN dialect the peer speaks (``stun_policy.peer`` once known)."""
        self.agent = _Agent(self, self.stun_policy, ice_controlling=controlling,
                            components=2, local_username=ufrag, local_password=pwd)
        self.on_media: Callable[[bytes, int], None] | None = None
        """Called with (packet, component) for every RTP/RTCP packet received."""
        self.destinations: set[Address] = set()
        """Every address this leg sent a STUN message to (media follows the same pairs)."""
        self.refused: set[Address] = set()
        """Destinations the guard refused (outside ``allowed_networks``)."""
        self.connected = False
        self.selected_type: str | None = None
        self.on_route: Callable[[int], None] | None = None
        """Called with the component whose media pair changed (connected, or upgraded)."""
        self._routes: dict[int, tuple[Any, Address]] = {}

    @property
    def controlling(self) -> bool:
        """The agent's role now (a role conflict repaired during the checks may change it)."""
        return bool(self.agent.ice_controlling)

    def set_role(self, controlling: bool) -> None:
        """Take the role from the offer/answer (the offerer controls, RFC 8445 §6.1.1).
        Call it before our answer leaves, so no check is ever answered in the wrong role."""
        if self.agent._check_list or self.agent._early_checks:
            # Checks already ran or were answered: the role they used (or a repaired
            # conflict) stands, changing it now would start a conflict of our own.
            if controlling != self.controlling:
                logger.warning("ICE leg %s:%d: checks already answered as %s; keeping that "
                               "role", self.host, self.ports[0], _role(self.controlling))
            return
        self.agent.ice_controlling = controlling

    @property
    def ufrag(self) -> str:
        return self.agent.local_username

    @property
    def pwd(self) -> str:
        return self.agent.local_password

    def guard(self, addr: Address) -> bool:
        if address_allowed(addr[0], self.networks):
            self.destinations.add((addr[0], addr[1]))
            return True
        if addr not in self.refused:
            logger.warning("ICE leg %s:%d: refusing to send to %s:%d (not in %s)",
                           self.host, self.ports[0], addr[0], addr[1],
                           ",".join(self.settings.allowed_networks))
        self.refused.add((addr[0], addr[1]))
        return False

    # -- gathering ---------------------------------------------------------------------------

    async def gather(self, transports: Sequence[RelayTransport] = ()) -> None:
        """Bind host candidates (OSError if a port is taken: nothing stays bound), then add
        srflx and relay candidates; a STUN/TURN server that does not answer is logged and
        skipped. ``transports`` (components 1 and 2): the host sockets are the relay's
        (``media.ice_adapter``), already bound; none: this leg binds its own."""
        agent = self.agent
        loop = asyncio.get_running_loop()
        candidates: list[IceCandidate] = []
        hosts: list[_Protocol] = []
        try:
            for component, port in ((1, self.ports[0]), (2, self.ports[1])):
                if transports:
                    proto = _Protocol(agent)
                    transports[component - 1].attach(proto)
                else:
                    _, proto = await loop.create_datagram_endpoint(
                        lambda: _Protocol(agent), local_addr=(self.host, port),
                        family=socket.AF_INET6 if ":" in self.host else socket.AF_INET)
                proto.local_candidate = host_candidate(self.host, port, component)
                hosts.append(proto)
                candidates.append(proto.local_candidate)
        except OSError:
            for proto in hosts:
                await proto.close()
            raise
        agent._protocols += hosts
        tasks: list[asyncio.Task[tuple[IceCandidate, StunProtocol | None]]] = []
        stun_server = self.settings.stun_server
        if stun_server is not None and self.guard(stun_server):
            tasks += [asyncio.ensure_future(server_reflexive_candidate(p, stun_server))
                      for p in hosts if ":" not in self.host]
        for server, base in zip(self.settings.turn_servers, self.turn_ports, strict=False):
            if self.guard(server.address):
                tasks += [asyncio.ensure_future(self._relayed(server, c, base + c - 1))
                          for c in (1, 2)]
        def failed(error: BaseException) -> None:
            logger.warning("ICE leg %s:%d: candidate gathering failed: %r", self.host,
                           self.ports[0], error)

        for candidate, protocol in await gathered(tasks, failed):
            candidates.append(candidate)
            if protocol is not None:
                agent._protocols.append(protocol)
        agent._local_candidates = candidates
        agent._local_candidates_start = True
        agent._local_candidates_end = True

    async def _relayed(self, server: TurnServerSettings, component: int,
                       local_port: int) -> tuple[IceCandidate, StunProtocol]:
        # aioice's create_turn_endpoint binds an ephemeral port: bind the pool port instead.
        candidate, relay = await turn_relay(lambda: _Protocol(self.agent), server,
                                            (self.host, local_port), component)
        self.agent.relays.append(relay)
        return candidate, relay.protocol

    @property
    def local_candidates(self) -> tuple[Candidate, ...]:
        return tuple(to_sdp_candidate(c) for c in self.agent.local_candidates)

    # -- checks ------------------------------------------------------------------------------

    async def connect(self, ufrag: str, pwd: str, candidates: Iterable[Candidate], *,
                      controlling: bool | None = None) -> None:
        """Run the connectivity checks; raises ``ConnectionError`` (or ``TimeoutError``) when
        they fail. Only UDP candidates inside ``allowed_networks`` are used. ``controlling``
        (when given) is passed to ``set_role``; None keeps the role already set."""
        agent = self.agent
        if controlling is not None:
            self.set_role(controlling)
        agent.remote_username = ufrag
        agent.remote_password = pwd
        for c in candidates:
            if c.transport is not CandidateTransport.UDP or c.component not in (1, 2):
                continue
            if not address_allowed(c.address, self.networks):
                logger.info("ICE leg %s:%d: ignoring remote candidate %s:%d (not in %s)",
                            self.host, self.ports[0], c.address, c.port,
                            ",".join(self.settings.allowed_networks))
                continue
            await agent.add_remote_candidate(_to_ice_candidate(c))
        await agent.add_remote_candidate(None)
        await asyncio.wait_for(agent.connect(), self.settings.connect_timeout)
        self.connected = True
        for pair in agent._nominated.values():
            self.route(pair)

    def route(self, pair: CandidatePair) -> None:
        """Send ``pair.component``'s media on ``pair`` (the nominated pair, or a better one
        nominated after the checks completed)."""
        if not self.connected:
            return  # connect() takes the nominated pairs when the checks complete
        self._routes[pair.component] = (pair.protocol.transport, pair.remote_addr)
        if pair.component == 1:
            self.selected_type = pair.local_candidate.type
        if self.on_route is not None:
            self.on_route(pair.component)

    def route_of(self, component: int) -> tuple[Address, bool] | None:
        """The media pair of ``component``: its remote address, and whether it leaves from
        a host socket of the relay (False: a TURN allocation's socket, aioice's); None
        before ICE completes."""
        route = self._routes.get(component)
        if route is None:
            return None
        return (route[1][0], route[1][1]), isinstance(route[0], RelayTransport)

    @property
    def remote_rtp(self) -> Address | None:
        route = self._routes.get(1)
        return route[1] if route is not None else None

    def send(self, data: bytes, component: int) -> bool:
        """Send on the nominated pair of ``component``; False before ICE completes."""
        route = self._routes.get(component)
        if route is None:
            return False
        route[0].sendto(data, route[1])
        return True

    async def close(self) -> None:
        """Stop the checks and close every socket, within about TURN_RELEASE_TIMEOUT
        (``PriorityAgent.close``)."""
        self._routes.clear()
        self.connected = False
        await self.agent.close()


async def _release(relay: Relay, label: str) -> None:
    try:
        await asyncio.wait_for(relay.release(), TURN_RELEASE_TIMEOUT)
    except TimeoutError:
        logger.info("%s: TURN server %s:%d did not confirm the deallocation within %.1f s",
                    label, *relay.server, TURN_RELEASE_TIMEOUT)
    finally:
        # Nothing is left to delete: this stops the transport's pending sends and waits for
        # the socket's connection_lost.
        await relay.protocol.close()
