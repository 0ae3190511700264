"""Events a ``MediaSession`` hands to its owner (the B2BUA), in the order they happen."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ICE_FAILED_REASON",
    "MediaClosed",
    "MediaConnected",
    "MediaEvent",
    "MediaFailed",
    "SourceLatched",
]

ICE_FAILED_REASON = "ice processing failed"
"""The Reason text the B2BUA puts in its BYE when ICE toward Microsoft fails."""


@dataclass(frozen=True, slots=True)
class MediaConnected:
    """ICE toward Microsoft completed for one stream."""

    stream: int
    """Index of the m= line."""
    kind: str
    """audio / video."""
    local_type: str
    """Type of our selected RTP candidate: host, srflx or relay."""
    remote: tuple[str, int]
    """The Microsoft address RTP now goes to."""


@dataclass(frozen=True, slots=True)
class MediaFailed:
    """A stream cannot carry media: the call should be cleared with ``reason``."""

    stream: int
    kind: str
    reason: str
    """"ice processing failed" when the connectivity checks all failed or timed out."""


@dataclass(frozen=True, slots=True)
class SourceLatched:
    """The video leg now sends to where the endpoint's packets come from."""

    stream: int
    kind: str
    component: int
    """1 RTP, 2 RTCP."""
    address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class MediaClosed:
    """The session released every port and task."""

    ports_released: int


MediaEvent = MediaConnected | MediaFailed | SourceLatched | MediaClosed
