"""Server transactions (RFC 3261 §17.2, with RFC 6026's Accepted state for INVITE).

One addition to the RFC's server transaction: in Accepted, the INVITE server transaction
itself retransmits the TU's 2xx (T1 doubling, capped at T2) until the ACK arrives or Timer L
(64*T1) fires; that is the UAS core's job in §13.3.1.4, kept here so that one object owns the
timer, and Timer L is exactly the §13.3.1.4 give-up (reported as ``AckTimeout``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sip.errors import LocalProtocolError
from sip.events import AckTimeout, TransactionTimeout
from sip.message import Request, Response, make_response
from sip.timers import Timer, TimerSettings
from sip.transaction import Transaction, TransactionKey, transition

if TYPE_CHECKING:
    from sip.transaction_layer import Outbox

__all__ = [
    "INVITE_SERVER_TABLE",
    "NON_INVITE_SERVER_TABLE",
    "ServerInput",
    "ServerState",
    "ServerTransaction",
]

logger = logging.getLogger(__name__)


class ServerState(enum.Enum):
    """States of the INVITE (Proceeding...) and non-INVITE (Trying...) server transactions."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class ServerInput(enum.Enum):
    """What can happen to a server transaction."""

    REQUEST = "request retransmission"
    ACK = "ACK"
    SEND_PROVISIONAL = "TU sends 1xx"
    SEND_SUCCESS = "TU sends 2xx"
    SEND_FAILURE = "TU sends 300-699"
    TIMER_TRYING = "Trying timer"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_L = "Timer L"
    TIMER_2XX = "2xx retransmit timer"
    TRANSPORT_ERROR = "transport error"


_S = ServerState
_I = ServerInput

# RFC 3261 figure 7 with RFC 6026 figure 7 (Accepted).
INVITE_SERVER_TABLE: Mapping[ServerState, Mapping[ServerInput, ServerState]] = {
    _S.PROCEEDING: {
        _I.REQUEST: _S.PROCEEDING,
        _I.TIMER_TRYING: _S.PROCEEDING,
        _I.SEND_PROVISIONAL: _S.PROCEEDING,
        _I.SEND_SUCCESS: _S.ACCEPTED,
        _I.SEND_FAILURE: _S.COMPLETED,
        _I.TRANSPORT_ERROR: _S.TERMINATED,
    },
    _S.COMPLETED: {
        _I.REQUEST: _S.COMPLETED,
        _I.ACK: _S.CONFIRMED,
        _I.TIMER_G: _S.COMPLETED,
        _I.TIMER_H: _S.TERMINATED,
        _I.TRANSPORT_ERROR: _S.TERMINATED,
    },
    _S.CONFIRMED: {
        _I.REQUEST: _S.CONFIRMED,
        _I.ACK: _S.CONFIRMED,
        _I.TIMER_I: _S.TERMINATED,
    },
    _S.ACCEPTED: {
        _I.REQUEST: _S.ACCEPTED,
        _I.ACK: _S.ACCEPTED,
        _I.SEND_SUCCESS: _S.ACCEPTED,
        _I.TIMER_2XX: _S.ACCEPTED,
        _I.TIMER_L: _S.TERMINATED,
    },
    _S.TERMINATED: {},
}

# RFC 3261 figure 8.
NON_INVITE_SERVER_TABLE: Mapping[ServerState, Mapping[ServerInput, ServerState]] = {
    _S.TRYING: {
        _I.REQUEST: _S.TRYING,
        _I.SEND_PROVISIONAL: _S.PROCEEDING,
        _I.SEND_SUCCESS: _S.COMPLETED,
        _I.SEND_FAILURE: _S.COMPLETED,
        _I.TRANSPORT_ERROR: _S.TERMINATED,
    },
    _S.PROCEEDING: {
        _I.REQUEST: _S.PROCEEDING,
        _I.SEND_PROVISIONAL: _S.PROCEEDING,
        _I.SEND_SUCCESS: _S.COMPLETED,
        _I.SEND_FAILURE: _S.COMPLETED,
        _I.TRANSPORT_ERROR: _S.TERMINATED,
    },
    _S.COMPLETED: {
        _I.REQUEST: _S.COMPLETED,
        _I.TIMER_J: _S.TERMINATED,
        _I.TRANSPORT_ERROR: _S.TERMINATED,
    },
    _S.TERMINATED: {},
}

_TIMER_INPUTS = {
    Timer.TRYING: _I.TIMER_TRYING,
    Timer.G: _I.TIMER_G,
    Timer.H: _I.TIMER_H,
    Timer.I: _I.TIMER_I,
    Timer.J: _I.TIMER_J,
    Timer.L: _I.TIMER_L,
    Timer.RETRANSMIT_2XX: _I.TIMER_2XX,
}


def classify_sent(status: int) -> ServerInput:
    """Map the status of a response the TU sends to the table input it is."""
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"invalid response status {status}", 500)
    if status < 200:
        return _I.SEND_PROVISIONAL
    if status < 300:
        return _I.SEND_SUCCESS
    return _I.SEND_FAILURE


