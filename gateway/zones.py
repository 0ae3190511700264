"""Zones and their OPTIONS monitor (sans-IO, time passed in).

A zone is where search rules send requests: the automatic zone "To Microsoft
destination via B2BUA" (the configured Microsoft destination) and the ``[[zones]]``
neighbor zones (Unified CM ...). A monitored zone's peers are probed with OPTIONS every
``monitor_interval`` seconds; the zone is Active while any peer answered its last probe
(any final response counts: a 404 still proves the peer is up), otherwise it shows the
failure reason. The asyncio side asks :meth:`ZoneMonitor.due` what to send, re-arms one
timer at :meth:`ZoneMonitor.get_timer`, and reports each outcome.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import MICROSOFT_ZONE, GatewayConfig, ZoneConfig
from gateway.routing import MICROSOFT_ZONE_HOP_COUNT
from sip.transport import TransportAddress

__all__ = [
    "DEFAULT_MONITOR_INTERVAL",
    "FailureKind",
    "PeerState",
    "PeerStatus",
    "Probe",
    "Zone",
    "ZoneKind",
    "ZoneMonitor",
    "ZoneMonitors",
    "ZoneState",
    "ZoneStatus",
    "failure_reason",
    "zones_from_config",
]

logger = logging.getLogger(__name__)

DEFAULT_MONITOR_INTERVAL = 30.0
"""Seconds between OPTIONS probes of a peer."""


class ZoneKind(enum.Enum):
    """Automatic Microsoft zone or configured neighbor zone."""

    MICROSOFT = "microsoft"
    NEIGHBOR = "neighbor"


@dataclass(frozen=True, slots=True)
class Zone:
    """A routing destination and how it is monitored."""

    name: str
    """Zone name as search rules target it."""
    kind: ZoneKind
    """Microsoft or neighbor."""
    destinations: tuple[TransportAddress, ...]
    """One address per peer."""
    hop_count: int
    """Max-Forwards ceiling for requests into the zone."""
    monitor: bool = True
    """Probe the peers with OPTIONS."""
    monitor_interval: float = DEFAULT_MONITOR_INTERVAL
    """Seconds between probes of each peer."""

    @classmethod
    def from_config(cls, config: ZoneConfig) -> Zone:
        """A neighbor zone from its ``[[zones]]`` entry."""
        return cls(
            config.name,
            ZoneKind.NEIGHBOR,
            config.destinations(),
            config.hop_count,
            config.monitor,
            config.monitor_interval,
        )


def zones_from_config(config: GatewayConfig) -> dict[str, Zone]:
    """Every zone by name: the Microsoft zone first, then ``[[zones]]`` in file order."""
    zones = {
        MICROSOFT_ZONE: Zone(
            MICROSOFT_ZONE,
            ZoneKind.MICROSOFT,
            (config.b2bua.ms_destination,),
            MICROSOFT_ZONE_HOP_COUNT,
        )
    }
    for zone in config.zones:
        zones[zone.name] = Zone.from_config(zone)
    return zones


class FailureKind(enum.Enum):
    """Why a probe failed."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    TLS = "tls"
    ERROR = "error"


def failure_reason(kind: FailureKind, peer: TransportAddress, detail: str = "") -> str:
    """The reason text the status page shows for a failed probe."""
    if kind is FailureKind.TIMEOUT:
        return f"No response from {peer.host}:{peer.port} (timeout)"
    if kind is FailureKind.REFUSED:
        return f"Connection refused by {peer.host}:{peer.port}"
    if kind is FailureKind.TLS:
        return f"TLS negotiation failure: {detail or 'unknown reason'}"
    return detail or f"Connection to {peer.host}:{peer.port} failed"


class PeerState(enum.Enum):
    """Outcome of a peer's latest probe."""

    UNKNOWN = "Checking"
    ALIVE = "Alive"
    FAILED = "Failed"


class ZoneState(enum.Enum):
    """What the status page shows for a zone."""

    CHECKING = "Checking"
    """No probe has completed yet."""
    ACTIVE = "Active"
    """At least one peer answered its latest probe."""
    FAILED = "Failed"
    """Every peer failed its latest probe (see the reason)."""
    NOT_MONITORED = "Not monitored"
    """Monitoring is off for the zone."""


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer's latest probe outcome."""

    peer: TransportAddress
    """The peer."""
    state: PeerState
    """Alive, failed or not yet known."""
    reason: str | None = None
    """Failure reason when failed."""
    last_status: int | None = None
    """Status code of the latest answer."""
    since: float | None = None
    """Time of the latest outcome."""


@dataclass(frozen=True, slots=True)
class ZoneStatus:
    """A zone's state for /status."""

    zone: str
    """Zone name."""
    state: ZoneState
    """Active, failed, checking or not monitored."""
    reason: str | None
    """Failure reason(s) when failed."""
    peers: tuple[PeerStatus, ...]
    """Per-peer detail."""

    @property
    def active(self) -> bool:
        return self.state is ZoneState.ACTIVE

    def describe(self) -> str:
        """``Active`` or the failure reason."""
        if self.state is ZoneState.FAILED and self.reason:
            return self.reason
        return self.state.value


