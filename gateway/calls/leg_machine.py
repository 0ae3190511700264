"""What the two leg machines share: the states, the event kinds a table is keyed by, the
table-driven ``handle`` that raises on a missing entry, and the in-call part (re-INVITE
either way, BYE either way) that is the same for the caller's and the callee's leg.

A table maps ``state -> event kind -> handler name``; a handler returns the next state and
the actions (``gateway.calls.events``). Nothing here does I/O or reads a clock: ``now`` is
passed in and only recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from gateway.calls.events import (
    AckIn,
    AckTimeout,
    ByeIn,
    CancelIn,
    CancelReinvite,
    Confirm,
    Connect,
    Disconnect,
    Emit,
    Fail,
    Forget,
    InviteIn,
    LegAction,
    LegStateError,
    PrackTimeout,
    RefreshAnswered,
    RefreshIn,
    RefuseReinvite,
    ReinviteIn,
    ResponseIn,
    Ring,
    SendAck,
    SendBye,
    SendRefresh,
    SendReinvite,
    SendUpdateAnswer,
    SendUpdateReject,
    SipInput,
    Timeout,
    TimerFired,
    Try,
    Update,
    UpdateIn,
    Withdraw,
    reason_header,
)
from gateway.calls.events import (
    LegEvent as LegEventT,
)
from gateway.session_timer import Session, SessionTimer, TimerAction

__all__ = ["IN_CALL", "EventKind", "LegMachine", "LegState", "Table", "kind_of"]


class LegState(enum.Enum):
    IDLE = "idle"
    TRYING = "trying"
    """UAS: the INVITE is in, nothing answered yet. UAC: our INVITE is out."""
    RINGING = "ringing"
    """A provisional without SDP went (UAS) or came (UAC)."""
    EARLY_MEDIA = "early-media"
    """A provisional with SDP went or came."""
    CONNECTING = "connecting"
    """UAS: our 2xx is out, its ACK awaited."""
    CONNECTED = "connected"
    UPDATING = "updating"
    """The peer's re-INVITE awaits the answer the call will give."""
    REOFFERING = "reoffering"
    """Our re-INVITE awaits the peer's answer."""
    REANSWERING = "reanswering"
    """The peer's re-INVITE had no SDP: our 2xx carried an offer, whose answer comes in the
    ACK (RFC 3261 §14.2, §13.2.1)."""
    CANCELLING = "cancelling"
    """UAC: our CANCEL is out; the INVITE's final answer is awaited."""
    FAILED = "failed"
    """UAC: the INVITE was refused (the call may try again: best effort, next peer)."""
    DISCONNECTING = "disconnecting"
    """Our BYE is out."""
    DISCONNECTED = "disconnected"


class EventKind(enum.Enum):
    """What a table row is keyed by: a leg event asked by the call, or a SIP input (a
    response split by its class, so each class has its own entry)."""

    TRY = "Try"
    RING = "Ring"
    CONNECT = "Connect"
    UPDATE = "Update"
    DISCONNECT = "Disconnect"
    FAIL = "Fail"
    WITHDRAW = "Withdraw"
    INVITE_IN = "INVITE in"
    REINVITE_IN = "re-INVITE in"
    UPDATE_IN = "UPDATE in"
    PROVISIONAL_IN = "1xx in"
    EARLY_MEDIA_IN = "1xx+SDP in"
    SUCCESS_IN = "2xx in"
    FAILURE_IN = "3xx-6xx in"
    TIMEOUT = "timeout"
    ACK_IN = "ACK in"
    ACK_TIMEOUT = "no ACK"
    PRACK_TIMEOUT = "no PRACK"
    BYE_IN = "BYE in"
    CANCEL_IN = "CANCEL in"
    REFRESH_IN = "refresh in"
    REFRESH_ANSWERED = "refresh answered"
    TIMER = "session timer"


