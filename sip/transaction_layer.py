"""The transaction layer: the one owner of every client and server transaction (sans-IO).

Driven like aioquic's ``QuicConnection``: ``receive(message, source, now)`` and
``handle_timer(now)`` in; ``messages_to_send()``, ``next_event()`` and ``get_timer()`` out.
It never reads a clock and never touches a socket.

Addresses: ``source`` and ``destination`` are opaque hashable values, except that the layer
reads ``.reliable`` on them (missing means unreliable; pass ``reliable=`` to override) and,
to route a response over an unreliable transport by the top Via (§18.2.2, RFC 3581), builds
the reply address with ``response_address(source, host, port)``. The default rebuilds a
dataclass source (such as ``TransportAddress(transport, host, port)``) with
``dataclasses.replace`` and a ``(host, port)`` tuple source as a tuple; on reliable
transports the response goes back to ``source`` itself (the connection it came on).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.events import AckReceived, Cancelled, Event, RequestReceived, ResponseReceived
from sip.message import Headers, Request, Response, make_response
from sip.timers import Timer, TimerSettings
from sip.transaction import TransactionKey, is_reliable
from sip.transaction_client import ClientState, ClientTransaction
from sip.transaction_server import ServerState, ServerTransaction

__all__ = ["Outbox", "TransactionLayer", "default_response_address", "make_cancel"]

logger = logging.getLogger(__name__)

Transaction = ClientTransaction | ServerTransaction


class Outbox:
    """What the layer has for its adapter: messages to send and events for the TU."""

    __slots__ = ("events", "messages")

    def __init__(self) -> None:
        self.messages: deque[tuple[Request | Response, Any]] = deque()
        self.events: deque[Event] = deque()

    def send(self, message: Request | Response, destination: Any) -> None:
        """Queue a message for the transport."""
        self.messages.append((message, destination))

    def event(self, event: Event) -> None:
        """Queue an event for the TU."""
        self.events.append(event)


def default_response_address(source: Any, host: str, port: int) -> Any:
    """Rebuild ``source`` with another host and port (see the module docstring)."""
    if getattr(source, "host", None) == host and getattr(source, "port", None) == port:
        return source
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        fields = {f.name for f in dataclasses.fields(source)}
        if {"host", "port"} <= fields:
            return dataclasses.replace(source, host=host, port=port)
    if isinstance(source, tuple) and len(source) >= 2:
        return (host, port, *source[2:])
    return source


def make_cancel(request: Request) -> Request:
    """The CANCEL for a request we sent (RFC 3261 §9.1).

    Same Request-URI, Call-ID, To, From, CSeq number and single top Via (so the same branch)
    as the request, its Route headers, method CANCEL, no body.
    """
    headers = Headers()
    headers.add("Via", request.headers.getlist("Via")[0])
    headers.add("Max-Forwards", "70")
    for name, value in request.headers:
        if name.lower() == "route":
            headers.add("Route", value)
    for name in ("From", "To", "Call-ID"):
        copied = request.headers.get(name)
        if copied is None:
            raise LocalProtocolError(f"cannot CANCEL a request without {name}", 500)
        headers.add(name, copied)
    headers.add("CSeq", f"{request.cseq.seq} CANCEL")
    return Request("CANCEL", request.uri, headers)


def _via_port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class TransactionLayer:
    """All transactions of one SIP element, with their timers (RFC 3261 §17)."""

    def __init__(
        self,
        settings: TimerSettings | None = None,
        *,
        response_address: Callable[[Any, str, int], Any] = default_response_address,
    ) -> None:
        self.settings = settings if settings is not None else TimerSettings()
        """The timer settings every transaction uses."""
        self._response_address = response_address
        self._outbox = Outbox()
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._servers: dict[TransactionKey, ServerTransaction] = {}
        # 2xx ACKs carry a new branch: match them by (Call-ID, CSeq number, To tag).
        self._accepted: dict[tuple[str, int, str], ServerTransaction] = {}
        self._accepted_keys: dict[ServerTransaction, list[tuple[str, int, str]]] = {}
        self._pending_cancels: dict[ClientTransaction, Request] = {}
        # Deadlines in a heap, so that get_timer() stays O(log n) with thousands of live
        # transactions (a B2BUA at 300 calls/s holds ~10k). Entries are checked against the
        # transaction's own ``timers`` when they reach the top: stale ones are dropped.
        # ``_queued`` is the truth (the live entries); a stale entry would otherwise keep an
        # ended transaction and its message bytes alive until its deadline (Timer C: 180 s),
        # so the heap is rebuilt from ``_queued`` once stale entries outnumber live ones.
        self._heap: list[tuple[float, int, Transaction, Timer]] = []
        self._queued: dict[Transaction, dict[Timer, float]] = {}
        self._live = 0
        self._order = itertools.count()

    # -- inputs -------------------------------------------------------------------------

    def receive(
        self, message: Request | Response, source: Any, now: float, *, reliable: bool | None = None
    ) -> None:
        """Handle a parsed message from the transport.

        Raises ``RemoteProtocolError`` (status hint 400) for a request that cannot belong to
        any transaction (no Via, CSeq method not the request's); the transport answers it.
        """
        if isinstance(message, Response):
            self._receive_response(message, now)
        else:
            self._receive_request(message, source, is_reliable(source, reliable), now)

    def send_request(
        self, request: Request, destination: Any, now: float, *, reliable: bool | None = None
    ) -> ClientTransaction:
        """Start a client transaction for ``request`` (its top Via must have a fresh branch)."""
        if request.method == "ACK":
            raise LocalProtocolError("an ACK is not a transaction: use send_ack", 500)
        if request.cseq.method != request.method:
            raise LocalProtocolError("CSeq method does not match the request method", 500)
        tx = ClientTransaction(
            request, destination, is_reliable(destination, reliable), self.settings, self._outbox
        )
        if tx.key in self._clients:
            raise LocalProtocolError(f"branch {tx.key.branch} is already in use", 500)
        self._clients[tx.key] = tx
        tx.start(now)
        self._track(tx)
        return tx

    def send_response(self, transaction: ServerTransaction, response: Response, now: float) -> None:
        """Send the TU's response through its server transaction."""
        if self._servers.get(transaction.key) is not transaction:
            raise LocalProtocolError("the server transaction has terminated", 500)
        transaction.send_response(response, now)
        if transaction.is_invite and 200 <= response.status < 300:
            key = (response.call_id or "", response.cseq.seq, response.to.tag or "")
            self._accepted[key] = transaction
            self._accepted_keys.setdefault(transaction, []).append(key)
        self._reap(transaction, now)

    def send_ack(
        self, transaction: ClientTransaction | None, ack: Request, destination: Any = None
    ) -> None:
        """Send the ACK for a 2xx (built by the dialog); it is no transaction of its own.

        Remembered on the INVITE client transaction (while it is in Accepted) so that
        retransmissions of that 2xx are answered with it again without bothering the TU.
        """
        if ack.method != "ACK":
            raise LocalProtocolError("send_ack sends ACK requests only", 500)
        if destination is None:
            if transaction is None:
                raise LocalProtocolError("send_ack needs a destination or a transaction", 500)
            destination = transaction.destination
        if transaction is not None and transaction.state is ClientState.ACCEPTED:
            transaction.acks[ack.to.tag or ""] = (ack, destination)
        self._outbox.send(ack, destination)

    def send_stateless(self, message: Request | Response, destination: Any) -> None:
        """Queue a message outside any transaction (e.g. a 400 to an unmatched request)."""
        self._outbox.send(message, destination)

    def cancel(self, transaction: ClientTransaction, now: float) -> ClientTransaction | None:
        """Cancel a pending INVITE (RFC 3261 §9.1).

        Returns the CANCEL's client transaction, or None when it is deferred (no provisional
        response yet: it goes out with the first one) or pointless (a final response came).
        """
        if not transaction.is_invite:
            raise LocalProtocolError("only an INVITE can be cancelled", 500)
        if transaction.state is ClientState.CALLING:
            self._pending_cancels[transaction] = make_cancel(transaction.request)
            return None
        if transaction.state is not ClientState.PROCEEDING:
            return None
        cancel = make_cancel(transaction.request)
        existing = self._clients.get(TransactionKey.for_client_request(cancel))
        if existing is not None:
            return existing  # already cancelling
        return self.send_request(
            cancel,
            transaction.destination,
            now,
            reliable=transaction.reliable,
        )

    def client_for(self, response: Response) -> ClientTransaction | None:
        """The live client transaction ``response`` belongs to (§17.1.3), if any."""
        key = TransactionKey.for_client_response(response)
        return self._clients.get(key) if key is not None else None

    def transport_error(
        self, transaction: ClientTransaction | ServerTransaction, now: float
    ) -> None:
        """The transport failed to send for this transaction (§17.1.4 / §17.2.4)."""
        try:
            transaction.transport_error()
        except LocalProtocolError:
            logger.debug("transport error ignored in state %s", transaction.state.name)
        self._reap(transaction, now)

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is at or before ``now``."""
        while True:
            due = self._earliest()
            if due is None or due[0] > now:
                return
            _, tx, timer = due
            tx.fire(timer, now)
            if timer is Timer.C and isinstance(tx, ClientTransaction):
                logger.info("no final response to %r: cancelling", tx)
                self.cancel(tx, now)
            self._reap(tx, now)

    # -- outputs ------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, or None when nothing is armed."""
        due = self._earliest()
        return None if due is None else due[0]

    def messages_to_send(self) -> list[tuple[Request | Response, Any]]:
        """Drain the messages to hand to the transport, with their destinations."""
        messages = list(self._outbox.messages)
        self._outbox.messages.clear()
        return messages

    def next_event(self) -> Event | None:
        """The next event for the TU, or None."""
        return self._outbox.events.popleft() if self._outbox.events else None

    @property
    def transactions(self) -> list[ClientTransaction | ServerTransaction]:
        """Every live transaction (for status pages and tests)."""
        return [*self._clients.values(), *self._servers.values()]

    # -- internals ----------------------------------------------------------------------

    @property
    def timer_entries(self) -> int:
        """Entries in the deadline heap, live and stale (for soak checks and tests)."""
        return len(self._heap)

    def _track(self, tx: Transaction) -> None:
        """Queue the deadlines ``tx`` armed or moved since we last looked."""
        queued = self._queued.setdefault(tx, {})
        for timer in [t for t in queued if t not in tx.timers]:
            del queued[timer]  # disarmed: re-arming it later, even at the same time, re-queues
            self._live -= 1
        for timer, deadline in tx.timers.items():
            if queued.get(timer) != deadline:
                if timer not in queued:
                    self._live += 1
                queued[timer] = deadline
                heapq.heappush(self._heap, (deadline, next(self._order), tx, timer))
        if not queued:
            del self._queued[tx]  # nothing armed: the heap's entries for it are all stale
        self._compact()

    def _forget(self, tx: Transaction) -> None:
        """Drop an ended transaction's deadlines; its heap entries become stale."""
        self._live -= len(self._queued.pop(tx, {}))
        self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from the live deadlines once stale entries outnumber them.

        Amortised O(1) per push: a rebuild costs O(live) and follows at least ``live``
        pushes since the last one. The floor keeps small heaps from rebuilding all the time.
        """
        if len(self._heap) <= 2 * self._live + 64:
            return
        self._heap = [
            (deadline, next(self._order), tx, timer)
            for tx, queued in self._queued.items()
            for timer, deadline in queued.items()
        ]
        heapq.heapify(self._heap)

    def _earliest(self) -> tuple[float, Transaction, Timer] | None:
        heap = self._heap
        while heap:
            deadline, _, tx, timer = heap[0]
            if tx.timers.get(timer) == deadline == self._queued.get(tx, {}).get(timer):
                return deadline, tx, timer
            heapq.heappop(heap)  # disarmed, moved, or its transaction is gone
        return None

    def _reap(self, tx: Transaction, now: float) -> None:
        self._track(tx)
        if isinstance(tx, ClientTransaction):
            if tx.state is not ClientState.CALLING:
                pending = self._pending_cancels.pop(tx, None)
                if pending is not None and tx.state is ClientState.PROCEEDING:
                    # §9.1: the deferred CANCEL may go now that a provisional arrived.
                    self.send_request(pending, tx.destination, now, reliable=tx.reliable)
            if tx.state is ClientState.TERMINATED and self._clients.get(tx.key) is tx:
                del self._clients[tx.key]
                self._forget(tx)
        elif tx.state is ServerState.TERMINATED and self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
            self._forget(tx)
            for key in self._accepted_keys.pop(tx, ()):
                if self._accepted.get(key) is tx:
                    del self._accepted[key]

    def _receive_response(self, response: Response, now: float) -> None:
        key = TransactionKey.for_client_response(response)
        tx = self._clients.get(key) if key is not None else None
        if tx is None:
            if response.cseq.method == "INVITE" and 200 <= response.status < 300:
                # §13.2.2.4: a 2xx after the transaction ended is still the TU's to ACK.
                self._outbox.event(ResponseReceived(None, response, retransmission=True))
            else:
                logger.debug(
                    "dropping stray %d response (Call-ID %s)", response.status, response.call_id
                )
            return
        try:
            tx.receive_response(response, now)
        except LocalProtocolError:
            logger.debug("%r ignored a %d response", tx, response.status)
        self._reap(tx, now)

    def _receive_request(self, request: Request, source: Any, reliable: bool, now: float) -> None:
        if not request.via:
            raise RemoteProtocolError("request has no Via header", 400)
        if request.cseq.method != request.method:
            raise RemoteProtocolError("CSeq method does not match the request method", 400)
        key = TransactionKey.for_server(request)
        existing = self._servers.get(key)
        if request.method == "ACK":
            self._receive_ack(request, source, existing, now)
            return
        if existing is not None:
            try:
                existing.receive_request(request, now)
            except LocalProtocolError:
                logger.debug("%r ignored a retransmission", existing)
            self._reap(existing, now)
            return
        tx = ServerTransaction(
            request,
            source,
            self._reply_destination(request, source, reliable),
            reliable,
            self.settings,
            self._outbox,
        )
        self._servers[key] = tx
        tx.start(now)
        self._track(tx)
        if request.method == "CANCEL":
            self._receive_cancel(tx, now)
        else:
            self._outbox.event(RequestReceived(tx, request, source))

    def _receive_ack(
        self, ack: Request, source: Any, invite_tx: ServerTransaction | None, now: float
    ) -> None:
        non_2xx_states = (ServerState.COMPLETED, ServerState.CONFIRMED)
        if invite_tx is not None and invite_tx.state in non_2xx_states:
            # The ACK for a non-2xx final response belongs to the transaction (§17.2.1).
            invite_tx.receive_request(ack, now)
            self._reap(invite_tx, now)
            return
        match = self._accepted.get((ack.call_id or "", ack.cseq.seq, ack.to.tag or ""))
        if match is not None and not match.ack_received:
            match.ack_for_2xx()
            self._reap(match, now)
        self._outbox.event(AckReceived(ack, source, match))

    def _receive_cancel(self, cancel_tx: ServerTransaction, now: float) -> None:
        cancel = cancel_tx.request
        invite_tx = self._servers.get(dataclasses.replace(cancel_tx.key, method="INVITE"))
        if invite_tx is None:
            self.send_response(
                cancel_tx, make_response(cancel, 481, "Call/Transaction Does Not Exist"), now
            )
            return
        previous = invite_tx.last_response
        to_tag = previous.to.tag if previous is not None else None
        self.send_response(cancel_tx, make_response(cancel, 200, to_tag=to_tag), now)
        if invite_tx.state is ServerState.PROCEEDING:
            self._outbox.event(Cancelled(invite_tx, cancel))

    def _reply_destination(self, request: Request, source: Any, reliable: bool) -> Any:
        """§18.2.2 / RFC 3581: where responses to ``request`` go.

        Reliable: back to ``source`` (the connection it came on). Unreliable: the top Via's
        ``received`` host, else the source host (what §18.2.1 would have stamped as
        ``received``), else sent-by; port ``rport`` (its value, or the source port when the
        sender asked for it and nobody filled it in), else the sent-by port, else 5060.
        """
        if reliable:
            return source
        via = request.top_via
        source_host, source_port = _host_port(source)
        host = via.received or source_host or via.host
        port = via.rport
        if port is None and via.has_rport:
            port = source_port
        if port is None:
            port = via.port or 5060
        return self._response_address(source, host, port)


def _host_port(address: Any) -> tuple[str | None, int | None]:
    """The host and port of an opaque address, when it exposes them."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None and isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
    return (host if isinstance(host, str) else None), _via_port(port)
