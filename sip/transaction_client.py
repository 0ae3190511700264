"""Client transactions (RFC 3261 §17.1, with RFC 6026's Accepted state for INVITE)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sip.events import ResponseReceived, TransactionTimeout
from sip.message import Headers, Request, Response
from sip.timers import Timer, TimerSettings
from sip.transaction import Transaction, TransactionKey, transition

if TYPE_CHECKING:
    from sip.transaction_layer import Outbox

__all__ = [
    "INVITE_CLIENT_TABLE",
    "NON_INVITE_CLIENT_TABLE",
    "ClientInput",
    "ClientState",
    "ClientTransaction",
    "make_ack_for_failure",
]

logger = logging.getLogger(__name__)


class ClientState(enum.Enum):
    """States of the INVITE (Calling...) and non-INVITE (Trying...) client transactions."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class ClientInput(enum.Enum):
    """What can happen to a client transaction."""

    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "300-699"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_C = "Timer C"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_K = "Timer K"
    TIMER_M = "Timer M"
    TRANSPORT_ERROR = "transport error"


_C = ClientState
_I = ClientInput

# RFC 3261 figure 5, with RFC 6026 figure 5's Accepted state replacing "2xx -> Terminated".
INVITE_CLIENT_TABLE: Mapping[ClientState, Mapping[ClientInput, ClientState]] = {
    _C.CALLING: {
        _I.TIMER_A: _C.CALLING,
        _I.PROVISIONAL: _C.PROCEEDING,
        _I.SUCCESS: _C.ACCEPTED,
        _I.FAILURE: _C.COMPLETED,
        _I.TIMER_B: _C.TERMINATED,
        _I.TRANSPORT_ERROR: _C.TERMINATED,
    },
    _C.PROCEEDING: {
        _I.PROVISIONAL: _C.PROCEEDING,
        _I.SUCCESS: _C.ACCEPTED,
        _I.FAILURE: _C.COMPLETED,
        _I.TIMER_C: _C.PROCEEDING,  # the layer CANCELs and arms Timer B
        _I.TIMER_B: _C.TERMINATED,
        _I.TRANSPORT_ERROR: _C.TERMINATED,
    },
    _C.COMPLETED: {
        _I.FAILURE: _C.COMPLETED,  # retransmitted final response: ACK again
        _I.TIMER_D: _C.TERMINATED,
        _I.TRANSPORT_ERROR: _C.TERMINATED,
    },
    _C.ACCEPTED: {
        _I.SUCCESS: _C.ACCEPTED,  # 2xx retransmissions and other forks go to the TU
        _I.TIMER_M: _C.TERMINATED,
    },
    _C.TERMINATED: {},
}

# RFC 3261 figure 6.
NON_INVITE_CLIENT_TABLE: Mapping[ClientState, Mapping[ClientInput, ClientState]] = {
    _C.TRYING: {
        _I.TIMER_E: _C.TRYING,
        _I.PROVISIONAL: _C.PROCEEDING,
        _I.SUCCESS: _C.COMPLETED,
        _I.FAILURE: _C.COMPLETED,
        _I.TIMER_F: _C.TERMINATED,
        _I.TRANSPORT_ERROR: _C.TERMINATED,
    },
    _C.PROCEEDING: {
        _I.TIMER_E: _C.PROCEEDING,
        _I.PROVISIONAL: _C.PROCEEDING,
        _I.SUCCESS: _C.COMPLETED,
        _I.FAILURE: _C.COMPLETED,
        _I.TIMER_F: _C.TERMINATED,
        _I.TRANSPORT_ERROR: _C.TERMINATED,
    },
    _C.COMPLETED: {
        _I.SUCCESS: _C.COMPLETED,  # retransmitted final responses are absorbed
        _I.FAILURE: _C.COMPLETED,
        _I.PROVISIONAL: _C.COMPLETED,
        _I.TIMER_K: _C.TERMINATED,
    },
    _C.TERMINATED: {},
}

_TIMER_INPUTS = {
    Timer.A: _I.TIMER_A,
    Timer.B: _I.TIMER_B,
    Timer.C: _I.TIMER_C,
    Timer.D: _I.TIMER_D,
    Timer.E: _I.TIMER_E,
    Timer.F: _I.TIMER_F,
    Timer.K: _I.TIMER_K,
    Timer.M: _I.TIMER_M,
}


def classify_response(status: int) -> ClientInput:
    """Map a status code to the table input it is."""
    if status < 200:
        return _I.PROVISIONAL
    if status < 300:
        return _I.SUCCESS
    return _I.FAILURE