def kind_of(event: LegEventT | SipInput) -> EventKind:
    """The table key of ``event``. ``Confirm`` is only ever reported, never asked."""
    if isinstance(event, ResponseIn):
        if event.status < 200:
            return EventKind.EARLY_MEDIA_IN if event.sdp is not None else EventKind.PROVISIONAL_IN
        return EventKind.SUCCESS_IN if event.status < 300 else EventKind.FAILURE_IN
    kind = _KINDS.get(type(event))
    if kind is None:
        raise LegStateError(f"{type(event).__name__} is not an event a leg is asked with")
    return kind


_KINDS: Mapping[type, EventKind] = {
    Try: EventKind.TRY, Ring: EventKind.RING, Connect: EventKind.CONNECT,
    Update: EventKind.UPDATE, Disconnect: EventKind.DISCONNECT, Fail: EventKind.FAIL,
    Withdraw: EventKind.WITHDRAW,
    InviteIn: EventKind.INVITE_IN, ReinviteIn: EventKind.REINVITE_IN,
    UpdateIn: EventKind.UPDATE_IN,
    Timeout: EventKind.TIMEOUT, AckIn: EventKind.ACK_IN, AckTimeout: EventKind.ACK_TIMEOUT,
    PrackTimeout: EventKind.PRACK_TIMEOUT,
    ByeIn: EventKind.BYE_IN, CancelIn: EventKind.CANCEL_IN,
    RefreshIn: EventKind.REFRESH_IN, RefreshAnswered: EventKind.REFRESH_ANSWERED,
    TimerFired: EventKind.TIMER,
}


Step = tuple[LegState, list[LegAction]]
Handler = Callable[["LegMachine", LegEventT | SipInput], Step]
Table = Mapping[LegState, Mapping[EventKind, str]]

_S = LegState


