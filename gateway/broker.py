"""SIP broker: SIP SIMPLE from Microsoft trusted hosts, outside calls, to the IM&P nodes.

MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH and INFO that arrive from the Microsoft side outside
any dialog are forwarded to the configured IM&P nodes on the transport they came in on
(SPEC.md §3), and every response comes back on the server transaction.

The broker is a *stateful proxy* (RFC 3261 §16), not a B2BUA leg: Call-ID, tags and CSeq
pass unchanged, so a SUBSCRIBE dialog stays end to end between the Lync client and IM&P
and the gateway keeps no per-dialog state for presence (which would dwarf the call state
for a busy pool). It adds its Via, decrements Max-Forwards, refuses loops (482) and spent
hop counts (483), and Record-Routes dialog-forming requests (SUBSCRIBE) twice, once per
side (RFC 5658), so that in-dialog NOTIFYs come back through the gateway: the FE trusts
only the gateway, IM&P cannot reach it directly. Requests routed to such a Record-Route
are recognised by :meth:`SipBroker.handles` and loose-routed on (RFC 3261 §16.4, §16.12).

IM sessions: an INVITE from Microsoft offering only ``m=message`` media (a Lync IM session,
:mod:`gateway.im_session`) is brokered too, never set up as a call: it is Record-Routed
like SUBSCRIBE, so its MESSAGEs (both ways), re-INVITEs and BYE come back through the
broker's Record-Route and are loose-routed on. The ACK for its 2xx has no transaction of
its own; :meth:`SipBroker.intercept` has the stack hand such ACKs (those whose top Route
is ours) to the broker, which forwards them statelessly (§16.11), and a CANCEL of an IM
session INVITE still pending at a node to the broker, which cancels it there (§16.10): the
node's 487 then comes back as the INVITE's answer.

Node choice: round robin over the nodes; a node that cannot be reached (transport error)
or answers 503 is skipped for the next. When the nodes are all unreachable the client gets
503, when the chosen one stays silent past ``answer_within`` it gets 408, each with a
reason phrase saying so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.config import BrokerConfig
from gateway.im_session import is_im_session
from sip.errors import ProtocolError
from sip.headers import Via
from sip.message import Request, Response, make_response, new_branch
from sip.stack import ClientRequest, Hop, SipStack, SipTimeoutError
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import Transport, TransportAddress
from sip.uri import URI, Params, format_host

__all__ = ["BROKERED_METHODS", "BROKER_PARAM", "BrokerStats", "SipBroker"]

logger = logging.getLogger(__name__)

BROKERED_METHODS = frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO"})
"""SIP SIMPLE methods the broker takes outside a dialog."""
DIALOG_FORMING = frozenset({"SUBSCRIBE", "INVITE"})
"""Brokered methods that create a dialog, so get Record-Routed (INVITE: IM sessions only)."""
BROKER_PARAM = "x-broker"
"""URI parameter marking the broker's Record-Route entries."""
DEFAULT_MAX_FORWARDS = 70
DEFAULT_ANSWER_WITHIN = 10.0
"""Seconds a node gets to answer; below the client's own Timer F (32 s) so that the
client still hears the 408 rather than timing out itself."""


@dataclass(slots=True)
class BrokerStats:
    """Counters for status and metrics."""

    forwarded: int = 0
    """Requests sent on to a node."""
    relayed: int = 0
    """Final responses relayed back."""
    refused: int = 0
    """Requests answered locally (408, 482, 483, 503...)."""
    im_sessions: int = 0
    """IM sessions set up (a 2xx to an IM session INVITE relayed)."""
    im_sessions_ended: int = 0
    """IM sessions ended (a 2xx to a BYE relayed)."""
    acks: int = 0
    """ACKs (for an IM session's 2xx) forwarded."""


