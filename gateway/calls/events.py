"""The vocabulary of call control: leg events, the SIP a leg is told about, the SIP it asks
for, and the transition-table error.

Three kinds of value cross a leg machine (``gateway.calls.uas_leg``, ``uac_leg``), all
frozen:

- **leg events** (:data:`LegEvent`) go between a leg and the :class:`~gateway.calls.call.Call`:
  ``Try``, ``Ring``, ``Connect``, ``Update``, ``Confirm``, ``Disconnect``, ``Fail``
  (sippy b2bua's words). A leg *reports* them (``Emit``) and is *asked* with them.
- **SIP inputs** (:data:`SipInput`) are what the leg's dialog received: an INVITE, a
  response, an ACK, a BYE, a CANCEL, a timeout.
- **SIP actions** (:data:`SipAction`) are what the leg wants sent; the asyncio adapter
  (``gateway.calls.adapter``) turns each into a message on the leg's dialog.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.session_timer import Session
from media.sdp import SessionDescription
from sip.errors import LocalProtocolError

__all__ = [
    "AckIn",
    "AckTimeout",
    "ByeIn",
    "CancelIn",
    "CancelReinvite",
    "Confirm",
    "Connect",
    "Disconnect",
    "Emit",
    "Fail",
    "Forget",
    "PrackTimeout",
    "RefuseReinvite",
    "SendUpdateAnswer",
    "SendUpdateReject",
    "Header",
    "InviteIn",
    "LegAction",
    "LegEvent",
    "LegStateError",
    "RefreshAnswered",
    "RefreshIn",
    "ReinviteIn",
    "ResponseIn",
    "Ring",
    "SendAck",
    "SendAnswer",
    "SendBye",
    "SendCancel",
    "SendInvite",
    "SendPrack",
    "SendRefresh",
    "SendProvisional",
    "SendReinvite",
    "SendReject",
    "SipAction",
    "SipInput",
    "Timeout",
    "TimerFired",
    "Try",
    "Update",
    "UpdateIn",
    "Withdraw",
    "reason_header",
]

Header = tuple[str, str]
SDP = SessionDescription | None


def reason_header(cause: int, text: str) -> Header:
    """RFC 3326 ``Reason: SIP ;cause=N;text="..."``."""
    clean = text.replace("\\", "").replace('"', "'")
    return ("Reason", f'SIP ;cause={cause};text="{clean}"')


class LegStateError(LocalProtocolError):
    """An event the leg's transition table has no entry for: a bug in call control (or a
    race it must resolve before asking), never silently ignored."""


# -- leg events (leg <-> call) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Try:
    """A call attempt: the caller's INVITE (reported), or the call asking the callee leg to
    send one (asked). ``sdp`` None is a delayed offer."""

    sdp: SDP


@dataclass(frozen=True, slots=True)
class Ring:
    """A provisional answer (180 / 183), with early-media SDP when it carries one."""

    status: int = 180
    reason: str = ""
    sdp: SDP = None


@dataclass(frozen=True, slots=True)
class Connect:
    """The 2xx: to the initial INVITE, or to a re-INVITE (``Update``)."""

    sdp: SDP


@dataclass(frozen=True, slots=True)
class Update:
    """A new offer inside the call (re-INVITE); ``sdp`` None asks for one (RFC 3261
    §14: an INVITE without SDP)."""

    sdp: SDP


@dataclass(frozen=True, slots=True)
class Confirm:
    """The ACK of our 2xx (with the answer when we made the offer in the 2xx)."""

    sdp: SDP = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The call ends: BYE or CANCEL in (reported), or a BYE/CANCEL to send (asked)."""

    text: str
    """Why, for the log and the outcome."""
    reason: Header | None = None
    """The ``Reason`` header to send with the BYE (or the one received)."""
    cancelled: bool = False
    """A CANCEL, not a BYE (the caller gave up before the answer)."""


@dataclass(frozen=True, slots=True)
class Fail:
    """A final refusal: of the initial INVITE, or of an ``Update``."""

    status: int
    reason: str
    headers: tuple[Header, ...] = ()
    """Headers worth relaying (Retry-After, Warning, Reason)."""


@dataclass(frozen=True, slots=True)
class Withdraw:
    """An ``Update`` taken back: the peer CANCELled its re-INVITE (reported), or cancel
    our re-INVITE relaying it (asked). Its final answer still comes the usual way (487,
    or a 2xx that won the race, RFC 3261 §9.2)."""


LegEvent = Try | Ring | Connect | Update | Confirm | Disconnect | Fail | Withdraw


# -- SIP inputs (dialog -> leg) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InviteIn:
    """The dialog-creating INVITE arrived (UAS)."""

    sdp: SDP
    session: Session | None = None
    """The session timer negotiated for our 2xx (RFC 4028 §9), if any."""


@dataclass(frozen=True, slots=True)
class ReinviteIn:
    """A re-INVITE arrived inside the dialog (either leg)."""

    sdp: SDP


