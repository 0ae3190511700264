"""Events the transaction layer hands to its transaction user (TU) through ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sip.message import Request, Response
    from sip.transaction_client import ClientTransaction
    from sip.transaction_server import ServerTransaction

__all__ = [
    "AckReceived",
    "AckTimeout",
    "Cancelled",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "TransactionTerminated",
    "TransactionTimeout",
]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction; the TU must answer through it."""

    transaction: ServerTransaction
    """The server transaction to pass to ``TransactionLayer.send_response``."""
    request: Request
    """The request as received."""
    source: Any
    """Where it came from (opaque to the layer; a connection for reliable transports)."""


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response the TU must see: provisional, final, or a 2xx after the transaction ended."""

    transaction: ClientTransaction | None
    """The client transaction, or None for a stray 2xx to an INVITE (a retransmission the
    TU must ACK again, RFC 3261 §13.2.2.4, or a 2xx from another fork)."""
    response: Response
    """The response as received."""
    retransmission: bool = False
    """True for a 2xx to an INVITE already answered with this To tag (TU: resend the ACK)."""


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx: not part of any transaction (RFC 3261 §17.2.3), handed to the TU."""

    request: Request
    """The ACK."""
    source: Any
    """Where it came from."""
    transaction: ServerTransaction | None
    """The INVITE server transaction whose 2xx it acknowledges (retransmission stopped), or
    None when no 2xx is being retransmitted for it (late or stray ACK)."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A CANCEL matched a pending INVITE server transaction (RFC 3261 §9.2).

    The layer has already answered the CANCEL with 200; the TU must answer the INVITE with a
    final response, normally 487 Request Terminated.
    """

    transaction: ServerTransaction
    """The INVITE server transaction being cancelled."""
    request: Request
    """The CANCEL request."""


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B, F or H fired (or a transport error): the transaction failed.

    For a client transaction the TU treats it as a 408 (§8.1.3.1); for an INVITE server
    transaction (Timer H) the ACK for a non-2xx final response never arrived.
    """

    transaction: ClientTransaction | ServerTransaction
    """The failed transaction (now terminated)."""
    transport_error: bool = False
    """True when caused by ``TransactionLayer.transport_error`` rather than a timer."""


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """No ACK arrived for a 2xx to an INVITE within 64*T1 (RFC 3261 §13.3.1.4).

    The TU should confirm and then immediately terminate the dialog with a BYE.
    """

    transaction: ServerTransaction
    """The INVITE server transaction whose 2xx went unacknowledged."""
    response: Response
    """The 2xx that was being retransmitted."""


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """A transaction reached the Terminated state and was removed from the layer."""

    transaction: ClientTransaction | ServerTransaction
    """The terminated transaction."""


Event = (
    RequestReceived
    | ResponseReceived
    | AckReceived
    | Cancelled
    | TransactionTimeout
    | AckTimeout
    | TransactionTerminated
)