class SipBroker:
    """Forwards SIP SIMPLE requests from Microsoft to the IM&P nodes (a stateful proxy)."""

    def __init__(
        self,
        settings: BrokerConfig,
        stack: SipStack,
        *,
        answer_within: float = DEFAULT_ANSWER_WITHIN,
    ) -> None:
        self.settings = settings
        self.stack = stack
        self.answer_within = answer_within
        """Seconds to wait for a node's final response before answering 408."""
        self.stats = BrokerStats()
        self._next = itertools.count()
        self._pending_invites: dict[ServerTransaction, ClientRequest] = {}
        """IM session INVITEs waiting for a node's final answer (CANCEL goes to them)."""

    # -- what the runtime asks -----------------------------------------------------------

    def handles(self, request: Request) -> bool:
        """Whether ``request`` is the broker's: enabled and either an out-of-dialog SIMPLE
        request or IM session INVITE (no To tag), or a request routed through one of our
        Record-Routes."""
        if not self.settings.enabled:
            return False
        try:
            if self._routed_to_us(request):
                return True
            if request.to.tag is not None:
                return False
            return request.method in BROKERED_METHODS or is_im_session(request)
        except ProtocolError:
            return False

    def routed_from_node(self, host: str, request: Request) -> bool:
        """Whether ``request`` comes from an IM&P node through our Record-Route: the node's
        half of a brokered dialog, which the Microsoft trusted hosts do not list."""
        try:
            return self.is_node(host) and self._routed_to_us(request)
        except ProtocolError:
            return False

    def is_node(self, host: str) -> bool:
        """Whether ``host`` is one of the IM&P nodes (their in-dialog requests come back
        to the Microsoft side through our Record-Route, from an address that is no
        Microsoft trusted host)."""
        return self.settings.enabled and any(
            host == node for node in self.settings.destinations
        )

    def intercept(self, allowed: Callable[[str], bool] | None = None) -> None:
        """Take what the broker needs from the stack before its current handlers: ACKs
        routed through our Record-Route (IM sessions), screened by ``allowed(source
        host)`` (an ACK cannot be refused, so one from elsewhere is dropped), and CANCELs
        of the IM session INVITEs we forwarded."""
        inner = self.stack.handlers.on_ack
        inner_cancel = self.stack.handlers.on_cancel

        def on_cancel(transaction: ServerTransaction, cancel: Request) -> None:
            pending = self._pending_invites.get(transaction)
            if pending is not None:
                pending.cancel()  # the node's 487 is relayed as the INVITE's answer
            elif inner_cancel is not None:
                inner_cancel(transaction, cancel)
            elif transaction.state in (ServerState.TRYING, ServerState.PROCEEDING):
                self.stack.respond(transaction, 487)  # the stack's own default

        def on_ack(ack: Request, source: Hop) -> None:
            try:
                ours = self.settings.enabled and self._top_route_is_ours(ack)
            except ProtocolError:
                ours = False
            if not ours:
                if inner is not None:
                    inner(ack, source)
                return
            if allowed is not None and not (allowed(source.host) or self.is_node(source.host)):
                logger.warning("broker: ACK from %s dropped: not a trusted host", source.host)
                return
            self.forward_ack(ack, source)

        self.stack.handlers.on_ack = on_ack
        self.stack.handlers.on_cancel = on_cancel

    def forward_ack(self, ack: Request, source: Hop) -> None:
        """Forward an ACK routed through us statelessly along its route (§16.11)."""
        try:
            out = ack.copy()
            while self._top_route_is_ours(out):
                out.headers.pop_first("Route")
            max_forwards = ack.max_forwards
            if max_forwards is not None and max_forwards <= 0:
                logger.info("broker: ACK with no hops left dropped (Call-ID %s)", ack.call_id)
                return
            out.headers.set(
                "Max-Forwards",
                (max_forwards - 1) if max_forwards is not None else DEFAULT_MAX_FORWARDS,
            )
            outbound = self._local(source.transport)
            if outbound is None:
                logger.warning("broker: ACK dropped: no %s listener", source.transport.value)
                return
            out.headers.prepend("Via", self._via(outbound, new_branch()))
            target = self._route_targets(out, source.transport)[0]
            self.stack.send_stateless(out, target)
        except ProtocolError as error:
            logger.info("broker: ACK dropped: %s", error.message)
            return
        self.stats.acks += 1

    async def forward(
        self, transaction: ServerTransaction, request: Request, received: Hop
    ) -> None:
        """Proxy ``request`` (received from ``received``) and relay the responses.

        Always leaves the server transaction answered, whatever happens.
        """
        try:
            await self._forward(transaction, request, received)
        except ProtocolError as error:
            status = error.status_hint if 400 <= error.status_hint <= 699 else 400
            self._refuse(transaction, status, error.message)
        except SipTimeoutError:
            self._refuse(transaction, 503, "Service Unavailable: the IM&P node is unreachable")
        except Exception:
            logger.exception("broker failed on %s from %s", request.method, received)
            self._refuse(transaction, 500, "Server Internal Error: broker failure")

    # -- forwarding ------------------------------------------------------------------------

    async def _forward(self, transaction: ServerTransaction, request: Request, source: Hop) -> None:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            self._refuse(transaction, 483, "Too Many Hops")
            return
        if self._looped(request):
            self._refuse(transaction, 482, "Loop Detected")
            return
        transport = source.transport
        outbound = self._local(transport)
        if outbound is None:
            self._refuse(transaction, 503, f"Service Unavailable: no {transport.value} listener")
            return
        routed = self._routed_to_us(request)
        out = request.copy()
        # §16.4: our own Route entries are consumed here.
        while self._top_route_is_ours(out):
            out.headers.pop_first("Route")
        out.headers.set(
            "Max-Forwards",
            (max_forwards - 1) if max_forwards is not None else DEFAULT_MAX_FORWARDS,
        )
        if not routed and request.method in DIALOG_FORMING:
            self._record_route(out, inbound=source, outbound=outbound)

        targets = self._route_targets(out, transport) if routed else self._node_hops(transport)
        for index, target in enumerate(targets):
            attempt = out.copy()
            attempt.headers.prepend("Via", self._via(outbound, new_branch()))
            last = index == len(targets) - 1
            try:
                pending = self.stack.start_request(
                    attempt, target, on_provisional=self._relay_provisional(transaction)
                )
            except ProtocolError as error:
                self._refuse(transaction, 500, f"Server Internal Error: {error.message}")
                return
            self.stats.forwarded += 1
            if attempt.method == "INVITE":
                self._pending_invites[transaction] = pending
            try:
                response = await self._final(pending, transaction)
            finally:
                self._pending_invites.pop(transaction, None)
            if response is None:
                return  # 408 already given
            if isinstance(response, SipTimeoutError):
                logger.warning("broker: %s unreachable: %s", target, response)
                if last:
                    self._refuse(transaction, 503, "Service Unavailable: no IM&P node reachable")
                    return
                continue
            if response.status == 503 and not last:
                logger.info("broker: %s answered 503, trying the next node", target)
                continue
            self._relay(transaction, response)
            return

    async def _final(
        self, pending: ClientRequest, transaction: ServerTransaction
    ) -> Response | SipTimeoutError | None:
        """The node's final response; its failure; or None after answering 408 ourselves."""
        try:
            return await asyncio.wait_for(pending.response(), self.answer_within)
        except SipTimeoutError as error:
            if error.transport_error:
                return error
            self._refuse(transaction, 408, "Request Timeout: the IM&P node did not answer")
            return None
        except TimeoutError:
            # The client transaction runs on to its own Timer F; a late answer is dropped.
            self._refuse(transaction, 408, "Request Timeout: the IM&P node did not answer")
            return None

    def _relay_provisional(self, transaction: ServerTransaction) -> ProvisionalRelay:
        return ProvisionalRelay(self, transaction)

    def _relay(self, transaction: ServerTransaction, response: Response) -> None:
        """Send a node's response back without our Via (§16.7)."""
        if transaction.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return
        back = response.copy()
        back.headers.pop_first("Via")
        if not back.headers.getlist("Via"):
            logger.warning("broker: a %d response carried only our Via", response.status)
            return
        try:
            self.stack.send_response(transaction, back)
        except ProtocolError as error:
            logger.warning("broker: cannot relay %d: %s", response.status, error.message)
            return
        if response.status >= 200:
            self.stats.relayed += 1
        if 200 <= response.status < 300:
            method = transaction.request.method
            if method == "INVITE" and response.to.tag is not None:
                if transaction.request.to.tag is None:
                    self.stats.im_sessions += 1
            elif method == "BYE":
                self.stats.im_sessions_ended += 1

    def _refuse(self, transaction: ServerTransaction, status: int, reason: str) -> None:
        if transaction.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return
        logger.info(
            "broker: %d %s for %s Call-ID %s",
            status,
            reason,
            transaction.request.method,
            transaction.request.headers.get("Call-ID"),
        )
        self.stats.refused += 1
        try:
            self.stack.send_response(
                transaction, make_response(transaction.request, status, reason)
            )
        except ProtocolError as error:
            logger.warning("broker: cannot answer %d: %s", status, error.message)

    # -- addresses ---------------------------------------------------------------------------

    def _node_hops(self, transport: Transport) -> list[Hop]:
        """The IM&P nodes on ``transport``, starting with the next in round robin."""
        nodes = [Hop(transport, node.host, node.port) for node in self.settings.targets()]
        if not nodes:
            return []
        start = next(self._next) % len(nodes)
        return nodes[start:] + nodes[:start]

    def _route_targets(self, request: Request, transport: Transport) -> list[Hop]:
        """In-dialog: the next Route entry, else the Request-URI (loose routing)."""
        routes = request.route
        uri = routes[0].uri if routes else request.uri
        hop = Hop.from_uri(uri)
        if uri.transport is None and uri.scheme == "sip":
            # No transport named: stay on the one the request came in on.
            port = uri.port if uri.port is not None else transport.default_port
            hop = Hop(transport, hop.host, port)
        return [hop]

    def _local(self, transport: Transport) -> TransportAddress | None:
        """Our listener for ``transport``: its address goes in our Via and Record-Route.

        The gateway has one listener per transport toward each side; on TLS (65072 and
        5061) the first is used, which is harmless: responses on a stream transport follow
        the connection, not the Via.
        """
        return self.stack.listener(transport)

    @staticmethod
    def _via(local: TransportAddress, branch: str) -> str:
        sent_by = f"{format_host(local.host)}:{local.port}"
        return f"SIP/2.0/{local.transport.value} {sent_by};branch={branch};rport"

    def _record_route(self, request: Request, *, inbound: Hop, outbound: TransportAddress) -> None:
        """Double Record-Route (RFC 5658): the entry nearest the UAS is on top."""
        inbound_local = self._local(inbound.transport) or outbound
        for local in (inbound_local, outbound) if inbound_local != outbound else (outbound,):
            params = Params.of(transport=local.transport.value.lower(), lr=None).with_param(
                BROKER_PARAM
            )
            uri = URI("sip", host=local.host, port=local.port, params=params)
            request.headers.prepend("Record-Route", f"<{uri}>")

    def _is_ours(self, uri: URI) -> bool:
        if BROKER_PARAM not in uri.params:
            return False
        return any(
            uri.host == listener.host
            and (uri.port or listener.transport.default_port) == listener.port
            for listener in self.stack.listeners
        )

    def _top_route_is_ours(self, request: Request) -> bool:
        routes = request.route
        return bool(routes) and self._is_ours(routes[0].uri)

    def _routed_to_us(self, request: Request) -> bool:
        return request.method != "ACK" and self._top_route_is_ours(request)

    def _looped(self, request: Request) -> bool:
        """A Via of ours already on the request (§16.3 item 4, without spiral support:
        the broker never forwards to itself on purpose)."""
        mine = {(listener.host, listener.port) for listener in self.stack.listeners}
        vias: Sequence[Via] = request.via
        return any((via.host, via.port or _default_port(via)) in mine for via in vias)


def _default_port(via: Via) -> int:
    return 5061 if via.transport == "TLS" else 5060


class ProvisionalRelay:
    """Relays a node's 1xx (but 100, which is hop by hop) on the server transaction."""

    __slots__ = ("_broker", "_transaction")

    def __init__(self, broker: SipBroker, transaction: ServerTransaction) -> None:
        self._broker = broker
        self._transaction = transaction

    def __call__(self, response: Response) -> None:
        if response.status > 100:
            self._broker._relay(self._transaction, response)
