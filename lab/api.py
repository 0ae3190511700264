"""What a test can do with a call, whichever side placed it (Lync client or SIP endpoint).

The pytest plugin hands tests objects that satisfy these protocols, so a test reads the
same for `alice.call("3001@video.example.com")` and `endpoint.call("alice.parkes@example.com")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class MediaReport:
    """Media seen on one call, summed over its streams."""

    packets_sent: int
    """RTP packets this side sent."""
    packets_received: int
    """RTP packets this side received (after SRTP unprotect where used)."""
    streams: tuple[str, ...]
    """Kinds of the streams that carried media ("audio", "video")."""
    ice_pair: str | None = None
    """Nominated ICE pair as "local/remote" candidate types (e.g. "relay/host"); None off ICE."""


class CallHandle(Protocol):
    """One call from the point of view of the side that holds it."""

    call_id: str

    @property
    def state(self) -> str:
        """"connecting", "ringing", "connected" (signalling), "media" (RTP arrived), "ended"."""
        ...

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Until the call is answered; raises with the final status when it is refused."""
        ...

    async def wait_media(
        self, *, both_ways: bool = True, min_packets: int = 10, timeout: float = 10.0
    ) -> MediaReport:
        """Until at least ``min_packets`` RTP packets arrived (and were sent, if both_ways)."""
        ...

    async def hold(self) -> None:
        """re-INVITE with a=sendonly; returns when it was answered."""
        ...

    async def resume(self) -> None:
        """re-INVITE with a=sendrecv."""
        ...

    async def add_video(self) -> None:
        """re-INVITE adding a video stream to a voice call."""
        ...

    async def hangup(self) -> None:
        """BYE (or CANCEL before answer)."""
        ...

    def media(self) -> MediaReport:
        """Counters now."""
        ...


class Caller(Protocol):
    """A lab party that can place calls (a Lync client or a SIP endpoint)."""

    aor: str

    async def call(self, target: str, *, video: bool = True) -> CallHandle:
        """Place a call to ``target`` ("3001@video.example.com"); returns once it is sent."""
        ...