class LegMachine:
    """A leg's state and its table; ``handle`` is the only way the state moves."""

    TABLE: Table = {}
    name = "leg"

    def __init__(self) -> None:
        self.state = LegState.IDLE
        self.timer: SessionTimer | None = None
        """The session timer of this leg (RFC 4028), once one was negotiated on it."""
        self.now = 0.0
        """``now`` of the event being handled."""
        self.history: list[tuple[EventKind, LegState]] = []
        self.changed_at: float | None = None
        """``now`` of the last transition."""

    def can(self, event: LegEventT | SipInput) -> bool:
        return kind_of(event) in self.TABLE.get(self.state, {})

    def handle(self, event: LegEventT | SipInput, now: float
               ) -> list[LegAction]:
        """Apply ``event``; raises :class:`LegStateError` when the table has no entry (the
        state is then unchanged)."""
        kind = kind_of(event)
        name = self.TABLE.get(self.state, {}).get(kind)
        if name is None:
            raise LegStateError(f"{self.name} leg: {kind.value} not allowed in state "
                                f"{self.state.value}")
        handler: Handler = getattr(type(self), name)
        self.now = now
        state, actions = handler(self, event)
        self.history.append((kind, state))
        self.state = state
        self.changed_at = now
        return actions

    @property
    def ended(self) -> bool:
        return self.state in (_S.DISCONNECTED, _S.DISCONNECTING, _S.FAILED)

    # -- shared handlers -------------------------------------------------------------------

    def _stay(self, event: object) -> Step:
        return self.state, []

    def _reinvite_in(self, event: ReinviteIn | UpdateIn) -> Step:
        return _S.UPDATING, [Emit(Update(event.sdp))]

    def _refuse_reinvite(self, event: object) -> Step:
        return self.state, [RefuseReinvite()]

    def _refuse_early_offer(self, event: object) -> Step:
        """An UPDATE with an offer in the early dialog (RFC 3311 §5.1 allows one once the
        first offer/answer is done): not supported here, refused for that transaction only
        (488) so the call set-up goes on. Before, no row: the call failed as a fault."""
        return self.state, [RefuseReinvite(488, "Not Acceptable Here: no new offer before "
                                                "the call is answered")]

    def _refuse_overlapping(self, event: object) -> Step:
        """The peer offers again while its own earlier offer awaits our answer: not glare
        (491 would say we have an offer out) but 500 + Retry-After (RFC 3261 §14.2 for a
        re-INVITE, RFC 3311 §5.2 for an UPDATE)."""
        return self.state, [RefuseReinvite(500, "Server Internal Error: an earlier offer "
                                                "of yours is still being answered",
                                           retry_after=True)]

    def _update(self, event: Update) -> Step:
        return _S.REOFFERING, [SendReinvite(event.sdp)]

    def _update_answered(self, event: Connect) -> Step:
        if event.sdp is None:
            # A re-INVITE without SDP: our 2xx repeats our SDP as an offer; the answer, in
            # the ACK, may move the peer's media (CUCM after a transfer or a resume).
            return _S.REANSWERING, [SendUpdateAnswer(None)]
        return _S.CONNECTED, [SendUpdateAnswer(event.sdp)]

    def _reanswered(self, event: AckIn) -> Step:
        return _S.CONNECTED, [Emit(Confirm(event.sdp))]

    def _update_refused(self, event: Fail) -> Step:
        return _S.CONNECTED, [SendUpdateReject(event.status, event.reason)]

    def _withdrawn(self, event: CancelIn) -> Step:
        """The peer CANCELled its pending re-INVITE: the call cancels the one relaying it;
        our final answer (487, or 200 if the other side had accepted) comes from there."""
        return self.state, [Emit(Withdraw())]

    def _cancel_reoffer(self, event: Withdraw) -> Step:
        return self.state, [CancelReinvite()]

    def _reoffer_answered(self, event: ResponseIn) -> Step:
        return _S.CONNECTED, [SendAck(), Emit(Connect(event.sdp))]

    def _reoffer_refused(self, event: ResponseIn) -> Step:
        return _S.CONNECTED, [Emit(Fail(event.status, event.reason))]

    def _reoffer_timeout(self, event: Timeout) -> Step:
        """No answer at all to our re-INVITE: RFC 3261 §12.2.1.2 has the UAC end the
        dialog (the peer is gone); the call clears the other leg (its pending re-INVITE
        gets 487). Relaying a 500 instead left the other side in a call with nobody."""
        text = "no answer to a re-INVITE"
        return _S.DISCONNECTING, [SendBye(reason_header(408, text)), Emit(Fail(408, text))]

    def _bye_in(self, event: ByeIn) -> Step:
        return _S.DISCONNECTED, [Forget(), Emit(Disconnect("BYE", event.reason))]

    def _bye_crossed(self, event: ByeIn) -> Step:
        return _S.DISCONNECTED, [Forget()]

    def _disconnect(self, event: Disconnect) -> Step:
        return _S.DISCONNECTING, [SendBye(event.reason)]

    def _disconnect_updating(self, event: Disconnect) -> Step:
        return _S.DISCONNECTING, [SendUpdateReject(487, "Request Terminated"),
                                  SendBye(event.reason)]

    def _confirm_update(self, event: AckIn) -> Step:
        return self.state, []

    def _ack_timeout(self, event: object) -> Step:
        """Our 2xx (to the INVITE or a re-INVITE) was never ACKed: RFC 3261 §13.3.1.4 and
        §14.2 end the session with a BYE; the call clears the other leg."""
        return _S.DISCONNECTING, [SendBye(reason_header(408, "no ACK received")),
                                  Emit(Fail(408, "no ACK (64*T1)"))]

    # -- session timer (RFC 4028), each leg on its own --------------------------------------

    def start_timer(self, session: Session | None) -> None:
        if session is not None:
            self.timer = SessionTimer(session, self.now)

    def _refresh_in(self, event: RefreshIn) -> Step:
        if self.timer is None:
            self.start_timer(event.session)
        else:
            self.timer.refreshed(event.session, self.now)
        return self.state, []

    def _refresh_answered(self, event: RefreshAnswered) -> Step:
        timer = self.timer
        if timer is None:
            return self.state, []
        if event.status is not None and 200 <= event.status < 300:
            timer.refreshed(event.session or timer.session, self.now)
            return self.state, []
        if timer.refresh_failed(event.status, self.now) is TimerAction.EXPIRE:
            return self._expire(f"session refresh failed ({event.status or 'no answer'})")
        return self.state, []

    def _timer_fired(self, event: TimerFired) -> Step:
        timer = self.timer
        if timer is None:
            return self.state, []
        action = timer.handle_timer(self.now)
        if action is TimerAction.EXPIRE:
            return self._expire("session expired (no refresh)")
        if action is TimerAction.REFRESH:
            if self.state is _S.CONNECTED:
                return self.state, [SendRefresh()]
            # An offer/answer is under way (itself a refresh once answered): look again soon.
            timer.refresh_at = min(self.now + 1.0, timer.expire_at)
        return self.state, []

    def _expire(self, text: str) -> Step:
        """RFC 4028 §10: the session is over; BYE, and the call is cleared."""
        reason = reason_header(408, text)
        return _S.DISCONNECTING, [SendBye(reason), Emit(Fail(408, text))]


