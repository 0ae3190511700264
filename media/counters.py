"""Per-leg packet counters (sans-IO: the caller passes the time of each packet).

``media.stream.MediaStream.counters`` fills them from the relays' counters (per verdict, see
``media.relay.Verdict``) for /status, /metrics and the operator's page."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Drop", "LegCounters"]


class Drop(enum.IntEnum):
    """Why a received packet was not forwarded."""

    DIRECTION = 0
    """The SDP directions say this way is on hold / inactive."""
    SOURCE = 1
    """Strict latching: not from the endpoint we latched to."""
    NO_ROUTE = 2
    """Nowhere to send yet (ICE not connected, no address for the video side)."""
    SRTP = 3
    """SRTP authentication / replay check failed, or a packet too big for SRTP."""
    MALFORMED = 4
    """Not RTP/RTCP (version, size), or STUN on the video leg."""
    SEND = 5
    """The socket refused the send (buffer full, ICMP error)."""


@dataclass(slots=True)
class LegCounters:
    """What one leg (Microsoft or video side of a stream) received and sent."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    last_in: float | None = None
    """Time of the last packet received (the clock the caller passes in)."""
    last_out: float | None = None
    """Time of the last packet sent."""
    dropped_direction: int = 0
    dropped_source: int = 0
    dropped_no_route: int = 0
    dropped_srtp: int = 0
    dropped_malformed: int = 0
    dropped_send: int = 0

    def received(self, size: int, now: float) -> None:
        self.packets_in += 1
        self.bytes_in += size
        self.last_in = now

    def sent(self, size: int, now: float) -> None:
        self.packets_out += 1
        self.bytes_out += size
        self.last_out = now

    def dropped(self, why: Drop) -> None:
        if why is Drop.DIRECTION:
            self.dropped_direction += 1
        elif why is Drop.SOURCE:
            self.dropped_source += 1
        elif why is Drop.NO_ROUTE:
            self.dropped_no_route += 1
        elif why is Drop.MALFORMED:
            self.dropped_malformed += 1
        elif why is Drop.SEND:
            self.dropped_send += 1
        else:
            self.dropped_srtp += 1

    @property
    def dropped_total(self) -> int:
        return (self.dropped_direction + self.dropped_source + self.dropped_no_route
                + self.dropped_srtp + self.dropped_malformed + self.dropped_send)

    def idle_for(self, now: float) -> float | None:
        """Seconds since the last received packet (None: nothing received yet)."""
        return None if self.last_in is None else now - self.last_in
