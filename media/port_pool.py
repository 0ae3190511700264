"""The media port pool (sans-IO: it hands out numbers, the relay engine binds the sockets).

Documented units (SPEC §3): 8 ports for an audio+video call (RTP+RTCP for audio and video on
each of the two legs), 10 more for a call that shares a screen, 2 per connection to a TURN
server. Ports go out as pairs, RTP on the even port and RTCP on the odd one above it. A call
takes one ``STREAM`` unit (4 ports) per relayed stream, so an audio-only call holds 4 and an
audio+video call 8 (the documented unit, in two leases when video is added later).

TURN connections (the choice made here): the SPEC's default pool is exactly 80 AV calls + 20
sharing calls = 1000 ports, with no room left for TURN client ports, so they are counted apart
from the media range: ``PortPoolSettings.turn_first_port``/``turn_last_port`` give them their
own range (the gateway's ``b2bua.turn_client_ports``), and the 1000 media ports then serve
125 audio+video calls (100 is the B2BUA's limit) whatever the number of TURN servers. Without
a TURN range they come from the media range, as before (12 ports per audio+video call with
one TURN server: 83 calls in 1000 ports). The TURN client sockets are separate sockets
because ``media.ice_leg`` allocates relays from sockets of their own; allocating from the
host candidate's socket (RFC 8445 §5.1.1.2) would make them cost no port at all.

A lease goes back only when its sockets are closed: the holder passes a probe (how many of
its ports are still bound) and ``release`` keeps a lease whose probe is not zero, so a port
the relay engine failed to close is never handed to the next call; ``bound_ports`` sums the
probes for /status.

The pool keeps a FIFO of free pairs: taking or returning a pair is O(1), so a call's
allocation and release are O(its units). FIFO order also delays reuse of a just-freed port,
which keeps stray packets of an ended call away from the next one.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sip.errors import ProtocolError

__all__ = ["PortLease", "PortPool", "PortPoolExhausted", "PortPoolSettings", "PortUnit"]

logger = logging.getLogger(__name__)

EXHAUSTED_WARNING = "Media port pool exhausted"


class PortUnit(enum.IntEnum):
    """What a call asks for; the value is the number of ports (always even)."""

    STREAM = 4
    """One relayed stream (audio or video): RTP+RTCP on the Microsoft and the video leg."""
    AUDIO_VIDEO = 8
    SCREEN_SHARE = 10
    TURN_CONNECTION = 2


@dataclass(frozen=True, slots=True)
class PortPoolSettings:
    """The pool's configuration."""

    first_port: int = 56000
    """Lowest port of the range (inclusive)."""
    last_port: int = 57000
    """Highest port of the range (inclusive). 56000-57000 holds 500 pairs = 1000 ports."""
    turn_first_port: int | None = None
    """Lowest port of the TURN client ports' own range; None: TURN ports come from the media
    range."""
    turn_last_port: int | None = None
    """Highest port of the TURN client ports' range (inclusive)."""

    def __post_init__(self) -> None:
        _check_range("media", self.first_port, self.last_port)
        if (self.turn_first_port is None) != (self.turn_last_port is None):
            raise ValueError("TURN port range needs both its first and its last port")
        if self.turn_first_port is not None and self.turn_last_port is not None:
            _check_range("TURN client", self.turn_first_port, self.turn_last_port)
            if (self.turn_first_port <= self.last_port
                    and self.first_port <= self.turn_last_port):
                raise ValueError(f"TURN client port range {self.turn_first_port}-"
                                 f"{self.turn_last_port} overlaps the media port range "
                                 f"{self.first_port}-{self.last_port}")


def _check_range(what: str, first: int, last: int) -> None:
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"bad {what} port range {first}-{last}")
    if first % 2 and first + 1 >= last:
        raise ValueError(f"{what} port range holds no even/odd pair")


def _pairs(first: int, last: int) -> deque[int]:
    return deque(range(first + first % 2, last, 2))


