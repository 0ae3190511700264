"""What the call (``gateway.calls.call``) asks of the adapter, and the names it uses: the
roles of its two legs, its state as /status shows it, the bridge rewrites, the outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.calls.events import SipAction
from gateway.metrics import CallResult, RefusalReason
from media.sdp import SessionDescription

__all__ = [
    "BridgeOp",
    "CallAction",
    "CallState",
    "Connected",
    "Count",
    "Ended",
    "Outcome",
    "Phase",
    "ResetBridge",
    "Rewrite",
    "Role",
    "Started",
    "ToLeg",
]


class Role(enum.Enum):
    UAS = "uas"
    """The caller's leg."""
    UAC = "uac"
    """The callee's leg."""

    @property
    def other(self) -> Role:
        """The call's other leg."""
        return Role.UAC if self is Role.UAS else Role.UAS


class CallState(enum.Enum):
    """Where a call is, as /status shows it."""

    TRYING = "trying"
    RINGING = "ringing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class BridgeOp(enum.Enum):
    """Which ``SdpBridge`` rewrite (``gateway.sdp_bridge``) a :class:`Rewrite` asks for."""

    MICROSOFT_OFFER = "microsoft_offer"
    VIDEO_OFFER = "video_offer"
    DELAYED_OFFER = "delayed_offer"
    VIDEO_ANSWER = "video_answer"
    MICROSOFT_ANSWER = "microsoft_answer"
    DELAYED_VIDEO_OFFER = "delayed_video_offer"
    DELAYED_VIDEO_ANSWER = "delayed_video_answer"
    PLAIN_VIDEO_OFFER = "plain_video_offer"
    FINAL_ANSWER = "final_answer"
    """The 2xx's answer differs from the early one (183) already applied."""
    VIDEO_REANSWER = "video_reanswer"
    """The video side's ACK answers the offer of our 2xx to its re-INVITE without SDP."""
    MICROSOFT_REANSWER = "microsoft_reanswer"
    """The same from the Microsoft side."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: for the metrics and the log."""

    result: CallResult
    reason: str


# -- actions (call -> adapter) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToLeg:
    """A SIP action for one leg's dialog."""

    role: Role
    action: SipAction


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Run a bridge rewrite; its result comes back through ``rewritten`` /
    ``rewrite_failed``."""

    op: BridgeOp
    sdp: SessionDescription | None


@dataclass(frozen=True, slots=True)
class ResetBridge:
    """An offer/answer was abandoned: the bridge forgets its pending exchange."""


@dataclass(frozen=True, slots=True)
class Started:
    """Media is set up and the callee is being called: the call counts from now."""


@dataclass(frozen=True, slots=True)
class Connected:
    at: float


@dataclass(frozen=True, slots=True)
class Count:
    """A refusal counter to bump."""

    metric: RefusalReason


@dataclass(frozen=True, slots=True)
class Ended:
    """The call is over: close media, give ports back, count it, log it once."""

    outcome: Outcome


CallAction = ToLeg | Rewrite | ResetBridge | Started | Connected | Count | Ended


class Phase(enum.Enum):
    """Where a call is between its two legs (what it waits for)."""

    OFFER = "offer"  # the caller's offer is being rewritten (ports bound)
    RETRY = "retry"  # best effort: the plain-RTP offer is being written
    PLACING = "placing"  # the callee's INVITE is out
    EARLY_ANSWER = "early-answer"  # the callee's 183 SDP (early media) is being rewritten
    ANSWER = "answer"  # the callee's answer is being rewritten (media applied)
    ANSWERED = "answered"  # our 2xx is out to the caller
    DELAYED_ANSWER = "delayed-answer"  # the caller's ACK answer is being applied
    CONNECTED = "connected"
    UPDATE_OFFER = "update-offer"  # a re-INVITE's offer is being rewritten
    UPDATE_WAIT = "update-wait"  # the other leg's re-INVITE is out
    UPDATE_ANSWER = "update-answer"  # its answer is being rewritten
    REANSWER = "reanswer"  # the ACK's answer to our 2xx offer (re-INVITE without SDP) applied
    TRANSFER = "transfer"  # a REFER is being carried out (the adapter owns it)
    ENDED = "ended"
