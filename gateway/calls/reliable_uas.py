"""The caller's leg as UAS of RFC 3262 (100rel): what ``sip.reliable.ReliableProvisionalSender``
does for one reliable 1xx, stretched over a whole INVITE, sans-IO.

The sender allows one unacknowledged reliable 1xx at a time (§3); a call may ask for a 180
then a 183 with SDP before the first is PRACKed, so later ones wait here in order. The 2xx
waits here while a reliable 1xx is unacknowledged (§3 demands it for one with SDP), and
goes once the PRACK acknowledging the last one is answered. Time is passed in; the
adapter arms ``deadline`` and sends what comes out.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from sip.extensions import TAG_100REL, requires
from sip.message import Request, Response
from sip.reliable import PrackMatch, ReliableProvisionalSender

__all__ = ["ReliableUas", "wants_reliable"]

A = TypeVar("A")


def wants_reliable(invite: Request) -> bool:
    """Send 1xx reliably only when the caller *requires* it: with a mere ``Supported:
    100rel`` RFC 3262 §3 lets us choose, and unreliable 1xx cost the caller nothing."""
    return "Require" in invite.headers and requires(invite, TAG_100REL)


class ReliableUas(Generic[A]):
    """Reliable provisionals and the held 2xx (an action of type ``A``) for one INVITE."""

    __slots__ = ("sender", "_queue", "held", "timed_out")

    def __init__(self, invite: Request, *, t1: float = 0.5) -> None:
        self.sender = ReliableProvisionalSender(invite, t1=t1)
        self._queue: deque[Response] = deque()
        self.held: A | None = None
        """The 2xx waiting for the PRACK of a reliable 1xx with SDP."""
        self.timed_out = False

    def provisional(self, response: Response, now: float) -> list[Response]:
        """The 1xx to send now (made reliable), or nothing while another is unacknowledged."""
        if self.sender.outstanding:
            self._queue.append(response)
            return []
        return [self.sender.send(response, now)]

    def hold_answer(self, answer: A) -> bool:
        """True when the 2xx must wait (it is then kept as ``held``). §3 requires it only
        while a reliable 1xx *with SDP* is unacknowledged and allows it for any: we hold
        it for any, so the caller sees the PRACK's 200 and every 1xx before the 2xx."""
        if not self.sender.outstanding and not self._queue:
            return False
        self.held = answer
        return True

    def prack(self, prack: Request, now: float) -> tuple[int, list[Response], A | None]:
        """The status for the PRACK (200 or 481; ParseError for a missing or malformed
        RAck), the next queued 1xx to send, and the held 2xx now free to go."""
        if self.sender.receive_prack(prack) is PrackMatch.NO_MATCH:
            return 481, [], None
        if self._queue:
            return 200, [self.sender.send(self._queue.popleft(), now)], None
        held, self.held = self.held, None
        return 200, [], held

    def deadline(self) -> float | None:
        return self.sender.get_timer()

    def fire(self, now: float) -> list[Response]:
        """The retransmission due now; sets ``timed_out`` after 64*T1 without PRACK."""
        again = self.sender.handle_timer(now)
        if self.sender.timed_out:
            self.timed_out = True
            self._queue.clear()
        return [again] if again is not None else []

    def final_sent(self) -> None:
        """A final response went: nothing more is retransmitted or held."""
        self.sender.abandon()
        self._queue.clear()
        self.held = None
