"""The media port pool (sans-IO: it hands out numbers, the relay engine binds the sockets).

Documented units (SPEC §3): 8 ports for an audio+video call (RTP+RTCP for audio and video on
each of the two legs), 10 more for a call that shares a screen, 2 per connection to a TURN
server. Ports go out as pairs, RTP on the even port and RTCP on the odd one above it.

The pool keeps a FIFO of free pairs: taking or returning a pair is O(1), so a call's
allocation and release are O(its units). FIFO order also delays reuse of a just-freed port,
which keeps stray packets of an ended call away from the next one.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sip.errors import ProtocolError

__all__ = ["PortLease", "PortPool", "PortPoolExhausted", "PortPoolSettings", "PortUnit"]

logger = logging.getLogger(__name__)

EXHAUSTED_WARNING = "Media port pool exhausted"


class PortUnit(enum.IntEnum):
    """What a call asks for; the value is the number of ports (always even)."""

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

    def __post_init__(self) -> None:
        if not 1024 <= self.first_port <= self.last_port <= 65535:
            raise ValueError(f"bad media port range {self.first_port}-{self.last_port}")
        if self.first_port % 2 and self.first_port + 1 >= self.last_port:
            raise ValueError("media port range holds no even/odd pair")


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


class PortPool:
    """Hands out even/odd port pairs in documented units; counts use and refusals."""

    def __init__(self, settings: PortPoolSettings | None = None) -> None:
        self.settings = settings or PortPoolSettings()
        first = self.settings.first_port + (self.settings.first_port % 2)
        self._free: deque[int] = deque(range(first, self.settings.last_port, 2))
        self.total_ports = 2 * len(self._free)
        self._leases: dict[int, PortLease] = {}
        self._ids = itertools.count(1)
        self.calls_refused = 0
        """Allocations refused because the pool was short (a counter for status/metrics)."""

    @property
    def ports_in_use(self) -> int:
        return self.total_ports - 2 * len(self._free)

    @property
    def ports_free(self) -> int:
        return 2 * len(self._free)

    @property
    def leases(self) -> tuple[PortLease, ...]:
        return tuple(self._leases.values())

    def allocate(self, owner: str, units: Iterable[PortUnit]) -> PortLease:
        """Take all the ports ``units`` need, or none: raises ``PortPoolExhausted`` (and logs
        the warning "Media port pool exhausted") when the pool is short."""
        wanted = tuple(PortUnit(u) for u in units)
        if not wanted:
            raise ValueError("an allocation needs at least one unit")
        pairs_needed = sum(wanted) // 2
        if pairs_needed > len(self._free):
            self.calls_refused += 1
            logger.warning("%s: %s needs %d ports, %d free", EXHAUSTED_WARNING, owner,
                           2 * pairs_needed, self.ports_free)
            raise PortPoolExhausted(
                f"{EXHAUSTED_WARNING}: {2 * pairs_needed} ports needed, {self.ports_free} free")
        pairs = tuple(self._free.popleft() for _ in range(pairs_needed))
        lease = PortLease(next(self._ids), owner, wanted, pairs)
        self._leases[lease.lease_id] = lease
        return lease

    def release(self, lease: PortLease) -> None:
        """Return a lease's ports. Releasing a lease twice (or a stranger's) is an error."""
        held = self._leases.pop(lease.lease_id, None)
        if held is None or held != lease:
            if held is not None:
                self._leases[held.lease_id] = held
            raise ValueError(f"lease {lease.lease_id} of {lease.owner} is not held")
        self._free.extend(lease.pairs)
