"""Reliable provisional responses (RFC 3262, "100rel"), sans-IO.

UAC side (:class:`ProvisionalAcceptor`): classifies each 1xx to our INVITE as unreliable,
new (answer it with the PRACK that :meth:`ProvisionalAcceptor.prack` builds inside the
early dialog), a retransmission or out of order (§4: neither is acknowledged nor processed
further). The PRACK is an ordinary non-INVITE request: the transaction layer gives it its
own client transaction and retransmits it (Timer E), so a lost PRACK needs nothing here.

UAS side (:class:`ReliableProvisionalSender`): numbers reliable 1xx with RSeq, retransmits
the unacknowledged one (T1 doubling, §3) until its PRACK, gives up after 64*T1 (the TU then
answers the INVITE 5xx), matches PRACKs by RAck (200, else 481), and says when a 2xx may
be sent (§3: not while an unacknowledged reliable 1xx carried SDP).
"""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass

from sip.dialog import Dialog
from sip.errors import LocalProtocolError, ParseError
from sip.extensions import TAG_100REL, requires
from sip.message import Request, Response

__all__ = [
    "RAck",
    "ProvisionalAcceptor",
    "ProvisionalKind",
    "PrackMatch",
    "ReliableProvisionalSender",
    "parse_rseq",
]

