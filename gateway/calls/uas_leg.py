"""The caller's leg (we are the UAS of its INVITE) as a table-driven state machine.

SIP in -> leg events out: the INVITE is reported as ``Try``, the ACK as ``Confirm``, a
CANCEL or BYE as ``Disconnect``, a missing ACK as ``Fail``. Leg events in -> SIP out:
``Ring`` is a 1xx (183 with SDP: early media), ``Connect`` the 2xx, ``Fail`` the final
error, ``Disconnect`` a BYE. The in-call rows (re-INVITE both ways, BYE) are shared with
the callee's leg (``gateway.calls.leg_machine.IN_CALL``).
"""

from __future__ import annotations

from gateway.calls.events import (
    AckIn,
    Confirm,
    Connect,
    Disconnect,
    Emit,
    Fail,
    InviteIn,
    Ring,
    SendAnswer,
    SendProvisional,
    SendReject,
    Try,
    reason_header,
)
from gateway.calls.leg_machine import IN_CALL, EventKind, LegMachine, LegState, Step, Table
from gateway.session_timer import Session

__all__ = ["UAS_TABLE", "UasLeg"]

_S = LegState
_K = EventKind


class UasLeg(LegMachine):
    """The leg toward the caller."""

    name = "caller"
    _session: Session | None = None

    def _invite(self, event: InviteIn) -> Step:
        self._session = event.session
        return _S.TRYING, [Emit(Try(event.sdp))]

    def _ring(self, event: Ring) -> Step:
        state = _S.EARLY_MEDIA if event.sdp is not None or self.state is _S.EARLY_MEDIA \
            else _S.RINGING
        return state, [SendProvisional(event.status, event.reason, event.sdp)]

    def _connect(self, event: Connect) -> Step:
        self.start_timer(self._session)  # the session timer runs from our 2xx (RFC 4028 §9)
        return _S.CONNECTING, [SendAnswer(event.sdp)]

    def _fail(self, event: Fail) -> Step:
        return _S.DISCONNECTED, [SendReject(event.status, event.reason, event.headers)]

    def _cancel(self, event: object) -> Step:
        return _S.DISCONNECTED, [SendReject(487, "Request Terminated"),
                                 Emit(Disconnect("cancelled", cancelled=True))]

    def _early_bye(self, event: object) -> Step:
        """RFC 3261 §15: the caller may BYE the early dialog of our reliable 1xx (video side,
        100rel); §15.1.2: the INVITE then gets 487 and the call ends like a CANCEL."""
        return _S.DISCONNECTED, [SendReject(487, "Request Terminated"),
                                 Emit(Disconnect("BYE in the early dialog", cancelled=True))]

    def _ack(self, event: AckIn) -> Step:
        return _S.CONNECTED, [Emit(Confirm(event.sdp))]

    def _prack_timeout(self, event: object) -> Step:
        """RFC 3262 §3: our reliable 1xx went unPRACKed for 64*T1 (a 2xx may be held for
        it): the INVITE gets a 5xx and the call clears the other leg."""
        text = "no PRACK for the reliable provisional (64*T1)"
        return _S.DISCONNECTED, [SendReject(504, f"Server Time-out: {text}"),
                                 Emit(Disconnect(text, reason_header(504, text)))]


_PENDING = {
    _K.RING: "_ring",
    _K.CONNECT: "_connect",
    _K.FAIL: "_fail",
    _K.CANCEL_IN: "_cancel",
    _K.BYE_IN: "_early_bye",
    _K.UPDATE_IN: "_refuse_early_offer",
    _K.PRACK_TIMEOUT: "_prack_timeout",
}

UAS_TABLE: Table = {
    _S.IDLE: {_K.INVITE_IN: "_invite"},
    _S.TRYING: _PENDING,
    _S.RINGING: _PENDING,
    _S.EARLY_MEDIA: _PENDING,
    _S.CONNECTING: {
        _K.ACK_IN: "_ack",
        _K.ACK_TIMEOUT: "_ack_timeout",
        _K.PRACK_TIMEOUT: "_prack_timeout",  # our 2xx was held for the PRACK (RFC 3262 §3)
        _K.CANCEL_IN: "_stay",  # crossed our 2xx: the 2xx wins (RFC 3261 9.2)
        _K.BYE_IN: "_bye_in",
        _K.DISCONNECT: "_disconnect",
        _K.REINVITE_IN: "_refuse_reinvite",
        _K.UPDATE_IN: "_refuse_reinvite",
        _K.REFRESH_IN: "_refresh_in",
        _K.TIMER: "_timer_fired",
    },
    **IN_CALL,
}
"""Every (state, event) the caller's leg handles; anything else raises."""

UasLeg.TABLE = UAS_TABLE
