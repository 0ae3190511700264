"""The callee's leg (we sent its INVITE) as a table-driven state machine.

Leg events in -> SIP out: ``Try`` sends the INVITE (again, CSeq + 1, after a refusal: the
best-effort plain-RTP retry), ``Disconnect`` is a CANCEL before the answer and a BYE after
it. SIP in -> leg events out: a 1xx is ``Ring`` (with its SDP when it has one: early
media), the 2xx is ACKed and reported as ``Connect``, a final error or a timeout as
``Fail``, a BYE as ``Disconnect``. A 2xx that crosses our CANCEL is ACKed and BYEd.
"""

from __future__ import annotations

from gateway.calls.events import (
    Connect,
    Emit,
    Fail,
    LegAction,
    ResponseIn,
    Ring,
    SendAck,
    SendBye,
    SendCancel,
    SendInvite,
    SendPrack,
    Timeout,
    Try,
    reason_header,
)
from gateway.calls.leg_machine import IN_CALL, EventKind, LegMachine, LegState, Step, Table

__all__ = ["UAC_TABLE", "UacLeg"]

_S = LegState
_K = EventKind


class UacLeg(LegMachine):
    """The leg toward the callee."""

    name = "callee"

    def _try(self, event: Try) -> Step:
        return _S.TRYING, [SendInvite(event.sdp, retry=self.state is _S.FAILED)]

    def _provisional(self, event: ResponseIn) -> Step:
        if event.status == 100:
            return self.state, []
        state = _S.EARLY_MEDIA if self.state is _S.EARLY_MEDIA else _S.RINGING
        return state, [*_prack(event), Emit(Ring(event.status, event.reason))]

    def _early_media(self, event: ResponseIn) -> Step:
        return _S.EARLY_MEDIA, [*_prack(event), Emit(Ring(event.status, event.reason, event.sdp))]

    def _answered(self, event: ResponseIn) -> Step:
        self.start_timer(event.session)  # the 2xx sets the session timer (RFC 4028 §7.2)
        return _S.CONNECTED, [SendAck(), Emit(Connect(event.sdp))]

    def _refused(self, event: ResponseIn) -> Step:
        return _S.FAILED, [Emit(Fail(event.status, event.reason, event.headers))]

    def _timeout(self, event: Timeout) -> Step:
        if event.transport_error:
            return _S.FAILED, [Emit(Fail(503, "Service Unavailable: unreachable"))]
        return _S.FAILED, [Emit(Fail(408, "Request Timeout: no answer"))]

    def _cancel(self, event: object) -> Step:
        return _S.CANCELLING, [SendCancel()]

    def _answered_after_cancel(self, event: ResponseIn) -> Step:
        return _S.DISCONNECTING, [SendAck(), SendBye(reason_header(487, "call cancelled"))]

    def _cancelled(self, event: object) -> Step:
        return _S.DISCONNECTED, []


def _prack(event: ResponseIn) -> list[LegAction]:
    """RFC 3262 §4: a new reliable provisional is PRACKed before it is passed on."""
    return [SendPrack()] if event.reliable else []


_PENDING = {
    _K.PROVISIONAL_IN: "_provisional",
    _K.EARLY_MEDIA_IN: "_early_media",
    _K.SUCCESS_IN: "_answered",
    _K.FAILURE_IN: "_refused",
    _K.TIMEOUT: "_timeout",
    _K.DISCONNECT: "_cancel",
    _K.UPDATE_IN: "_refuse_early_offer",  # an UPDATE in the early dialog of a reliable 1xx
}

UAC_TABLE: Table = {
    _S.IDLE: {_K.TRY: "_try"},
    _S.TRYING: _PENDING,
    _S.RINGING: _PENDING,
    _S.EARLY_MEDIA: _PENDING,
    _S.CANCELLING: {
        _K.PROVISIONAL_IN: "_stay",
        _K.EARLY_MEDIA_IN: "_stay",
        _K.SUCCESS_IN: "_answered_after_cancel",
        _K.FAILURE_IN: "_cancelled",
        _K.TIMEOUT: "_cancelled",
        _K.DISCONNECT: "_stay",
    },
    _S.FAILED: {
        _K.TRY: "_try",  # best effort's plain-RTP offer, the same INVITE with CSeq + 1
        _K.DISCONNECT: "_stay",
    },
    **IN_CALL,
}
"""Every (state, event) the callee's leg handles; anything else raises."""

UacLeg.TABLE = UAC_TABLE