_MAX_RESPONSE_NUM = 2**32 - 1
# RFC 3262 §7.1: RSeq = "RSeq" HCOLON response-num; response-num = 1*DIGIT
_RSEQ = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*")
# §7.2: RAck = "RAck" HCOLON response-num LWS CSeq-num LWS Method
_RACK = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+([0-9]{1,10})[ \t]+([A-Za-z0-9.!%*_+`'~-]+)[ \t]*")


def parse_rseq(text: str) -> int:
    """The value of an RSeq header (1 .. 2**32-1); raises ParseError."""
    m = _RSEQ.fullmatch(text)
    if m is None or not 1 <= int(m[1]) <= _MAX_RESPONSE_NUM:
        raise ParseError(f"malformed RSeq {text[:40]!r}")
    return int(m[1])


@dataclass(frozen=True, slots=True)
class RAck:
    """``RAck: response-num CSeq-num Method`` (RFC 3262 §7.2): which 1xx a PRACK acknowledges."""

    rseq: int
    """The RSeq of the acknowledged provisional response."""
    cseq: int
    """The CSeq number of the request it answered (the INVITE)."""
    method: str
    """That request's method (INVITE)."""

    @classmethod
    def parse(cls, text: str) -> RAck:
        m = _RACK.fullmatch(text)
        if m is None:
            raise ParseError(f"malformed RAck {text[:60]!r}")
        rseq, cseq = int(m[1]), int(m[2])
        if not 1 <= rseq <= _MAX_RESPONSE_NUM or cseq >= 2**31:
            raise ParseError("RAck number out of range")
        return cls(rseq, cseq, m[3])

    @classmethod
    def of(cls, response: Response) -> RAck:
        """The RAck acknowledging ``response`` (which must carry RSeq)."""
        value = response.headers.get("RSeq")
        if value is None:
            raise ParseError("reliable provisional response without RSeq")
        return cls(parse_rseq(value), response.cseq.seq, response.cseq.method)

    def __str__(self) -> str:
        return f"{self.rseq} {self.cseq} {self.method}"


# -- UAC ---------------------------------------------------------------------------------


class ProvisionalKind(enum.Enum):
    """What a received 1xx is, for the UAC (RFC 3262 §4)."""

    UNRELIABLE = "unreliable"
    """No ``Require: 100rel`` (or a 100, never sent reliably): process it, no PRACK."""
    NEW = "new"
    """The next reliable 1xx in order: process it and send the PRACK."""
    RETRANSMISSION = "retransmission"
    """Same dialog, CSeq and RSeq as one already received: discard (the PRACK's own
    transaction takes care of a lost PRACK)."""
    OUT_OF_ORDER = "out of order"
    """RSeq not one above the last in-order one: neither PRACKed nor processed."""
    INVALID = "invalid"
    """``Require: 100rel`` without a valid RSeq, or for another request than ours: discard."""


class ProvisionalAcceptor:
    """The UAC's RSeq bookkeeping for one INVITE (RFC 3262 §4), per early dialog (To tag):
    forked 1xx from different UASs each have their own RSeq space."""

    __slots__ = ("invite", "_last")

    def __init__(self, invite: Request) -> None:
        self.invite = invite
        """The INVITE whose provisional responses are checked."""
        self._last: dict[str, int] = {}

    def classify(self, response: Response) -> ProvisionalKind:
        """Classify a 1xx to our INVITE and account it when it is NEW."""
        if not 100 < response.status < 200 or not requires(response, TAG_100REL):
            return ProvisionalKind.UNRELIABLE
        cseq = response.cseq
        if cseq.method != self.invite.method or cseq.seq != self.invite.cseq.seq:
            return ProvisionalKind.INVALID
        if response.to.tag is None:
            return ProvisionalKind.INVALID  # §3: a reliable 1xx creates an early dialog
        try:
            rseq = RAck.of(response).rseq
        except ParseError:
            return ProvisionalKind.INVALID
        tag = response.to.tag
        last = self._last.get(tag)
        if last is None or rseq == last + 1:
            self._last[tag] = rseq
            return ProvisionalKind.NEW
        if rseq <= last:
            return ProvisionalKind.RETRANSMISSION
        return ProvisionalKind.OUT_OF_ORDER

    def last_rseq(self, to_tag: str) -> int | None:
        """The RSeq of the last in-order reliable 1xx from the early dialog ``to_tag``."""
        return self._last.get(to_tag)

    @staticmethod
    def prack(
        dialog: Dialog,
        response: Response,
        *,
        via: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The PRACK for ``response`` inside ``dialog`` (the early dialog it created, see
        ``Dialog.create_uac``): next local CSeq, the dialog's route set, ``RAck``. A body
        answers an offer in the 1xx, or makes a new offer once it is answered (§5)."""
        return dialog.create_request(
            "PRACK",
            via=via,
            body=body,
            content_type=content_type,
            headers=(("RAck", str(RAck.of(response))),),
        )


# -- UAS ---------------------------------------------------------------------------------


class PrackMatch(enum.Enum):
    """How the UAS answers a PRACK (RFC 3262 §3)."""

    ACKNOWLEDGED = 200
    """It matches the unacknowledged 1xx: retransmissions stop; answer 200."""
    NO_MATCH = 481
    """Nothing pending with that RAck (a late or stray PRACK): answer 481."""


@dataclass(slots=True)
class _Pending:
    response: Response
    rack: RAck
    has_sdp: bool
    interval: float
    next_send: float
    give_up: float


class ReliableProvisionalSender:
    """The UAS side of 100rel for one INVITE: RSeq numbering, retransmission, PRACK matching.

    ``send(response, now)`` returns the 1xx with ``Require: 100rel`` and ``RSeq`` to hand to
    the transaction layer; ``get_timer()`` / ``handle_timer(now)`` return the retransmission
    (or ``None``); ``timed_out`` turns True after 64*T1 without PRACK (§3: the TU rejects
    the INVITE with a 5xx). Only one reliable 1xx is outstanding at a time (§3).
    """

    __slots__ = ("invite", "t1", "_next_rseq", "_pending", "_acked_sdp", "timed_out")

    def __init__(self, invite: Request, *, t1: float = 0.5, first_rseq: int | None = None) -> None:
        self.invite = invite
        """The INVITE being answered."""
        self.t1 = t1
        """RFC 3261 T1: the first retransmission interval."""
        # §3: the first RSeq is chosen between 1 and 2**31 - 1.
        self._next_rseq = first_rseq if first_rseq is not None else secrets.randbelow(2**31 - 1) + 1
        self._pending: _Pending | None = None
        self._acked_sdp = False
        self.timed_out = False
        """True when a reliable 1xx went unacknowledged for 64*T1."""

    @property
    def outstanding(self) -> bool:
        """A reliable 1xx awaits its PRACK (no other may be sent yet)."""
        return self._pending is not None

    def send(self, response: Response, now: float) -> Response:
        """Make ``response`` (a 101-199 with To tag) reliable and start retransmitting it."""
        if not 100 < response.status < 200:
            raise LocalProtocolError("only 101-199 responses are sent reliably", 500)
        if response.to.tag is None:
            raise LocalProtocolError("a reliable 1xx needs a To tag (it creates a dialog)", 500)
        if self._pending is not None:
            raise LocalProtocolError("a reliable 1xx is still unacknowledged (RFC 3262 §3)", 500)
        if self._next_rseq > _MAX_RESPONSE_NUM:
            raise LocalProtocolError("RSeq space exhausted", 500)
        reliable = response.copy()
        if not requires(reliable, TAG_100REL):
            reliable.headers.add("Require", TAG_100REL)
        reliable.headers.set("RSeq", str(self._next_rseq))
        rack = RAck(self._next_rseq, self.invite.cseq.seq, self.invite.method)
        self._next_rseq += 1
        self._pending = _Pending(
            reliable, rack, _has_sdp(reliable), self.t1, now + self.t1, now + 64 * self.t1
        )
        return reliable

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (None: nothing outstanding)."""
        pending = self._pending
        if pending is None:
            return None
        return min(pending.next_send, pending.give_up)

    def handle_timer(self, now: float) -> Response | None:
        """The 1xx to retransmit now, if any; after 64*T1 sets ``timed_out`` and stops."""
        pending = self._pending
        if pending is None:
            return None
        if now >= pending.give_up:
            self._pending = None
            self.timed_out = True
            return None
        if now < pending.next_send:
            return None
        pending.interval *= 2  # §3: doubles for each retransmission, no T2 cap
        pending.next_send = now + pending.interval
        return pending.response

    def receive_prack(self, prack: Request) -> PrackMatch:
        """Match a PRACK by its RAck; raises ParseError when RAck is absent or malformed."""
        value = prack.headers.get("RAck")
        if value is None:
            raise ParseError("PRACK without RAck")
        rack = RAck.parse(value)
        pending = self._pending
        if pending is None or rack != pending.rack:
            return PrackMatch.NO_MATCH
        self._pending = None
        self._acked_sdp = self._acked_sdp or pending.has_sdp
        return PrackMatch.ACKNOWLEDGED

    def may_send_final(self, status: int) -> bool:
        """§3: a 2xx must wait while an unacknowledged reliable 1xx carried SDP; other
        finals may go at once (they end the retransmissions: call ``abandon``)."""
        pending = self._pending
        return not (200 <= status < 300 and pending is not None and pending.has_sdp)

    def abandon(self) -> None:
        """A final response was sent: stop retransmitting."""
        self._pending = None


def _has_sdp(message: Request | Response) -> bool:
    content_type = message.content_type or ""
    return bool(message.body) and "application/sdp" in content_type.lower()
