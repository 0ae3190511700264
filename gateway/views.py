"""The view types: what ``/status``, the operator page and the CLI show, as frozen dataclasses.

Nothing here touches a socket or a clock: every time is a number the caller passes in. The
JSON these views produce is documented in ``gateway.status`` (the source that fills them);
call control (``gateway.calls``) and the runtime build them, the management server serves
them.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from media.counters import LegCounters
from media.port_pool import PortPool
from sip.transport import TransportCounters

__all__ = [
    "ALIVE",
    "ZONE_ACTIVE",
    "CallView",
    "Capacity",
    "GatewayStatus",
    "Health",
    "LegSide",
    "LegView",
    "PeerView",
    "PortPoolView",
    "SideStatus",
    "StreamCountersView",
    "SystemView",
    "TransportCountersView",
    "streams_of",
    "TurnServerView",
    "ZoneStatusView",
]

ALIVE = "Alive"
"""What the product's status pages show for a working side or TURN server."""
ZONE_ACTIVE = "Active"
"""What the product's zone page shows for a zone (or zone peer) that answers."""

Json = dict[str, Any]


def running_tasks() -> int:
    """asyncio tasks alive in the running loop (0 outside one)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


@dataclass(frozen=True, slots=True)
class Health:
    """Up, or the reason why not."""

    alive: bool
    """True when the thing answers (TLS up and OPTIONS answered, TURN allocation granted...)."""
    reason: str | None = None
    """Why it is not alive; None when alive."""

    def __post_init__(self) -> None:
        if self.alive and self.reason is not None:
            raise ValueError("a live component has no failure reason")
        if not self.alive and not self.reason:
            raise ValueError("a failed component needs a reason")

    @classmethod
    def up(cls) -> Health:
        return cls(True)

    @classmethod
    def down(cls, reason: str) -> Health:
        return cls(False, reason)

    def text(self, alive_word: str = ALIVE) -> str:
        """``alive_word`` when alive, else the reason."""
        return alive_word if self.alive else str(self.reason)


class LegSide(enum.Enum):
    """Which network a call leg faces."""

    MICROSOFT = "microsoft"
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class SystemView:
    """The gateway itself."""

    host_name: str
    """``[system] host_name``."""
    domain: str
    """``[system] domain``."""
    cluster_fqdn: str
    """``[system] cluster_fqdn``."""
    started_at: float
    """When the gateway started (the runtime's clock)."""
    version: str = ""
    """Software version string."""
    draining: bool = False
    """True after SIGTERM: new INVITEs get 503 while active calls drain."""

    def to_json(self, now: float) -> Json:
        return {
            "host_name": self.host_name,
            "domain": self.domain,
            "cluster_fqdn": self.cluster_fqdn,
            "version": self.version,
            "started_at": self.started_at,
            "uptime": _age(now, self.started_at),
            "draining": self.draining,
        }


@dataclass(frozen=True, slots=True)
class SideStatus:
    """The Microsoft side (FE destination) or the video side (its listeners)."""

    name: str
    """``"Microsoft"`` or ``"Video"`` (free text, shown as is)."""
    address: str
    """The Microsoft destination (``tls:127.0.1.1:5061``) or the video listeners."""
    health: Health
    """Alive, or why not."""

    def to_json(self) -> Json:
        return {
            "name": self.name,
            "address": self.address,
            "alive": self.health.alive,
            "status": self.health.text(),
        }


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer address of a neighbor zone, as its OPTIONS monitor sees it."""

    address: str
    """``host:port`` of the peer."""
    health: Health
    """Answering OPTIONS, or the failure."""

    def to_json(self) -> Json:
        return {
            "address": self.address,
            "alive": self.health.alive,
            "status": self.health.text(ZONE_ACTIVE),
        }


@dataclass(frozen=True, slots=True)
class ZoneStatusView:
    """A zone: the auto-created Microsoft zone or a neighbor zone."""

    name: str
    """Zone name, e.g. ``"CUCM Neighbor"``."""
    type: str
    """``"neighbor"``, ``"microsoft"``..."""
    health: Health
    """Active when at least one peer answers (the runtime decides), else why not."""
    peers: tuple[PeerView, ...] = ()
    """Per-peer monitor results (1 to 6 for a neighbor zone)."""

    def to_json(self) -> Json:
        return {
            "name": self.name,
            "type": self.type,
            "alive": self.health.alive,
            "status": self.health.text(ZONE_ACTIVE),
            "peers": [p.to_json() for p in self.peers],
        }


@dataclass(frozen=True, slots=True)
class StreamCountersView:
    """Media counters of one stream (m= line) on one leg."""

    kind: str
    """``"audio"``, ``"video"``, ``"applicationsharing"``..."""
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    last_packet_at: float | None = None
    """When the last packet was received on this leg (None: nothing yet, "Connecting...")."""

    @classmethod
    def from_leg(cls, kind: str, counters: LegCounters) -> StreamCountersView:
        """A snapshot of the media core's live counters of one leg."""
        return cls(kind, counters.packets_in, counters.packets_out, counters.bytes_in,
                   counters.bytes_out, counters.last_in)

    def to_json(self, now: float) -> Json:
        return {
            "kind": self.kind,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "last_packet_at": self.last_packet_at,
            "idle": _age(now, self.last_packet_at),
        }


@dataclass(frozen=True, slots=True)
class LegView:
    """One of the two dialogs of a B2BUA call."""

    side: LegSide
    """Which network the leg faces."""
    call_id: str
    """The leg's own Call-ID (the two legs of a B2BUA call have different ones)."""
    remote: str
    """The far end: its transport address, e.g. ``tls:127.0.1.1:5061``."""
    dialog_state: str
    """``early``, ``confirmed``, ``terminated``... as the dialog layer names it."""
    media: tuple[StreamCountersView, ...] = ()
    """One entry per stream, in m= line order."""

    def to_json(self, now: float) -> Json:
        return {
            "side": self.side.value,
            "call_id": self.call_id,
            "remote": self.remote,
            "dialog_state": self.dialog_state,
            "media": [m.to_json(now) for m in self.media],
        }


@dataclass(frozen=True, slots=True)
class CallView:
    """An active call."""

    call_id: str
    """The call's id (the inbound leg's Call-ID)."""
    state: str
    """The call controller's state (``trying``, ``ringing``, ``connected``...)."""
    started_at: float
    """When the first INVITE arrived (the runtime's clock)."""
    legs: tuple[LegView, ...] = ()
    """Inbound leg first."""

    def to_json(self, now: float) -> Json:
        return {
            "call_id": self.call_id,
            "state": self.state,
            "started_at": self.started_at,
            "duration": _age(now, self.started_at),
            "legs": [leg.to_json(now) for leg in self.legs],
        }


@dataclass(frozen=True, slots=True)
class PortPoolView:
    """Use of the shared media port pool."""

    first: int
    """Lowest port of the range."""
    last: int
    """Highest port of the range."""
    total: int
    """Ports the pool can hand out (whole even/odd pairs)."""
    in_use: int
    free: int
    calls_refused: int
    """Allocations refused because the pool was short."""
    bound: int = 0
    """Ports with a socket open now (media and TURN client ports)."""
    held_back: int = 0
    """Releases refused because the lease's sockets were still open."""
    turn_total: int = 0
    """Ports of the TURN client range (0: TURN ports come from the media range)."""
    turn_in_use: int = 0
    """TURN client range ports held."""

    @classmethod
    def from_pool(cls, pool: PortPool) -> PortPoolView:
        """A snapshot of the media core's pool."""
        return cls(pool.settings.first_port, pool.settings.last_port, pool.total_ports,
                   pool.ports_in_use, pool.ports_free, pool.calls_refused, pool.bound_ports,
                   pool.held_back, pool.turn_ports, pool.turn_ports_in_use)

    def to_json(self) -> Json:
        return {
            "first": self.first,
            "last": self.last,
            "total": self.total,
            "in_use": self.in_use,
            "free": self.free,
            "calls_refused": self.calls_refused,
            "bound": self.bound,
            "held_back": self.held_back,
            "turn_total": self.turn_total,
            "turn_in_use": self.turn_in_use,
        }


@dataclass(frozen=True, slots=True)
class TurnServerView:
    """A configured TURN server and the gateway's allocations on it."""

    address: str
    port: int
    health: Health
    """Alive when the last Allocate succeeded, else why not (401, timeout...)."""
    allocations: int = 0
    """Allocations the gateway currently holds there."""

    def to_json(self) -> Json:
        return {
            "address": self.address,
            "port": self.port,
            "alive": self.health.alive,
            "status": self.health.text(),
            "allocations": self.allocations,
        }


@dataclass(frozen=True, slots=True)
class Capacity:
    """Calls in progress against the ``max_calls`` limit."""

    active: int
    max: int

    def to_json(self) -> Json:
        return {"active": self.active, "max": self.max}


@dataclass(frozen=True, slots=True)
class TransportCountersView:
    """What one side's transport limits did since start: a copy of its ``TransportCounters``
    (reused, not restated, so a counter added there shows here without a second list)."""

    side: LegSide
    """The stack's side."""
    counters: TransportCounters = field(default_factory=TransportCounters)
    """The snapshot: a copy made by ``from_counters``, never the stack's live object."""

    @classmethod
    def from_counters(cls, side: LegSide, counters: TransportCounters) -> TransportCountersView:
        """A snapshot of a ``TransportManager``'s live counters."""
        return cls(side, replace(counters))

    def to_json(self) -> Json:
        return asdict(self.counters)


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """Everything ``/status`` shows, at one instant."""

    generated_at: float
    """The instant of the snapshot (the runtime's clock); ages in the JSON are against it."""
    system: SystemView
    microsoft_side: SideStatus
    video_side: SideStatus
    zones: tuple[ZoneStatusView, ...]
    calls: tuple[CallView, ...]
    port_pool: PortPoolView
    turn_servers: tuple[TurnServerView, ...]
    capacity: Capacity
    tasks: int = field(default_factory=running_tasks)
    """asyncio tasks alive in the running loop when the snapshot was made."""
    transport: tuple[TransportCountersView, ...] = ()
    """Each side's transport limit counters."""

    def to_json(self) -> Json:
        """A JSON-ready dict (only str/int/float/bool/None/list/dict); shape in the module doc."""
        now = self.generated_at
        return {
            "generated_at": now,
            "system": self.system.to_json(now),
            "microsoft_side": self.microsoft_side.to_json(),
            "video_side": self.video_side.to_json(),
            "zones": [z.to_json() for z in self.zones],
            "calls": [c.to_json(now) for c in self.calls],
            "port_pool": self.port_pool.to_json(),
            "turn_servers": [t.to_json() for t in self.turn_servers],
            "capacity": self.capacity.to_json(),
            "tasks": self.tasks,
            "transport": {t.side.value: t.to_json() for t in self.transport},
        }

    @property
    def healthy(self) -> bool:
        """What ``/healthz`` reports: the gateway takes new calls (it is not draining).

        A dead Microsoft side or zone is not ill health of the gateway: that is what
        ``/status`` is for, and restarting the gateway would not fix it."""
        return not self.system.draining


def streams_of(kinds_and_counters: Iterable[tuple[str, LegCounters]]) -> tuple[
        StreamCountersView, ...]:
    """Snapshots of several legs' counters: ``[(kind, LegCounters), ...]`` -> views."""
    return tuple(StreamCountersView.from_leg(kind, c) for kind, c in kinds_and_counters)