class PortPoolExhausted(ProtocolError):
    """The pool cannot serve a call: refuse it cleanly (503 Service Unavailable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


@dataclass(frozen=True, slots=True)
class PortLease:
    """The ports one allocation holds. Give it back with ``PortPool.release``."""

    lease_id: int
    owner: str
    """Who holds it (a Call-ID), for logs and status."""
    units: tuple[PortUnit, ...]
    pairs: tuple[int, ...]
    """RTP ports (even); each one's RTCP port is ``rtp + 1``."""

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for rtp in self.pairs for p in (rtp, rtp + 1))

    def pairs_for(self, index: int) -> tuple[int, ...]:
        """The pairs of ``units[index]``, in order."""
        start = sum(self.units[:index]) // 2
        return self.pairs[start:start + self.units[index] // 2]


BoundProbe = Callable[[], int]
"""How many of a lease's ports still have a socket bound (asked by ``release`` and status)."""


class PortPool:
    """Hands out even/odd port pairs in documented units; counts use and refusals."""

    def __init__(self, settings: PortPoolSettings | None = None) -> None:
        self.settings = settings = settings or PortPoolSettings()
        self._free = _pairs(settings.first_port, settings.last_port)
        self._turn_free = self._free
        if settings.turn_first_port is not None and settings.turn_last_port is not None:
            self._turn_free = _pairs(settings.turn_first_port, settings.turn_last_port)
        self.total_ports = 2 * len(self._free)
        """Ports of the media range."""
        self.turn_ports = 2 * len(self._turn_free) if self._turn_free is not self._free else 0
        """Ports of the TURN client range (0: TURN ports come from the media range)."""
        self._leases: dict[int, PortLease] = {}
        self._probes: dict[int, BoundProbe] = {}
        self._held: dict[int, PortLease] = {}
        """Leases whose release was refused (sockets still open): freed once they close."""
        self._ids = itertools.count(1)
        self.calls_refused = 0
        """Allocations refused because the pool was short (a counter for status/metrics)."""
        self.held_back = 0
        """Releases refused because sockets were still bound on the lease's ports."""

    @property
    def ports_in_use(self) -> int:
        """Media range ports held by leases."""
        return self.total_ports - self.ports_free

    @property
    def ports_free(self) -> int:
        return 2 * len(self._free)

    @property
    def turn_ports_in_use(self) -> int:
        """TURN range ports held by leases (0 without a TURN range)."""
        if self._turn_free is self._free:
            return 0
        return self.turn_ports - 2 * len(self._turn_free)

    @property
    def bound_ports(self) -> int:
        """Ports of held leases with a socket open now (not reservations), from the probes."""
        return sum(probe() for probe in self._probes.values())

    @property
    def leases(self) -> tuple[PortLease, ...]:
        return tuple(self._leases.values())

    def allocate(self, owner: str, units: Iterable[PortUnit], *,
                 probe: BoundProbe | None = None) -> PortLease:
        """Take all the ports ``units`` need, or none: raises ``PortPoolExhausted`` (and logs
        the warning "Media port pool exhausted") when the pool is short. ``probe`` tells
        how many of the lease's ports are bound (``release`` asks it)."""
        wanted = tuple(PortUnit(u) for u in units)
        if not wanted:
            raise ValueError("an allocation needs at least one unit")
        if self._held:
            self.reclaim()
        turn_pairs = sum(u for u in wanted if u is PortUnit.TURN_CONNECTION) // 2
        media_pairs = sum(wanted) // 2 - turn_pairs
        if self._turn_free is self._free:
            short = media_pairs + turn_pairs > len(self._free)
        else:
            short = media_pairs > len(self._free) or turn_pairs > len(self._turn_free)
        if short:
            self.calls_refused += 1
            needed = 2 * (media_pairs + turn_pairs)
            logger.warning("%s: %s needs %d ports, %d free", EXHAUSTED_WARNING, owner,
                           needed, self.ports_free)
            free = self.ports_free + 2 * len(self._turn_free) * (self._turn_free is not self._free)
            raise PortPoolExhausted(f"{EXHAUSTED_WARNING}: {needed} ports needed, {free} free")
        pairs = []
        for unit in wanted:
            source = self._turn_free if unit is PortUnit.TURN_CONNECTION else self._free
            pairs += [source.popleft() for _ in range(unit // 2)]
        lease = PortLease(next(self._ids), owner, wanted, tuple(pairs))
        self._leases[lease.lease_id] = lease
        if probe is not None:
            self._probes[lease.lease_id] = probe
        return lease

    def release(self, lease: PortLease) -> bool:
        """Return a lease's ports; False (the lease stays held, a warning is logged) while
        its probe says sockets are still bound. Releasing a lease twice (or a stranger's) is
        an error."""
        held = self._leases.get(lease.lease_id)
        if held is None or held != lease:
            raise ValueError(f"lease {lease.lease_id} of {lease.owner} is not held")
        probe = self._probes.get(lease.lease_id)
        bound = probe() if probe is not None else 0
        if bound:
            if lease.lease_id not in self._held:
                self.held_back += 1
                self._held[lease.lease_id] = lease
                logger.warning("%s: %d ports still bound: lease %d kept out of the pool until "
                               "they close", lease.owner, bound, lease.lease_id)
            return False
        del self._leases[lease.lease_id]
        self._held.pop(lease.lease_id, None)
        self._probes.pop(lease.lease_id, None)
        for unit, start in zip(lease.units, _starts(lease.units), strict=True):
            target = self._turn_free if unit is PortUnit.TURN_CONNECTION else self._free
            target.extend(lease.pairs[start:start + unit // 2])
        return True


    def reclaim(self) -> int:
        """Free the held-back leases whose sockets have closed since; the number freed."""
        freed = [lease for lease in list(self._held.values()) if self.release(lease)]
        return len(freed)


def _starts(units: tuple[PortUnit, ...]) -> list[int]:
    starts, at = [], 0
    for unit in units:
        starts.append(at)
        at += unit // 2
    return starts
