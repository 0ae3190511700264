"""RFC 3261 §17 transactions: the pieces shared by client and server transactions.

The state machines themselves are tables (h11 ``_state.py`` style) in
``sip.transaction_client`` and ``sip.transaction_server``; the single owner of every
transaction is ``sip.transaction_layer.TransactionLayer`` (re-exported here, as the contract
in docs/sip-api.md names this module).

Transport reliability: destinations and sources are opaque hashable values to the layer, except
that it reads their ``reliable`` attribute (``TransportAddress`` from sip/transport.py is
expected to provide it); an object without one counts as unreliable (UDP timers), and callers
may pass ``reliable=`` explicitly instead.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sip.errors import LocalProtocolError
from sip.events import TransactionTerminated, TransactionTimeout
from sip.message import parse_message
from sip.timers import Timer, TimerSettings

if TYPE_CHECKING:
    from sip.message import Request, Response
    from sip.transaction_client import ClientTransaction
    from sip.transaction_layer import Outbox, TransactionLayer
    from sip.transaction_server import ServerTransaction

__all__ = [
    "MAGIC_COOKIE",
    "ClientTransaction",
    "ServerTransaction",
    "TransactionKey",
    "Transaction",
    "TransactionLayer",
    "is_reliable",
    "transition",
]

MAGIC_COOKIE = "z9hG4bK"
"""RFC 3261 §8.1.1.7: branches starting with this are globally unique transaction ids."""

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def transition(table: Mapping[S, Mapping[E, S]], state: S, event: E) -> S:
    """Look up the next state; a (state, event) pair absent from the table is an error."""
    try:
        return table[state][event]
    except KeyError:
        raise LocalProtocolError(
            f"transaction cannot handle {event.name} in state {state.name}", 500
        ) from None


def is_reliable(address: Any, reliable: bool | None = None) -> bool:
    """Whether ``address`` is on a stream transport: explicit flag, else ``.reliable``."""
    if reliable is not None:
        return reliable
    return bool(getattr(address, "reliable", False))


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What matches a message to its transaction (RFC 3261 §17.1.3 / §17.2.3).

    For RFC 3261 branches (magic cookie) the key is branch + sent-by + method; ACK is keyed as
    INVITE so that the ACK for a non-2xx final response finds its INVITE transaction. For older
    (RFC 2543) branches, ``legacy`` holds the request's identifying fields instead.
    """

    branch: str
    """Top Via branch (case-insensitive per §20.42: stored lowercased)."""
    sent_by: str
    """Top Via sent-by as ``host:port`` (empty for client keys: responses carry our own Via)."""
    method: str
    """The method that created the transaction (INVITE for ACK)."""
    legacy: tuple[str, ...] = ()
    """RFC 2543 matching fields (Request-URI, tags, Call-ID, CSeq number, Via), if no cookie."""

    @classmethod
    def for_server(cls, request: Request) -> TransactionKey:
        """The server-side key of a received request (§17.2.3)."""
        via = request.top_via  # raises ParseError when there is none
        method = "INVITE" if request.method == "ACK" else request.method
        branch = via.branch or ""
        sent_by = f"{via.host.lower()}:{via.port or ''}"
        if branch.startswith(MAGIC_COOKIE):
            return cls(branch.lower(), sent_by, method)
        # §17.2.3 RFC 2543 fallback; the ACK's To tag is the one our response added, so it is
        # left out of the key (the INVITE had none).
        legacy = (
            str(request.uri),
            request.from_.tag or "",
            request.call_id or "",
            str(request.cseq.seq),
            sent_by,
            branch,
        )
        return cls(branch.lower(), sent_by, method, legacy)

    @classmethod
    def for_client_response(cls, response: Response) -> TransactionKey | None:
        """The client-side key a response matches (§17.1.3): top Via branch + CSeq method."""
        branch = response.via[0].branch if response.via else None
        if not branch:
            return None
        return cls(branch.lower(), "", response.cseq.method)

    @classmethod
    def for_client_request(cls, request: Request) -> TransactionKey:
        """The client-side key of a request we send (its top Via must carry a branch)."""
        via = request.via[0] if request.via else None
        if via is None or not via.branch:
            raise LocalProtocolError("a request must have a top Via with a branch to be sent", 500)
        method = request.method
        return cls(via.branch.lower(), "", method)