@dataclass(frozen=True, slots=True)
class UpdateIn:
    """An UPDATE with an offer arrived inside the dialog (RFC 3311; without SDP it is a
    plain 200, or a session refresh)."""

    sdp: SDP


@dataclass(frozen=True, slots=True)
class ResponseIn:
    """A response to our INVITE or re-INVITE."""

    status: int
    reason: str
    sdp: SDP = None
    headers: tuple[Header, ...] = ()
    session: Session | None = None
    """A 2xx's session timer (RFC 4028 §7.2), if it set one."""
    reliable: bool = False
    """A new reliable provisional (RFC 3262 ``Require: 100rel``): it gets a PRACK."""


@dataclass(frozen=True, slots=True)
class AckIn:
    """The ACK of our 2xx."""

    sdp: SDP = None


@dataclass(frozen=True, slots=True)
class ByeIn:
    """A BYE arrived (already answered 200 by the adapter)."""

    reason: Header | None = None


@dataclass(frozen=True, slots=True)
class CancelIn:
    """A CANCEL of the pending INVITE arrived."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """Our INVITE got no final answer (Timer B) or could not be sent."""

    transport_error: bool = False


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """Our 2xx was never ACKed (64*T1)."""


@dataclass(frozen=True, slots=True)
class PrackTimeout:
    """Our reliable 1xx was never PRACKed (64*T1, RFC 3262 §3): the INVITE gets a 5xx."""


@dataclass(frozen=True, slots=True)
class RefreshIn:
    """The peer refreshed the session (a re-INVITE or UPDATE, RFC 4028 §9)."""

    session: Session


@dataclass(frozen=True, slots=True)
class RefreshAnswered:
    """The answer to our session refresh: a 2xx (with the session it set, None: keep
    the current one), or a failure (``status`` None: no answer)."""

    status: int | None
    session: Session | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The leg's session timer reached its deadline (RFC 4028 §10)."""


SipInput = (InviteIn | ReinviteIn | UpdateIn | ResponseIn | AckIn | ByeIn | CancelIn | Timeout
            | AckTimeout | PrackTimeout | RefreshIn | RefreshAnswered | TimerFired)


# -- SIP actions (leg -> adapter) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendProvisional:
    status: int
    reason: str = ""
    sdp: SDP = None


@dataclass(frozen=True, slots=True)
class SendAnswer:
    """The 2xx to the pending INVITE (initial or re-INVITE)."""

    sdp: SDP


@dataclass(frozen=True, slots=True)
class SendReject:
    """A final error to the pending INVITE (initial or re-INVITE)."""

    status: int
    reason: str
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class SendInvite:
    """Our dialog-creating INVITE (again, CSeq + 1, when ``retry``)."""

    sdp: SDP
    retry: bool = False


@dataclass(frozen=True, slots=True)
class SendReinvite:
    sdp: SDP


@dataclass(frozen=True, slots=True)
class SendAck:
    """ACK a 2xx (of the initial INVITE or a re-INVITE)."""


@dataclass(frozen=True, slots=True)
class SendPrack:
    """PRACK the reliable provisional just received (RFC 3262 §4)."""


@dataclass(frozen=True, slots=True)
class SendRefresh:
    """Refresh the session (RFC 4028 §7.4): UPDATE, or a re-INVITE with our last SDP."""


@dataclass(frozen=True, slots=True)
class SendCancel:
    pass


@dataclass(frozen=True, slots=True)
class CancelReinvite:
    """CANCEL our pending re-INVITE (RFC 3261 §9.1)."""


@dataclass(frozen=True, slots=True)
class SendBye:
    reason: Header | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop the dialog without signalling (it is over on the wire)."""


@dataclass(frozen=True, slots=True)
class SendUpdateAnswer:
    """2xx to the peer's pending re-INVITE."""

    sdp: SDP
    """None: answer with what we last sent."""


@dataclass(frozen=True, slots=True)
class SendUpdateReject:
    """A final error to the peer's pending re-INVITE."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class RefuseReinvite:
    """A refusal of the re-INVITE or UPDATE that just came in (another offer/answer is
    under way): it answers that new request, not the pending one. 491 when the offer under
    way is ours; 500 with a random ``Retry-After`` of 0-10 s (``retry_after``, chosen by the
    adapter) when it is the peer's own earlier offer (RFC 3261 §14.2, RFC 3311 §5.2)."""

    status: int = 491
    reason: str = "Request Pending"
    retry_after: bool = False


@dataclass(frozen=True, slots=True)
class Emit:
    """A leg event reported to the call."""

    event: LegEvent


SipAction = (SendProvisional | SendAnswer | SendReject | SendInvite | SendReinvite | SendAck
             | SendPrack | SendRefresh | SendCancel | SendBye | Forget | SendUpdateAnswer
             | SendUpdateReject | RefuseReinvite | CancelReinvite)
LegAction = SipAction | Emit
