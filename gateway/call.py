"""A call as the rest of the gateway sees it: the call machine (``gateway.calls.call``),
its two SIP legs, its media; and what is kept once it is gone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.calls.actions import CallState, Outcome, Role
from gateway.calls.call import Call
from gateway.leg import Leg
from gateway.sdp_bridge import SdpBridge
from media.session import MediaSession, StreamCounters

__all__ = ["ActiveCall", "CallState", "EndedCall", "Outcome"]


@dataclass(frozen=True, slots=True)
class EndedCall:
    """What is kept of a call once it is gone: a few values, not its legs, messages or media
    (a hundred whole calls held tens of thousands of objects every full GC rescanned)."""

    call_id: str
    outcome: Outcome
    started_at: float
    """Loop time the inbound INVITE arrived."""
    connected_at: float | None
    """Loop time the 2xx was relayed (None when never connected)."""
    ended_at: float
    """Loop time its media was given back."""
    counters: tuple[StreamCounters, ...] = ()
    """Each stream's final packet counters."""


@dataclass(slots=True, eq=False)
class ActiveCall:
    """One call through the B2BUA: its machine, its SIP legs, its media."""

    core: Call
    """The call's state: both leg machines and the phase between them."""
    inbound: Leg
    """The SIP leg the call came in on (its INVITE created the call)."""
    outbound: Leg | None = None
    """The SIP leg toward the routed target (None until its INVITE is sent)."""
    media: MediaSession | None = None
    """The relay for this call's streams."""
    bridge: SdpBridge | None = None
    """The call's SDP rewrites over ``media``."""
    torn_down: asyncio.Future[None] | None = None
    """The teardown of this call (media closed, ports back), once begun: one per call,
    whoever asks for it first."""

    @property
    def call_id(self) -> str:
        return self.core.call_id

    @property
    def state(self) -> CallState:
        return self.core.state

    @property
    def started_at(self) -> float:
        return self.core.started_at

    @property
    def connected_at(self) -> float | None:
        return self.core.connected_at

    @property
    def ended(self) -> bool:
        return self.core.ended

    def leg(self, role: Role) -> Leg:
        leg = self.inbound if role is Role.UAS else self.outbound
        if leg is None:
            raise LookupError(f"call {self.call_id} has no {role.value} leg")
        return leg