class Transaction(Generic[S, E]):
    """What client and server transactions share: table-driven state, timers, termination.

    Created and driven only by ``TransactionLayer``. A subclass names its tables and the
    table inputs of its timers, of a transport error, and its Terminated state.
    """

    __slots__ = (
        "_interval",
        "_last_response",
        "_outbox",
        "_request",
        "_settings",
        "_wire_request",
        "_wire_response",
        "key",
        "method",
        "reliable",
        "state",
        "timers",
        "__weakref__",  # so tests and soak diagnostics can watch a transaction go away
    )

    INVITE_TABLE: Mapping[S, Mapping[E, S]]
    """The INVITE state table (a class attribute of each subclass)."""
    NON_INVITE_TABLE: Mapping[S, Mapping[E, S]]
    """The non-INVITE state table (a class attribute of each subclass)."""
    TIMER_INPUTS: Mapping[Timer, E]
    """The table input each timer is."""
    TRANSPORT_ERROR: E
    """The table input a transport error is."""
    TERMINATED: S
    """The Terminated state."""

    def __init__(
        self,
        request: Request,
        key: TransactionKey,
        reliable: bool,
        settings: TimerSettings,
        outbox: Outbox,
        invite_state: S,
        non_invite_state: S,
    ) -> None:
        self._request: Request | None = request
        self._wire_request = b""
        self.method = request.method
        """The request's method."""
        self.reliable = reliable
        """True on stream transports: no retransmissions, zero wait timers."""
        self.key = key
        """Matching key (§17.1.3 / §17.2.3)."""
        self.state = invite_state if self.is_invite else non_invite_state
        """Current state."""
        self._last_response: Response | None = None
        self._wire_response: bytes | None = None
        self.timers: dict[Timer, float] = {}
        """Armed timers: absolute deadlines."""
        self._settings = settings
        self._outbox = outbox
        self._interval = settings.t1

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"<{name} {self.method} {self.key.branch} {self.state.name}>"

    @property
    def request(self) -> Request:
        """The request the transaction is about (re-parsed if the transaction was slimmed)."""
        request = self._request
        if request is None:
            request = self._request = cast("Request", parse_message(self._wire_request))
        return request

    @property
    def last_response(self) -> Response | None:
        """The latest response that passed through (received, or sent by the TU)."""
        response = self._last_response
        if response is None and self._wire_response is not None:
            response = self._last_response = cast("Response", parse_message(self._wire_response))
        return response

    @last_response.setter
    def last_response(self, response: Response | None) -> None:
        self._last_response = response
        self._wire_response = None

    @property
    def is_invite(self) -> bool:
        """Whether this is an INVITE transaction."""
        return self.method == "INVITE"

    def slim(self) -> None:
        """Keep the request and last response as wire bytes only.

        Called once the transaction only absorbs retransmissions: it lingers up to 64*T1
        (Timers D/K/I/J, RFC 6026 Accepted), and at hundreds of calls/s the parsed messages
        (headers, their parse caches) would be ~10k live objects per second of lingering for
        every full GC to rescan. Readers still get an equal message, parsed again on demand.
        """
        if self._request is not None:
            self._wire_request = self._request.encode()
            self._request = None
        if self._last_response is not None:
            self._wire_response = self._last_response.encode()
            self._last_response = None

    def is_sending(self, message: object) -> bool:
        """Whether ``message`` is the object this transaction (re)transmits (never re-parses)."""
        return message is self._request or message is self._last_response

    @property
    def table(self) -> Mapping[S, Mapping[E, S]]:
        """The state table this transaction follows."""
        return self.INVITE_TABLE if self.is_invite else self.NON_INVITE_TABLE

    def transport_error(self) -> None:
        """The transport could not deliver (§17.1.4 / §17.2.4): the transaction fails."""
        self.state = transition(self.table, self.state, self.TRANSPORT_ERROR)
        self._outbox.event(TransactionTimeout(self._subject(), transport_error=True))
        self._terminated()

    def _arm_or_terminate(self, timer: Timer, duration: float, now: float) -> None:
        if duration > 0:
            self.timers[timer] = now + duration
        else:
            self.state = transition(self.table, self.state, self.TIMER_INPUTS[timer])
            self._terminated()

    def _terminated(self) -> None:
        self.timers.clear()
        self.state = self.TERMINATED
        self._outbox.event(TransactionTerminated(self._subject()))

    def _subject(self) -> ClientTransaction | ServerTransaction:
        # Events name the two concrete kinds for the TU; they are the only subclasses.
        return cast("ClientTransaction | ServerTransaction", self)


def __getattr__(name: str) -> Any:
    # PEP 562: lazy re-exports, so that importing either module first works without a cycle.
    if name == "TransactionLayer":
        from sip.transaction_layer import TransactionLayer

        return TransactionLayer
    if name == "ClientTransaction":
        from sip.transaction_client import ClientTransaction

        return ClientTransaction
    if name == "ServerTransaction":
        from sip.transaction_server import ServerTransaction

        return ServerTransaction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