_TIMER_ROWS = {
    EventKind.REFRESH_IN: "_refresh_in",
    EventKind.REFRESH_ANSWERED: "_refresh_answered",
    EventKind.TIMER: "_timer_fired",
}

IN_CALL: Table = {
    _S.CONNECTED: {
        **_TIMER_ROWS,
        EventKind.REINVITE_IN: "_reinvite_in",
        EventKind.UPDATE_IN: "_reinvite_in",  # an UPDATE's offer is relayed the same way
        EventKind.UPDATE: "_update",
        EventKind.ACK_IN: "_confirm_update",  # the ACK of a re-INVITE's 2xx
        EventKind.ACK_TIMEOUT: "_ack_timeout",  # ... which never came
        EventKind.SUCCESS_IN: "_stay",  # a 2xx retransmission (the stack re-ACKs it)
        EventKind.BYE_IN: "_bye_in",
        EventKind.DISCONNECT: "_disconnect",
    },
    _S.UPDATING: {
        **_TIMER_ROWS,
        EventKind.CONNECT: "_update_answered",
        EventKind.FAIL: "_update_refused",
        EventKind.CANCEL_IN: "_withdrawn",  # the peer CANCELs its re-INVITE
        EventKind.REINVITE_IN: "_refuse_overlapping",
        EventKind.UPDATE_IN: "_refuse_overlapping",
        EventKind.ACK_IN: "_stay",
        EventKind.BYE_IN: "_bye_in",
        EventKind.DISCONNECT: "_disconnect_updating",
    },
    _S.REOFFERING: {
        **_TIMER_ROWS,
        EventKind.PROVISIONAL_IN: "_stay",
        EventKind.SUCCESS_IN: "_reoffer_answered",
        EventKind.FAILURE_IN: "_reoffer_refused",
        EventKind.TIMEOUT: "_reoffer_timeout",
        EventKind.WITHDRAW: "_cancel_reoffer",
        EventKind.REINVITE_IN: "_refuse_reinvite",
        EventKind.UPDATE_IN: "_refuse_reinvite",
        EventKind.ACK_IN: "_stay",
        EventKind.BYE_IN: "_bye_in",
        EventKind.DISCONNECT: "_disconnect",
    },
    _S.REANSWERING: {
        **_TIMER_ROWS,
        EventKind.ACK_IN: "_reanswered",
        EventKind.ACK_TIMEOUT: "_ack_timeout",
        EventKind.REINVITE_IN: "_refuse_reinvite",  # our offer (in the 2xx) is out: 491
        EventKind.UPDATE_IN: "_refuse_reinvite",
        EventKind.BYE_IN: "_bye_in",
        EventKind.DISCONNECT: "_disconnect",
    },
    _S.DISCONNECTING: {
        EventKind.ACK_TIMEOUT: "_stay",  # our BYE is out already
        EventKind.REFRESH_ANSWERED: "_stay",
        EventKind.TIMER: "_stay",
        EventKind.BYE_IN: "_bye_crossed",
        EventKind.DISCONNECT: "_stay",
        EventKind.ACK_IN: "_stay",
        EventKind.PROVISIONAL_IN: "_stay",
        EventKind.SUCCESS_IN: "_stay",  # a late answer to a re-INVITE: the BYE ends it
        EventKind.FAILURE_IN: "_stay",
        EventKind.TIMEOUT: "_stay",
        EventKind.REINVITE_IN: "_refuse_reinvite",
    },
    _S.DISCONNECTED: {},
}
"""The in-call rows both legs share."""
