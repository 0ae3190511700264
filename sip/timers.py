"""RFC 3261 §17 timer values (table 4 of Appendix A), as one frozen settings object.

Durations are seconds as floats; deadlines elsewhere are absolute times on whatever clock the
caller passes in as ``now`` (the transaction layer never reads a clock itself).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Timer", "TimerSettings"]


class Timer(enum.Enum):
    """The transaction timers of RFC 3261 §17 (and RFC 6026's L and M)."""

    A = "A"  # INVITE client: request retransmit (unreliable only)
    B = "B"  # INVITE client: transaction timeout (also the guard after Timer C's CANCEL)
    C = "C"  # INVITE client in Proceeding: no final response (§16.6's Timer C, used by a UA)
    D = "D"  # INVITE client: wait for response retransmits in Completed
    E = "E"  # non-INVITE client: request retransmit (unreliable only)
    F = "F"  # non-INVITE client: transaction timeout
    G = "G"  # INVITE server: non-2xx final response retransmit (unreliable only)
    H = "H"  # INVITE server: wait for ACK
    I = "I"  # noqa: E741 - the RFC's name; INVITE server: wait for ACK retransmits
    J = "J"  # non-INVITE server: wait for request retransmits
    K = "K"  # non-INVITE client: wait for response retransmits
    L = "L"  # INVITE server (RFC 6026): Accepted state lifetime = the 2xx ACK wait (64*T1)
    M = "M"  # INVITE client (RFC 6026): Accepted state lifetime
    RETRANSMIT_2XX = "2xx"  # INVITE server, Accepted: §13.3.1.4 2xx retransmit until ACK
    TRYING = "100"  # INVITE server: send 100 Trying if the TU has not answered (§17.2.1)


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """The RFC 3261 base timers; every derived timer is computed from these."""

    t1: float = 0.5
    """RTT estimate; initial retransmit interval (Timer A, E, G)."""
    t2: float = 4.0
    """Maximum retransmit interval for non-INVITE requests and INVITE responses."""
    t4: float = 5.0
    """Maximum time a message stays in the network (Timers I and K on unreliable transports)."""
    timer_d: float = 32.0
    """Timer D on unreliable transports ("> 32 s"): absorbs retransmitted final responses."""
    trying_delay: float = 0.2
    """§17.2.1: a 100 Trying is sent if the TU has not answered an INVITE within this."""
    timer_c: float = 180.0
    """INVITE client, Proceeding: with no final response this long after the last
    provisional, the layer CANCELs and arms Timer B (§16.6 Timer C, > 3 min; CUCM's
    "Timer Invite Expires" is 180 s). Without it a lost final response would leak."""

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_d", "trying_delay", "timer_c"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"TimerSettings.{name} must be a non-negative number: {value!r}")
        if self.t1 <= 0:
            raise ValueError("TimerSettings.t1 must be > 0")
        if self.t2 < self.t1:
            raise ValueError("TimerSettings.t2 must be >= t1")

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J (unreliable), L, M and the 2xx ACK give-up."""
        return 64 * self.t1

    def wait_d(self, reliable: bool) -> float:
        """Timer D: 0 on reliable transports."""
        return 0.0 if reliable else self.timer_d

    def wait_i(self, reliable: bool) -> float:
        """Timer I: T4 on unreliable transports, 0 on reliable ones."""
        return 0.0 if reliable else self.t4

    def wait_j(self, reliable: bool) -> float:
        """Timer J: 64*T1 on unreliable transports, 0 on reliable ones."""
        return 0.0 if reliable else self.timeout

    def wait_k(self, reliable: bool) -> float:
        """Timer K: T4 on unreliable transports, 0 on reliable ones."""
        return 0.0 if reliable else self.t4

    def next_interval(self, interval: float, *, cap: bool = True) -> float:
        """Double a retransmit interval; capped at T2 for E and G (Timer A is uncapped)."""
        doubled = interval * 2
        return min(doubled, self.t2) if cap else doubled
