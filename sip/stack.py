"""The asyncio adapter around the sans-IO transaction layer (aioquic ``asyncio/protocol.py``
style): one :class:`TransportManager`, one :class:`TransactionLayer`, one timer.

Everything the layer wants sent goes to the transports; every layer event goes to the
transaction user (TU) through small callbacks; the single timer is re-armed with
``loop.call_at(layer.get_timer())`` after each input. Time is always ``loop.time()``.

What a UA builds on top (dialogs, Via/Contact of its own) lives in ``sip.useragent``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sip.errors import ProtocolError
from sip.events import (
    AckReceived,
    AckTimeout,
    Cancelled,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
)
from sip.message import Request, Response, make_response
from sip.timers import TimerSettings
from sip.transaction_client import ClientTransaction
from sip.transaction_layer import TransactionLayer
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import (
    ConnectionInfo,
    ReceivedMessage,
    Transport,
    TransportAddress,
    TransportError,
    TransportManager,
    TransportSettings,
)
from sip.uri import URI

__all__ = [
    "ClientRequest",
    "Hop",
    "SipStack",
    "SipTimeoutError",
    "StackHandlers",
]

logger = logging.getLogger(__name__)


class SipTimeoutError(TimeoutError):
    """A request got no final response: Timer B/F fired or the transport failed."""

    def __init__(
        self,
        message: str,
        request: Request,
        *,
        transport_error: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.request = request
        """The request that went unanswered."""
        self.transport_error = transport_error
        """True when the transport could not deliver it (rather than a timer firing)."""
        self.reason = reason
        """The transport's own words ("Connection refused", a TLS verify failure), if any."""


@dataclass(frozen=True, slots=True)
class Hop:
    """Where a message goes or came from: the layer's opaque address type.

    ``connection_id`` pins a stream connection (or UDP socket) to reuse, so responses and
    in-dialog requests follow the connection a peer opened (peers behind NAT or stunnel
    cannot accept a new one); ``server_hostname`` is the name a TLS server certificate is
    checked against when a new connection must be opened.
    """

    transport: Transport
    """UDP, TCP or TLS."""
    host: str
    """IP address or host name."""
    port: int
    """Port number."""
    connection_id: int | None = field(default=None, compare=False)
    """A connection (or UDP socket) of the TransportManager to prefer, if still open."""
    server_hostname: str | None = field(default=None, compare=False)
    """TLS: the certificate name to expect (default: ``host``)."""

    @property
    def reliable(self) -> bool:
        """Stream transports need no retransmission timers."""
        return self.transport.reliable

    @property
    def address(self) -> TransportAddress:
        """The plain transport address."""
        return TransportAddress(self.transport, self.host, self.port)

    def __str__(self) -> str:
        return str(self.address)

    @classmethod
    def from_uri(cls, uri: URI, *, server_hostname: str | None = None) -> Hop:
        """The hop a request for ``uri`` goes to (RFC 3263 without DNS: host, port and the
        ``transport`` parameter; sips means TLS)."""
        if not uri.is_sip or not uri.host:
            raise ValueError(f"cannot route to {uri}")
        name = uri.transport
        if uri.scheme == "sips":
            transport = Transport.TLS
        elif name is None:
            transport = Transport.UDP
        else:
            transport = Transport.parse(name)
        port = uri.port if uri.port is not None else transport.default_port
        return cls(transport, uri.host, port, server_hostname=server_hostname)

    @classmethod
    def of(cls, address: TransportAddress, connection: ConnectionInfo | None = None) -> Hop:
        """A hop for a transport address, pinned to ``connection`` when given."""
        return cls(
            address.transport,
            address.host,
            address.port,
            connection_id=None if connection is None else connection.id,
        )


RequestHandler = Callable[[ServerTransaction, Request], Awaitable[None] | None]
ProvisionalHandler = Callable[[Response], None]


@dataclass(slots=True)
class StackHandlers:
    """The TU's callbacks. Any may be None (the stack then does the RFC default)."""

    on_request: RequestHandler | None = None
    """A new request (not ACK/CANCEL): answer through ``SipStack.send_response``. May be a
    coroutine function; an unanswered request is given 500 when it raises, 501 when None."""
    on_ack: Callable[[Request, Hop], None] | None = None
    """An ACK for a 2xx (outside any transaction)."""
    on_cancel: Callable[[ServerTransaction, Request], None] | None = None
    """A CANCEL matched a pending INVITE (the CANCEL got 200 already). Default: 487."""
    on_ack_timeout: Callable[[ServerTransaction, Response], None] | None = None
    """No ACK came for our 2xx within 64*T1: the TU should BYE the dialog."""
    on_stray_response: Callable[[Response], None] | None = None
    """A 2xx to an INVITE whose transaction is over (re-ACK it if the dialog is known)."""