@dataclass(frozen=True, slots=True)
class Probe:
    """An OPTIONS to send now."""

    zone: str
    """Zone the peer belongs to."""
    peer: TransportAddress
    """Where to send it."""


class ZoneMonitor:
    """OPTIONS schedule and Active/failed state of one zone's peers."""

    def __init__(
        self,
        zone: Zone,
        now: float,
        *,
        interval: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self.zone = zone
        self.interval = zone.monitor_interval if interval is None else interval
        if self.interval <= 0:
            raise ValueError("monitor interval must be positive")
        # An unanswered probe counts as a timeout when the next one is due.
        self.timeout = self.interval if timeout is None else timeout
        self._next_due: dict[TransportAddress, float] = {peer: now for peer in zone.destinations}
        self._pending: dict[TransportAddress, float] = {}
        self._peers: dict[TransportAddress, PeerStatus] = {
            peer: PeerStatus(peer, PeerState.UNKNOWN) for peer in zone.destinations
        }
        self._last_state = ZoneState.CHECKING

    def due(self, now: float) -> list[TransportAddress]:
        """Peers to send an OPTIONS to now; expires unanswered probes first."""
        for peer, sent in list(self._pending.items()):
            if now >= sent + self.timeout:
                reason = failure_reason(FailureKind.TIMEOUT, peer)
                self._record(peer, PeerStatus(peer, PeerState.FAILED, reason, None, now))
        send = []
        for peer, when in self._next_due.items():
            if now >= when and peer not in self._pending:
                self._pending[peer] = now
                self._next_due[peer] = now + self.interval
                send.append(peer)
        return send

    def get_timer(self) -> float | None:
        """When :meth:`due` next has something to do."""
        times = [when for peer, when in self._next_due.items() if peer not in self._pending]
        times += [sent + self.timeout for sent in self._pending.values()]
        return min(times) if times else None

    def on_response(self, peer: TransportAddress, status: int, now: float) -> None:
        """A response to a probe; any final one proves the peer is up."""
        self._check_peer(peer)
        if status < 200:
            return
        self._pending.pop(peer, None)
        self._record(peer, PeerStatus(peer, PeerState.ALIVE, None, status, now))

    def on_failure(self, peer: TransportAddress, reason: str, now: float) -> None:
        """A probe that failed (timeout, connection refused, TLS failure ...)."""
        self._check_peer(peer)
        self._pending.pop(peer, None)
        self._record(peer, PeerStatus(peer, PeerState.FAILED, reason, None, now))

    def status(self) -> ZoneStatus:
        """Active when any peer is alive, failed when all failed, else checking."""
        peers = tuple(self._peers.values())
        states = {p.state for p in peers}
        if PeerState.ALIVE in states:
            return ZoneStatus(self.zone.name, ZoneState.ACTIVE, None, peers)
        if states == {PeerState.FAILED}:
            reasons = list(dict.fromkeys(p.reason or "failed" for p in peers))
            return ZoneStatus(self.zone.name, ZoneState.FAILED, "; ".join(reasons), peers)
        return ZoneStatus(self.zone.name, ZoneState.CHECKING, None, peers)

    def _check_peer(self, peer: TransportAddress) -> None:
        if peer not in self._peers:
            raise ValueError(f"{peer} is not a peer of zone {self.zone.name!r}")

    def _record(self, peer: TransportAddress, outcome: PeerStatus) -> None:
        self._pending.pop(peer, None)
        self._peers[peer] = outcome
        status = self.status()
        if status.state is not self._last_state:
            log = logger.warning if status.state is ZoneState.FAILED else logger.info
            log("zone %r: %s", self.zone.name, status.describe())
            self._last_state = status.state


class ZoneMonitors:
    """The monitors of several zones behind one timer."""

    def __init__(
        self,
        zones: Iterable[Zone],
        now: float,
        *,
        interval: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self._zones = {zone.name: zone for zone in zones}
        self._monitors = {
            zone.name: ZoneMonitor(zone, now, interval=interval, timeout=timeout)
            for zone in self._zones.values()
            if zone.monitor
        }

    def due(self, now: float) -> list[Probe]:
        """Every OPTIONS to send now."""
        return [
            Probe(name, peer)
            for name, monitor in self._monitors.items()
            for peer in monitor.due(now)
        ]

    def get_timer(self) -> float | None:
        """Earliest time any monitor needs :meth:`due` called."""
        times = [t for m in self._monitors.values() if (t := m.get_timer()) is not None]
        return min(times) if times else None

    def on_response(self, zone: str, peer: TransportAddress, status: int, now: float) -> None:
        self._monitors[zone].on_response(peer, status, now)

    def on_failure(self, zone: str, peer: TransportAddress, reason: str, now: float) -> None:
        self._monitors[zone].on_failure(peer, reason, now)

    def status(self, zone: str) -> ZoneStatus:
        """One zone's status (not monitored zones say so)."""
        monitor = self._monitors.get(zone)
        if monitor is not None:
            return monitor.status()
        peers = tuple(
            PeerStatus(peer, PeerState.UNKNOWN) for peer in self._zones[zone].destinations
        )
        return ZoneStatus(zone, ZoneState.NOT_MONITORED, None, peers)

    def statuses(self) -> dict[str, ZoneStatus]:
        """Every zone's status, by name."""
        return {name: self.status(name) for name in self._zones}