class ServerTransaction(Transaction[ServerState, ServerInput]):
    """One server transaction; created and driven only by ``TransactionLayer``.

    ``request`` is the request that created it, ``last_response`` the most recent response
    the TU sent; in Confirmed, and in Accepted once the ACK came, both are kept as bytes
    (``slim``) and parsed again if read. The TU answers through
    ``TransactionLayer.send_response(tx, response, now)``.
    """

    __slots__ = ("ack_received", "response_destination", "source")

    INVITE_TABLE = INVITE_SERVER_TABLE
    NON_INVITE_TABLE = NON_INVITE_SERVER_TABLE
    TIMER_INPUTS = _TIMER_INPUTS
    TRANSPORT_ERROR = _I.TRANSPORT_ERROR
    TERMINATED = _S.TERMINATED

    def __init__(
        self,
        request: Request,
        source: Any,
        response_destination: Any,
        reliable: bool,
        settings: TimerSettings,
        outbox: Outbox,
    ) -> None:
        super().__init__(
            request,
            TransactionKey.for_server(request),
            reliable,
            settings,
            outbox,
            invite_state=_S.PROCEEDING,
            non_invite_state=_S.TRYING,
        )
        self.source = source
        """Where the request came from."""
        self.response_destination = response_destination
        """Where responses go (§18.2.2: the connection, or the Via's received/rport)."""
        self.ack_received = False
        """Accepted state: whether the ACK for the 2xx arrived."""

    def start(self, now: float) -> None:
        """Arm the 100 Trying timer of an INVITE (§17.2.1)."""
        if self.is_invite:
            self.timers[Timer.TRYING] = now + self._settings.trying_delay

    def receive_request(self, request: Request, now: float) -> None:
        """A retransmission of the request (or, for INVITE, an ACK for a non-2xx)."""
        event = _I.ACK if request.method == "ACK" else _I.REQUEST
        previous = self.state
        self.state = transition(self.table, previous, event)
        if event is _I.ACK:
            if previous is _S.COMPLETED:
                self.timers.pop(Timer.G, None)
                self.timers.pop(Timer.H, None)
                self._arm_or_terminate(Timer.I, self._settings.wait_i(self.reliable), now)
                if self.state is _S.CONFIRMED:
                    self.slim()  # Confirmed only absorbs ACKs until Timer I
            return
        # §17.2.1 / §17.2.2: Proceeding resends the latest provisional, Completed the final;
        # Trying, Confirmed and Accepted absorb.
        if previous in (_S.PROCEEDING, _S.COMPLETED) and self.last_response is not None:
            self._send(self.last_response)

    def send_response(self, response: Response, now: float) -> None:
        """The TU's response (raises ``LocalProtocolError`` when the state does not allow it)."""
        if response.cseq.method != self.method:
            raise LocalProtocolError(
                f"response CSeq method {response.cseq.method} does not match the "
                f"transaction's {self.method}",
                500,
            )
        event = classify_sent(response.status)
        previous = self.state
        self.state = transition(self.table, previous, event)
        self.timers.pop(Timer.TRYING, None)
        self.last_response = response
        self._send(response)
        timeout = self._settings.timeout
        if event is _I.SEND_PROVISIONAL:
            return
        if self.ack_received:
            self.slim()  # another 2xx after the ACK: nothing is retransmitted any more
            return
        if not self.is_invite:
            self._arm_or_terminate(Timer.J, self._settings.wait_j(self.reliable), now)
        elif event is _I.SEND_FAILURE:
            if not self.reliable:
                self._interval = self._settings.t1
                self.timers[Timer.G] = now + self._interval
            self.timers[Timer.H] = now + timeout
        elif previous is not _S.ACCEPTED:
            # §13.3.1.4: the 2xx is retransmitted end to end (whatever this hop's transport,
            # a later hop may be UDP) until the ACK arrives; give up at 64*T1 (Timer L).
            self._interval = self._settings.t1
            self.timers[Timer.RETRANSMIT_2XX] = now + self._interval
            self.timers[Timer.L] = now + timeout

    def ack_for_2xx(self) -> None:
        """The layer matched an ACK for this transaction's 2xx: stop retransmitting it."""
        self.state = transition(self.table, self.state, _I.ACK)
        self.ack_received = True
        self.timers.pop(Timer.RETRANSMIT_2XX, None)
        self.slim()  # Accepted now only absorbs until Timer L (no AckTimeout to report)

    def fire(self, timer: Timer, now: float) -> None:
        """A timer's deadline passed."""
        self.timers.pop(timer, None)
        previous = self.state
        self.state = transition(self.table, previous, _TIMER_INPUTS[timer])
        if timer is Timer.TRYING:
            if self.last_response is None:
                self.last_response = make_response(self.request, 100)
                self._send(self.last_response)
        elif timer in (Timer.G, Timer.RETRANSMIT_2XX):
            if self.last_response is not None:
                self._send(self.last_response)
            self._interval = self._settings.next_interval(self._interval)
            self.timers[timer] = now + self._interval
        elif timer is Timer.H:
            self._outbox.event(TransactionTimeout(self))
            self._terminated()
        elif timer is Timer.L:
            if not self.ack_received and self.last_response is not None:
                self._outbox.event(AckTimeout(self, self.last_response))
            self._terminated()
        else:  # I, J
            self._terminated()

    def _send(self, response: Response) -> None:
        self._outbox.send(response, self.response_destination)
