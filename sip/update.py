"""In-dialog UPDATE (RFC 3311) and the offer/answer rules shared with re-INVITE
(RFC 3261 §14, RFC 3264, RFC 6337): building an UPDATE, whether one may carry an offer,
how an incoming offer is refused while another is outstanding (491 glare, or 500 with
Retry-After), and how long to wait before retrying after a 491.

The offer/answer state of a session belongs to the caller (the gateway's leg machines);
this module only turns that state into SIP decisions.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sip.dialog import Dialog, DialogState
from sip.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from sip.message import Request, Response

__all__ = [
    "OFFER_TABLE",
    "SDP",
    "OfferAnswer",
    "OfferEvent",
    "OfferState",
    "Refusal",
    "can_send_update",
    "ends_dialog",
    "glare_retry_delay",
    "has_sdp",
    "make_update",
    "refuse_offer",
]

SDP = "application/sdp"


class OfferState(enum.Enum):
    """Where a session's offer/answer exchange is (RFC 3264 §4, RFC 6337 §3)."""

    STABLE = "stable"
    """No offer outstanding: either side may make one."""
    LOCAL_OFFER = "local offer"
    """We sent an offer that has no answer yet."""
    REMOTE_OFFER = "remote offer"
    """We received an offer we have not answered yet."""


class OfferEvent(enum.Enum):
    """What moves a session's offer/answer state (RFC 3264, RFC 6337 §3)."""

    SEND_OFFER = "we send an offer"
    RECEIVE_OFFER = "an offer arrives"
    SEND_ANSWER = "we answer the peer's offer"
    RECEIVE_ANSWER = "the answer to our offer arrives"
    OFFER_REFUSED = "our offer was refused (non-2xx, 491): the old session stands"
    REFUSE_OFFER = "we refused the peer's offer: the old session stands"


_S = OfferState
_E = OfferEvent

OFFER_TABLE: Mapping[OfferState, Mapping[OfferEvent, OfferState]] = {
    _S.STABLE: {_E.SEND_OFFER: _S.LOCAL_OFFER, _E.RECEIVE_OFFER: _S.REMOTE_OFFER},
    _S.LOCAL_OFFER: {_E.RECEIVE_ANSWER: _S.STABLE, _E.OFFER_REFUSED: _S.STABLE},
    _S.REMOTE_OFFER: {_E.SEND_ANSWER: _S.STABLE, _E.REFUSE_OFFER: _S.STABLE},
}
"""Every offer/answer transition; a pair missing here is a protocol error."""


class OfferAnswer:
    """One session's offer/answer state, moved through :data:`OFFER_TABLE`.

    A leg machine that keeps its own state can use the table alone; this wrapper raises
    ``LocalProtocolError`` (500) for our own out-of-turn move and ``RemoteProtocolError``
    for the peer's (an answer with no offer outstanding: 400; an offer while one is
    outstanding: check :func:`refuse_offer` first, which gives the 491 / 500 to send).
    """

    __slots__ = ("state",)

    _REMOTE = frozenset({OfferEvent.RECEIVE_OFFER, OfferEvent.RECEIVE_ANSWER})

    def __init__(self, state: OfferState = OfferState.STABLE) -> None:
        self.state = state

    def apply(self, event: OfferEvent) -> OfferState:
        """Move on ``event``; returns the new state."""
        following = OFFER_TABLE[self.state].get(event)
        if following is None:
            error: type[ProtocolError] = (
                RemoteProtocolError if event in self._REMOTE else LocalProtocolError
            )
            status = 400 if event is OfferEvent.RECEIVE_ANSWER else 500
            if event is OfferEvent.RECEIVE_OFFER:
                status = 491 if self.state is OfferState.LOCAL_OFFER else 500
            raise error(f"offer/answer: cannot {event.value} in state {self.state.value}", status)
        self.state = following
        return following


@dataclass(frozen=True, slots=True)
class Refusal:
    """The response that refuses an incoming request carrying an offer."""

    status: int
    """491 or 500."""
    reason: str
    """Reason phrase."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers (Retry-After for the 500)."""


def has_sdp(message: Request | Response) -> bool:
    """True when the body is a session description (an offer or an answer)."""
    content_type = (message.content_type or "").split(";", 1)[0].strip().lower()
    return bool(message.body) and content_type == SDP


def refuse_offer(
    state: OfferState, request: Request, *, rng: random.Random | None = None
) -> Refusal | None:
    """How to refuse an UPDATE or re-INVITE carrying an offer, or None to accept it.

    RFC 3311 §5.2 (and RFC 3261 §14.2 for re-INVITE): an offer arriving while our own offer
    is unanswered is glare, 491 Request Pending; one arriving while we still owe an answer
    to the peer's previous offer gets 500 with a Retry-After between 0 and 10 s. An UPDATE
    without a body changes no session and is never refused here.
    """
    if not has_sdp(request):
        return None
    if state is OfferState.LOCAL_OFFER:
        return Refusal(491, "Request Pending")
    if state is OfferState.REMOTE_OFFER:
        seconds = (rng or random).randint(0, 10)
        return Refusal(
            500, "Server Internal Error: previous offer not yet answered",
            (("Retry-After", str(seconds)),),
        )
    return None


def can_send_update(dialog: Dialog, *, peer_allows: bool | None, offer: bool,
                    state: OfferState) -> bool:
    """Whether we may send an UPDATE now (RFC 3311 §5.1).

    The dialog must be early or confirmed, the peer must not have left UPDATE out of its
    ``Allow`` (``peer_allows`` from ``sip.extensions.allows``; None = unknown, tried), and an
    UPDATE carrying an offer needs a stable offer/answer state (no offer outstanding either
    way). An UPDATE without SDP (a session-timer refresh) needs only the dialog.
    """
    if dialog.state is DialogState.TERMINATED or peer_allows is False:
        return False
    return not offer or state is OfferState.STABLE


def make_update(
    dialog: Dialog,
    *,
    via: str | None = None,
    sdp: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
) -> Request:
    """An UPDATE in ``dialog`` (early or confirmed), with ``sdp`` as the offer when given.

    It is a target refresh request: ``Dialog.create_request`` adds our Contact, and the 2xx
    (``Dialog.receive_response``) or the received UPDATE (``Dialog.receive_request``)
    replaces the remote target.
    """
    if dialog.state is DialogState.TERMINATED:
        raise LocalProtocolError("cannot send UPDATE in a terminated dialog", 500)
    return dialog.create_request(
        "UPDATE", via=via, body=sdp, content_type=SDP if sdp else None, headers=headers
    )


def glare_retry_delay(dialog: Dialog, *, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying an offer refused with 491 (RFC 3261 §14.1).

    The owner of the Call-ID (the UA that sent the dialog-creating INVITE) waits 2.1 to
    4 s, the other 0 to 2 s, both in units of 10 ms, so the two ends do not collide again.
    """
    pick = rng or random
    if dialog.is_uac:
        return pick.randint(210, 400) / 100
    return pick.randint(0, 200) / 100


def ends_dialog(response: Response) -> bool:
    """A 481 or 408 to a request inside a dialog ends it (RFC 3261 §12.2.1.2); for a
    session refresh RFC 4028 §10 asks for a BYE."""
    return response.status in (408, 481)
