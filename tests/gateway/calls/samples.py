"""One sample of each event kind a leg table is keyed by, and a one-line rendering of
actions (``SendProvisional``, ``Emit:Try``) for the transition vectors."""

from __future__ import annotations

from gateway.calls.events import (
    AckIn,
    AckTimeout,
    ByeIn,
    CancelIn,
    Connect,
    Disconnect,
    Emit,
    Fail,
    InviteIn,
    LegAction,
    LegEvent,
    PrackTimeout,
    RefreshAnswered,
    RefreshIn,
    RefuseReinvite,
    ReinviteIn,
    ResponseIn,
    Ring,
    SipInput,
    Timeout,
    TimerFired,
    Try,
    Update,
    UpdateIn,
    Withdraw,
    reason_header,
)
from gateway.calls.leg_machine import EventKind
from gateway.session_timer import Refresher, Session
from media.sdp import SessionDescription, parse_sdp

__all__ = ["OFFER", "SAMPLES", "render"]

OFFER: SessionDescription = parse_sdp(
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")

SAMPLES: dict[EventKind, LegEvent | SipInput] = {
    EventKind.TRY: Try(OFFER),
    EventKind.RING: Ring(180, "Ringing"),
    EventKind.CONNECT: Connect(OFFER),
    EventKind.UPDATE: Update(OFFER),
    EventKind.DISCONNECT: Disconnect("hung up", reason_header(200, "hung up")),
    EventKind.FAIL: Fail(486, "Busy Here"),
    EventKind.WITHDRAW: Withdraw(),
    EventKind.INVITE_IN: InviteIn(OFFER),
    EventKind.REINVITE_IN: ReinviteIn(OFFER),
    EventKind.PROVISIONAL_IN: ResponseIn(180, "Ringing"),
    EventKind.EARLY_MEDIA_IN: ResponseIn(183, "Session Progress", OFFER),
    EventKind.SUCCESS_IN: ResponseIn(200, "OK", OFFER),
    EventKind.FAILURE_IN: ResponseIn(486, "Busy Here"),
    EventKind.TIMEOUT: Timeout(),
    EventKind.ACK_IN: AckIn(),
    EventKind.ACK_TIMEOUT: AckTimeout(),
    EventKind.PRACK_TIMEOUT: PrackTimeout(),
    EventKind.BYE_IN: ByeIn(),
    EventKind.CANCEL_IN: CancelIn(),
    EventKind.UPDATE_IN: UpdateIn(OFFER),
    EventKind.REFRESH_IN: RefreshIn(Session(90, Refresher.UAC, Refresher.UAS)),
    EventKind.REFRESH_ANSWERED: RefreshAnswered(200),
    EventKind.TIMER: TimerFired(),
}


def render(actions: list[LegAction]) -> str:
    """``SendAck,Emit:Connect`` (``-`` for none)."""
    names = [f"Emit:{type(a.event).__name__}" if isinstance(a, Emit)
             else f"RefuseReinvite:{a.status}" if isinstance(a, RefuseReinvite)
             else type(a).__name__ for a in actions]
    return ",".join(names) or "-"