def make_ack_for_failure(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID, From, CSeq number and single top Via as the INVITE, the To of
    the response (with its tag), the INVITE's Route headers, no body.
    """
    # Only the top Via: getlist splits a comma-joined Via line into its values.
    headers = Headers()
    headers.add("Via", request.headers.getlist("Via")[0])
    headers.add("Max-Forwards", "70")
    for name, value in request.headers:
        if name.lower() == "route":
            headers.add("Route", value)
    headers.add("From", _raw(request, "From"))
    headers.add("To", _raw(response, "To"))
    headers.add("Call-ID", _raw(request, "Call-ID"))
    headers.add("CSeq", f"{request.cseq.seq} ACK")
    return Request("ACK", request.uri, headers)


def _raw(message: Request | Response, name: str) -> str:
    value = message.headers.get(name)
    if value is None:
        raise ValueError(f"message has no {name} header")
    return value


class ClientTransaction(Transaction[ClientState, ClientInput]):
    """One client transaction; created and driven only by ``TransactionLayer``.

    The TU reads ``request`` (what this transaction sends and retransmits), ``state``,
    ``destination`` and ``last_response`` (the most recent response passed to the TU);
    identity is the object itself (hashable by id). Once only retransmissions are left to
    absorb (non-INVITE Completed, INVITE Accepted) both messages are kept as bytes (``slim``):
    reading them then parses them again.
    """

    __slots__ = ("_seen_2xx", "ack", "acks", "destination")

    INVITE_TABLE = INVITE_CLIENT_TABLE
    NON_INVITE_TABLE = NON_INVITE_CLIENT_TABLE
    TIMER_INPUTS = _TIMER_INPUTS
    TRANSPORT_ERROR = _I.TRANSPORT_ERROR
    TERMINATED = _C.TERMINATED

    def __init__(
        self,
        request: Request,
        destination: Any,
        reliable: bool,
        settings: TimerSettings,
        outbox: Outbox,
    ) -> None:
        super().__init__(
            request,
            TransactionKey.for_client_request(request),
            reliable,
            settings,
            outbox,
            invite_state=_C.CALLING,
            non_invite_state=_C.TRYING,
        )
        self.destination = destination
        """Where the request goes (opaque to the layer)."""
        self.ack: Request | None = None
        """The ACK this transaction generated for a 300-699 response, if any."""
        self.acks: dict[str, tuple[Request, Any]] = {}
        """ACKs the TU sent for 2xx responses, by To tag, with their destination."""
        self._seen_2xx: set[str] = set()

    def start(self, now: float) -> None:
        """Send the request and arm the first timers (§17.1.1.2 / §17.1.2.2)."""
        self._outbox.send(self.request, self.destination)
        timeout = self._settings.timeout
        if self.is_invite:
            if not self.reliable:
                self.timers[Timer.A] = now + self._interval
            self.timers[Timer.B] = now + timeout
        else:
            if not self.reliable:
                self.timers[Timer.E] = now + self._interval
            self.timers[Timer.F] = now + timeout

    def receive_response(self, response: Response, now: float) -> None:
        """Handle a response matched to this transaction (raises on a table miss)."""
        event = classify_response(response.status)
        previous = self.state
        self.state = transition(self.table, previous, event)
        if self.is_invite:
            self._invite_response(previous, event, response, now)
        else:
            self._non_invite_response(previous, event, response, now)

    def _invite_response(
        self, previous: ClientState, event: ClientInput, response: Response, now: float
    ) -> None:
        if event is _I.PROVISIONAL:
            # No retransmissions in Proceeding (§17.1.1.2); Timer B only guards Calling, and
            # Timer C (re)starts with each provisional.
            self.timers.pop(Timer.A, None)
            self.timers.pop(Timer.B, None)
            self.timers[Timer.C] = now + self._settings.timer_c
            self._to_tu(response)
        elif event is _I.SUCCESS:
            self.timers.pop(Timer.A, None)
            self.timers.pop(Timer.B, None)
            self.timers.pop(Timer.C, None)
            if previous is not _C.ACCEPTED:
                self.timers[Timer.M] = now + self._settings.timeout
            tag = response.to.tag or ""
            registered = self.acks.get(tag)
            if registered is not None:
                # §13.2.2.4: a retransmitted 2xx is answered with the same ACK again.
                self._outbox.send(*registered)
                return
            retransmission = tag in self._seen_2xx
            self._seen_2xx.add(tag)
            self.last_response = response
            self._outbox.event(ResponseReceived(self, response, retransmission))
            # Accepted only matches 2xx by To tag and re-sends registered ACKs: the event
            # holds the response, ClientRequest the INVITE.
            self.slim()
        elif previous is _C.COMPLETED:
            # A retransmitted final response: send the same ACK again, the TU is not told.
            if self.ack is not None:
                self._outbox.send(self.ack, self.destination)
        else:
            self.timers.pop(Timer.A, None)
            self.timers.pop(Timer.B, None)
            self.timers.pop(Timer.C, None)
            self.ack = make_ack_for_failure(self.request, response)
            self._outbox.send(self.ack, self.destination)
            self._to_tu(response)
            self._arm_or_terminate(Timer.D, self._settings.wait_d(self.reliable), now)

    def _non_invite_response(
        self, previous: ClientState, event: ClientInput, response: Response, now: float
    ) -> None:
        if previous is _C.COMPLETED:
            return  # absorbed
        if event is _I.PROVISIONAL:
            self._to_tu(response)
            return
        self.timers.pop(Timer.E, None)
        self.timers.pop(Timer.F, None)
        self._to_tu(response)
        self._arm_or_terminate(Timer.K, self._settings.wait_k(self.reliable), now)
        if self.state is _C.COMPLETED:
            self.slim()  # Completed absorbs every response until Timer K

    def fire(self, timer: Timer, now: float) -> None:
        """A timer's deadline passed."""
        self.timers.pop(timer, None)
        previous = self.state
        self.state = transition(self.table, previous, _TIMER_INPUTS[timer])
        if timer is Timer.A:
            self._outbox.send(self.request, self.destination)
            self._interval = self._settings.next_interval(self._interval, cap=False)
            self.timers[Timer.A] = now + self._interval
        elif timer is Timer.E:
            self._outbox.send(self.request, self.destination)
            if previous is _C.PROCEEDING:
                self._interval = self._settings.t2
            else:
                self._interval = self._settings.next_interval(self._interval)
            self.timers[Timer.E] = now + self._interval
        elif timer is Timer.C:
            self.timers[Timer.B] = now + self._settings.timeout
        elif timer in (Timer.B, Timer.F):
            self._outbox.event(TransactionTimeout(self))
            self._terminated()
        else:  # D, K, M
            self._terminated()

    def _to_tu(self, response: Response) -> None:
        self.last_response = response
        self._outbox.event(ResponseReceived(self, response))