@dataclass(slots=True, eq=False)
class ClientRequest:
    """A request on its way: its transaction, its final response (a future), cancel()."""

    stack: SipStack
    """The stack that sent it."""
    transaction: ClientTransaction
    """The client transaction (``destination`` is the :class:`Hop`)."""
    final: asyncio.Future[Response]
    """Resolves with the first final response, or fails with :class:`SipTimeoutError`."""
    on_provisional: ProvisionalHandler | None = None
    """Called with each 1xx."""
    _sent: Request = field(init=False)

    def __post_init__(self) -> None:
        # Our own reference: the transaction keeps only bytes once it is answered.
        self._sent = self.transaction.request

    @property
    def request(self) -> Request:
        """The request as sent."""
        return self._sent

    async def response(self) -> Response:
        """Wait for the final response."""
        return await asyncio.shield(self.final)

    def cancel(self) -> None:
        """CANCEL a pending INVITE (deferred by the layer until a provisional came)."""
        self.stack.cancel(self)


class MessageObserver(Protocol):
    """Sees every SIP message the stack sent or received (metrics, packet capture)."""

    def __call__(
        self,
        sent: bool,
        message: Request | Response,
        local: TransportAddress,
        remote: TransportAddress,
        data: bytes,
    ) -> None: ...


class SipStack:
    """A SIP element's transactions over asyncio transports."""

    def __init__(
        self,
        handlers: StackHandlers | None = None,
        *,
        timers: TimerSettings | None = None,
        transport_settings: TransportSettings | None = None,
        tls_client: ssl.SSLContext | None = None,
        observer: MessageObserver | None = None,
    ) -> None:
        self.handlers = handlers if handlers is not None else StackHandlers()
        self.observer = observer
        """Called with every message sent and received, as it was on the wire."""
        self.layer = TransactionLayer(timers)
        """The sans-IO transaction layer (read-only use outside this class)."""
        self.transports = TransportManager(
            transport_settings, on_message=self._on_message, tls_client=tls_client
        )
        """Sockets and connections."""
        self.transports.on_oversized_response = self._on_oversized_response
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._requests: dict[ClientTransaction, ClientRequest] = {}
        self._failures: dict[ClientTransaction, str] = {}
        """Transport error text of a client transaction, until its timeout event."""
        self._outgoing: dict[tuple[Any, ...], deque[tuple[Request | Response, Hop]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> SipStack:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def listen(
        self, transport: Transport, host: str, port: int = 0, *, ssl: ssl.SSLContext | None = None
    ) -> TransportAddress:
        """Listen on ``host:port`` (0: any free port); returns the bound address."""
        return await self.transports.listen(transport, host, port, ssl=ssl)

    @property
    def listeners(self) -> tuple[TransportAddress, ...]:
        """Every listening address."""
        return self.transports.listeners

    def listener(self, transport: Transport) -> TransportAddress | None:
        """The first listening address of ``transport``, if any."""
        return next((a for a in self.listeners if a.transport is transport), None)

    async def close(self) -> None:
        """Stop the timer, fail pending requests, cancel work, close the transports."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in list(self._requests.values()):
            if not pending.final.done():
                pending.final.set_exception(
                    SipTimeoutError("SIP stack closed", pending.request, transport_error=True)
                )
                pending.final.exception()
        self._requests.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        await self.transports.close()

    # -- the TU's calls ------------------------------------------------------------------

    def start_request(
        self,
        request: Request,
        target: Hop,
        *,
        on_provisional: ProvisionalHandler | None = None,
    ) -> ClientRequest:
        """Send ``request`` (a fresh top Via branch) in a new client transaction."""
        if self._closed:
            raise RuntimeError("SIP stack is closed")
        loop = asyncio.get_running_loop()
        transaction = self.layer.send_request(request, target, loop.time())
        pending = ClientRequest(self, transaction, loop.create_future(), on_provisional)
        self._requests[transaction] = pending
        self._process()
        return pending

    async def send_request(
        self,
        request: Request,
        target: Hop,
        *,
        on_provisional: ProvisionalHandler | None = None,
    ) -> Response:
        """Send ``request`` and return its final response.

        Raises :class:`SipTimeoutError` when Timer B/F fires or the transport fails.
        """
        return await self.start_request(request, target, on_provisional=on_provisional).final

    def cancel(self, pending: ClientRequest) -> None:
        """CANCEL a pending INVITE (§9.1)."""
        self.layer.cancel(pending.transaction, asyncio.get_running_loop().time())
        self._process()

    def send_response(self, transaction: ServerTransaction, response: Response) -> None:
        """Answer a request through its server transaction."""
        self.layer.send_response(transaction, response, asyncio.get_running_loop().time())
        self._process()

    def respond(
        self,
        transaction: ServerTransaction,
        status: int,
        reason: str | None = None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        to_tag: str | None = None,
    ) -> Response:
        """Build (from the transaction's request) and send a response without a body."""
        response = make_response(transaction.request, status, reason, to_tag=to_tag)
        for name, value in headers:
            response.headers.add(name, value)
        self.send_response(transaction, response)
        return response

    def send_ack(self, ack: Request, target: Hop, transaction: ClientTransaction | None) -> None:
        """Send the ACK for a 2xx (it is no transaction; retransmitted 2xx get it again)."""
        self.layer.send_ack(transaction, ack, target)
        self._process()

    def send_stateless(self, message: Request | Response, target: Hop) -> None:
        """Send a message outside any transaction."""
        self.layer.send_stateless(message, target)
        self._process()

    # -- input ------------------------------------------------------------------------

    def _on_message(self, received: ReceivedMessage) -> None:
        if self._closed:
            return
        message = received.message
        source = Hop.of(received.source, received.connection)
        if self.observer is not None:
            self._observe(False, message, received.connection.local, received.source, received.data)
        try:
            self.layer.receive(message, source, asyncio.get_running_loop().time())
        except ProtocolError as error:
            # A request no transaction can take (no Via, CSeq method mismatch...): answer
            # it statelessly and carry on.
            logger.warning("bad %s from %s: %s", _describe(message), source, error.message)
            if isinstance(message, Request) and message.method != "ACK":
                status = error.status_hint if 400 <= error.status_hint <= 699 else 400
                try:
                    reply = make_response(message, status, error.message)
                except ProtocolError:
                    reply = None
                if reply is not None:
                    self.layer.send_stateless(reply, source)
        except Exception:
            logger.exception("transaction layer failed on %s from %s", _describe(message), source)
        self._process()

    def _on_oversized_response(
        self, response: Response, connection: ConnectionInfo, size: int
    ) -> None:
        # Too large to take (its body was passed over): its transaction fails now as a
        # transport error, so the TU (a proxy) answers upstream at once, and no ACK goes to
        # a final response we never read (a 2xx's sender then ends its dialog with BYE).
        if self._closed or response.status < 200:
            return
        transaction = self.layer.client_for(response)
        if transaction is None:
            return
        self._failures[transaction] = (
            f"{response.status} response of {size} bytes over the limit of"
            f" {self.transports.settings.max_message_size}"
        )
        self.layer.transport_error(transaction, asyncio.get_running_loop().time())
        self._process()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        try:
            self.layer.handle_timer(asyncio.get_running_loop().time())
        except Exception:
            logger.exception("transaction layer failed in a timer")
        self._process()

    # -- output -----------------------------------------------------------------------

    def _process(self) -> None:
        """Send what the layer queued, dispatch its events, re-arm the one timer.

        Handlers may call back into the stack; the outer call keeps draining.
        """
        if self._busy:
            return
        self._busy = True
        try:
            while True:
                messages = self.layer.messages_to_send()
                for message, destination in messages:
                    self._enqueue(message, destination)
                event = self.layer.next_event()
                if event is None and not messages:
                    break
                if event is not None:
                    try:
                        self._dispatch(event)
                    except Exception:
                        logger.exception("TU handler failed on %s", type(event).__name__)
        finally:
            self._busy = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._closed:
            return
        deadline = self.layer.get_timer()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _enqueue(self, message: Request | Response, destination: Any) -> None:
        hop = destination if isinstance(destination, Hop) else _as_hop(destination)
        # One queue per destination keeps messages to one peer in order, while a slow
        # connect to one peer never holds up the others.
        key = (hop.transport, hop.host, hop.port, hop.connection_id)
        queue = self._outgoing.get(key)
        if queue is not None:
            queue.append((message, hop))
            return
        self._outgoing[key] = deque([(message, hop)])
        self.spawn(self._drain(key))

    async def _drain(self, key: tuple[Any, ...]) -> None:
        queue = self._outgoing[key]
        try:
            while queue:
                message, hop = queue.popleft()
                data = message.encode()
                try:
                    info = await self.transports.send(
                        data,
                        hop.address,
                        server_hostname=hop.server_hostname,
                        connection_id=hop.connection_id,
                    )
                except TransportError as error:
                    logger.warning("cannot send %s to %s: %s", _describe(message), hop, error)
                    self._transport_failed(message, str(error))
                except Exception:
                    logger.exception("sending %s to %s failed", _describe(message), hop)
                else:
                    if self.observer is not None:
                        self._observe(True, message, info.local, hop.address, data)
        finally:
            if self._outgoing.get(key) is queue:
                del self._outgoing[key]

    def _observe(
        self,
        sent: bool,
        message: Request | Response,
        local: TransportAddress,
        remote: TransportAddress,
        data: bytes,
    ) -> None:
        assert self.observer is not None
        try:
            self.observer(sent, message, local, remote, data)
        except Exception:
            # Observation (metrics, capture) must never cost a call.
            logger.exception("message observer failed")

    def _transport_failed(self, message: Request | Response, reason: str) -> None:
        for transaction in self.layer.transactions:
            if transaction.is_sending(message):
                if isinstance(transaction, ClientTransaction):
                    self._failures[transaction] = reason
                self.layer.transport_error(transaction, asyncio.get_running_loop().time())
                self._process()
                return

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        """Run ``coroutine`` as one of the stack's tasks (awaited, bounded, by ``close``)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events to the TU -----------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._request(event.transaction, event.request)
        elif isinstance(event, ResponseReceived):
            self._response(event)
        elif isinstance(event, AckReceived):
            if self.handlers.on_ack is not None:
                source = event.source if isinstance(event.source, Hop) else _as_hop(event.source)
                self.handlers.on_ack(event.request, source)
        elif isinstance(event, Cancelled):
            if self.handlers.on_cancel is not None:
                self.handlers.on_cancel(event.transaction, event.request)
            else:
                self._answer_if_pending(event.transaction, 487)
        elif isinstance(event, TransactionTimeout):
            self._timeout(event)
        elif isinstance(event, AckTimeout):
            logger.info("no ACK for the 2xx of Call-ID %s", event.response.call_id)
            if self.handlers.on_ack_timeout is not None:
                self.handlers.on_ack_timeout(event.transaction, event.response)
        elif isinstance(event, TransactionTerminated):
            if isinstance(event.transaction, ClientTransaction):
                pending = self._requests.pop(event.transaction, None)
                if pending is not None and not pending.final.done():
                    pending.final.set_exception(
                        SipTimeoutError(
                            f"{pending.request.method} ended without a final response",
                            pending.request,
                        )
                    )

    def _request(self, transaction: ServerTransaction, request: Request) -> None:
        handler = self.handlers.on_request
        if handler is None:
            self._answer_if_pending(transaction, 501)
            return
        try:
            result = handler(transaction, request)
        except Exception:
            logger.exception("request handler failed on %s", _describe(request))
            self._answer_if_pending(transaction, 500)
            return
        if inspect.isawaitable(result):
            self.spawn(self._await_handler(transaction, result))

    async def _await_handler(self, transaction: ServerTransaction, result: Awaitable[None]) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("request handler failed on %s request", transaction.method)
            self._answer_if_pending(transaction, 500)

    def _answer_if_pending(self, transaction: ServerTransaction, status: int) -> None:
        """Give a final response unless one was sent (or the transaction is gone)."""
        if transaction.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return
        try:
            self.respond(transaction, status)
        except ProtocolError as error:
            logger.debug("could not answer %d: %s", status, error.message)

    def _response(self, event: ResponseReceived) -> None:
        pending = self._requests.get(event.transaction) if event.transaction else None
        response = event.response
        if pending is None or event.retransmission:
            if self.handlers.on_stray_response is not None:
                self.handlers.on_stray_response(response)
            else:
                logger.debug("stray %d for Call-ID %s", response.status, response.call_id)
            return
        if response.status < 200:
            if pending.on_provisional is not None:
                pending.on_provisional(response)
        elif not pending.final.done():
            pending.final.set_result(response)
            # Later responses (other forks' 2xx) go to on_stray_response, as for a done
            # request; the lingering transaction need not keep the ClientRequest alive.
            self._requests.pop(pending.transaction, None)
        elif self.handlers.on_stray_response is not None:
            # Another fork's 2xx: the TU must ACK (and normally BYE) it.
            self.handlers.on_stray_response(response)

    def _timeout(self, event: TransactionTimeout) -> None:
        transaction = event.transaction
        if isinstance(transaction, ClientTransaction):
            pending = self._requests.pop(transaction, None)
            reason = self._failures.pop(transaction, None)
            if pending is not None and not pending.final.done():
                what = (
                    f"transport error: {reason}"
                    if reason
                    else "transport error"
                    if event.transport_error
                    else "timed out (Timer B/F)"
                )
                pending.final.set_exception(
                    SipTimeoutError(
                        f"{transaction.request.method} to {transaction.destination}: {what}",
                        transaction.request,
                        transport_error=event.transport_error,
                        reason=reason,
                    )
                )
        else:
            logger.info(
                "%s from %s: %s",
                transaction.method,
                transaction.source,
                "transport error" if event.transport_error else "no ACK (Timer H)",
            )


def _as_hop(address: Any) -> Hop:
    if isinstance(address, TransportAddress):
        return Hop.of(address)
    raise TypeError(f"not a SIP hop: {address!r}")


def _describe(message: Request | Response) -> str:
    if isinstance(message, Request):
        return f"{message.method} request"
    return f"{message.status} response"
