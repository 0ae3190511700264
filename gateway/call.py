"""A B2BUA call: two legs and the call state table (sans-IO).

The legs and the controller talk in sippy b2bua's vocabulary: a leg reports **try** (a new
INVITE came in), **ring** (a 1xx), **connect** (a 2xx), **disconnect** (BYE, CANCEL) and
**fail** (a final error, a timeout, ICE failure); ``confirm`` is the ACK for our 2xx. Every
transition of the call lives in :data:`CALL_TABLE` (h11 ``_state.py`` style); an event the
table does not allow raises :class:`CallStateError` and changes nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.metrics import CallResult
from sip.errors import LocalProtocolError

if TYPE_CHECKING:
    from gateway.leg import Leg
    from media.session import MediaSession, StreamCounters

__all__ = [
    "CALL_TABLE",
    "Call",
    "CallEvent",
    "CallState",
    "CallStateError",
    "EndedCall",
    "Outcome",
]

logger = logging.getLogger(__name__)


class CallState(enum.Enum):
    """Where a call is."""

    TRYING = "trying"
    """The inbound INVITE was accepted and the outbound one sent."""
    RINGING = "ringing"
    """A provisional answer came back and was relayed."""
    CONNECTING = "connecting"
    """The 2xx was relayed; the ACK from the caller is awaited."""
    CONNECTED = "connected"
    """Both dialogs confirmed: media flows."""
    DISCONNECTED = "disconnected"
    """Cleared (BYE, CANCEL, a final error, a failure): nothing is left of it."""


class CallEvent(enum.Enum):
    """What a leg (or the media) tells the controller."""

    TRY = "try"
    RING = "ring"
    CONNECT = "connect"
    CONFIRM = "confirm"
    DISCONNECT = "disconnect"
    FAIL = "fail"


_S = CallState
_E = CallEvent

CALL_TABLE: Mapping[CallState, Mapping[CallEvent, CallState]] = {
    _S.TRYING: {
        _E.RING: _S.RINGING,
        _E.CONNECT: _S.CONNECTING,
        _E.DISCONNECT: _S.DISCONNECTED,
        _E.FAIL: _S.DISCONNECTED,
    },
    _S.RINGING: {
        _E.RING: _S.RINGING,
        _E.CONNECT: _S.CONNECTING,
        _E.DISCONNECT: _S.DISCONNECTED,
        _E.FAIL: _S.DISCONNECTED,
    },
    _S.CONNECTING: {
        _E.CONFIRM: _S.CONNECTED,
        _E.DISCONNECT: _S.DISCONNECTED,
        _E.FAIL: _S.DISCONNECTED,
    },
    _S.CONNECTED: {
        _E.CONFIRM: _S.CONNECTED,  # the ACK of a re-INVITE's 2xx
        _E.DISCONNECT: _S.DISCONNECTED,
        _E.FAIL: _S.DISCONNECTED,
    },
    _S.DISCONNECTED: {},
}
"""Every allowed (state, event) -> next state. TRY creates the call in TRYING."""


class CallStateError(LocalProtocolError):
    """An event the call's state does not allow (a bug or a race the controller must skip)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: for the metrics and the log."""

    result: CallResult
    """completed, cancelled, rejected or failed."""
    reason: str
    """Human-readable reason (``BYE from microsoft``, ``487 Request Terminated`` ...)."""


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
class Call:
    """One call through the B2BUA: the inbound leg, the outbound leg, the media session."""

    call_id: str
    """The call's id: the inbound leg's Call-ID."""
    started_at: float
    """Loop time the inbound INVITE arrived."""
    inbound: Leg
    """The leg the call came in on (its INVITE created the call)."""
    outbound: Leg | None = None
    """The leg toward the routed target (None until the INVITE is sent)."""
    media: MediaSession | None = None
    """The relay for this call's streams."""
    state: CallState = CallState.TRYING
    """Current state (only :meth:`handle` moves it)."""
    connected_at: float | None = None
    """Loop time the 2xx was relayed."""
    outcome: Outcome | None = None
    """Set when the call is disconnected."""
    history: list[tuple[CallEvent, CallState]] = field(default_factory=list)
    """Every event applied and the state it led to (for logs and tests)."""
    torn_down: asyncio.Future[None] | None = None
    """The controller's teardown of this call (media closed, ports back), once begun: there is
    one per call, whoever asks for it first (a CANCEL, the set-up path, a BYE)."""

    def handle(self, event: CallEvent) -> CallState:
        """Apply ``event``; raises :class:`CallStateError` when the table has no entry."""
        try:
            new = CALL_TABLE[self.state][event]
        except KeyError:
            raise CallStateError(
                f"call {self.call_id}: {event.value} not allowed in state {self.state.value}"
            ) from None
        self.history.append((event, new))
        self.state = new
        return new

    def can(self, event: CallEvent) -> bool:
        """True when ``event`` is allowed now."""
        return event in CALL_TABLE[self.state]

    def end(self, event: CallEvent, outcome: Outcome) -> bool:
        """Disconnect with ``outcome``; False when the call had already ended."""
        if self.state is CallState.DISCONNECTED:
            return False
        self.handle(event)
        self.outcome = outcome
        return True

    @property
    def ended(self) -> bool:
        return self.state is CallState.DISCONNECTED

    def leg_for(self, leg: Leg) -> Leg | None:
        """The other leg of ``leg`` (None when it is not one of ours or has no peer yet)."""
        if leg is self.inbound:
            return self.outbound
        if leg is self.outbound:
            return self.inbound
        return None

    def log(self) -> logging.LoggerAdapter[Any]:
        """A logger prefixing the call's id."""
        return _Prefixed(logger, {"call_id": self.call_id})


class _Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{(self.extra or {}).get('call_id')}] {msg}", kwargs
