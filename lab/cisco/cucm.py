"""A simulated Unified CM: registrar and stateful proxy for the video domain, with a SIP
trunk to the gateway (SPEC §6, docs/lab-topology.md).

Routing of a request outside a dialog, by Request-URI:
- ``<DN>@video.example.com`` (or @ this node): the DN's registered contact (480 when the DN
  is not registered);
- a trunk route pattern (``example.com``): the gateway, over the trunk's transport;
- anything else: 404.
REGISTER goes to the registrar, OPTIONS for this node is answered 200 (the gateway's zone
monitor pings it). Requests carrying our Record-Route are loose-routed on (RFC 3261 §16.4).

As a proxy (RFC 3261 §16): Via added, Max-Forwards decremented (483 at 0), loops refused
(482), dialog-forming requests Record-Routed (twice when the two sides use different
transports, RFC 5658), CANCEL passed on to the pending branch, ACKs for 2xx and 2xx
retransmissions forwarded statelessly. Trunk settings: Timer C is "Timer Invite Expires"
(180 s), messages above 11000 bytes get 413 from the transport.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from certs.pki import LabPKI
from lab.cisco.config import CucmConfig
from lab.cisco.registrar import Registrar
from lab.listeners import listen_all, load_pki
from sip.errors import ProtocolError
from sip.message import Request, Response, make_response, new_branch
from sip.proxy import relay_response
from sip.stack import ClientRequest, Hop, SipStack, SipTimeoutError, StackHandlers
from sip.timers import TimerSettings
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import Transport, TransportAddress, TransportSettings, source_host_of
from sip.uri import URI, Params, format_host

__all__ = ["Cucm", "Route", "RouteKind"]

logger = logging.getLogger(__name__)

DIALOG_FORMING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
DEFAULT_MAX_FORWARDS = 70
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE"


class RouteKind(enum.Enum):
    """Where a request goes."""

    LOCAL = "local"  # for this node (REGISTER, OPTIONS)
    ENDPOINT = "endpoint"  # a registered DN
    TRUNK = "trunk"  # the gateway
    NEXT_HOP = "next-hop"  # in-dialog: loose-routed on
    UNAVAILABLE = "unavailable"  # a DN that is not registered
    NOT_FOUND = "not-found"


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision."""

    kind: RouteKind
    hop: Hop | None = None
    """Where to send (None for local or refused)."""
    uri: URI | None = None
    """The new Request-URI (a registered contact), None to keep it."""


class Cucm:
    """The node: one :class:`SipStack`, a :class:`Registrar`, and the proxy core."""

    def __init__(self, config: CucmConfig, stack: SipStack, pki: LabPKI | None) -> None:
        self.config = config
        self.stack = stack
        self.pki = pki
        trunk = config.trunk.target
        self.trunk = Hop(
            trunk.transport, trunk.host, trunk.port, server_hostname=config.trunk.server_hostname
        )
        """The gateway, as configured."""
        self.registrar = Registrar(
            config.domain,
            config.dn_pattern,
            local_hosts=frozenset(config.names) | {spec.host for spec in config.listeners},
            min_expires=config.min_expires,
            max_expires=config.max_expires,
        )
        self.routed: list[tuple[str, str, RouteKind]] = []
        """(method, Request-URI, decision) of each request routed (recent ones)."""
        self._pending: dict[ServerTransaction, ClientRequest] = {}
        stack.handlers = StackHandlers(
            on_request=self._on_request,
            on_ack=self._on_ack,
            on_cancel=self._on_cancel,
            on_stray_response=self._on_stray_response,
        )

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def start(cls, config: CucmConfig) -> Cucm:
        """Make (or load) the PKI and bind every listener."""
        pki, tls_client = await load_pki(config.certs, config.cert_name)
        stack = SipStack(
            timers=TimerSettings(
                t1=config.t1, t2=max(4.0, config.t1), timer_c=config.trunk.invite_expires
            ),
            transport_settings=TransportSettings(
                outbound_ports=None,
                max_message_size=config.trunk.max_message_size,
                source_host=source_host_of(config.listeners[0].host),
            ),
            tls_client=tls_client,
        )
        node = cls(config, stack, pki)
        try:
            await listen_all(
                stack,
                config.listeners,
                pki,
                config.cert_name,
                require_client_cert=config.require_client_cert,
            )
        except BaseException:
            await stack.close()
            raise
        return node

    async def close(self) -> None:
        """Close every socket (calls in progress are dropped)."""
        await self.stack.close()

    async def __aenter__(self) -> Cucm:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def listeners(self) -> tuple[TransportAddress, ...]:
        return self.stack.listeners

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- routing --------------------------------------------------------------------------

    def route(self, request: Request) -> Route:
        """Where ``request`` (our own Route entries already removed) goes."""
        routes = request.route
        if routes:
            return Route(RouteKind.NEXT_HOP, self.hop_for_uri(routes[0].uri))
        uri = request.uri
        if request.to.tag is not None and not self.registrar.is_local(uri):
            return Route(RouteKind.NEXT_HOP, self.hop_for_uri(uri))
        if request.method == "REGISTER" or (
            self.registrar.is_local(uri) and not self.registrar.is_dn(uri.user)
        ):
            return Route(RouteKind.LOCAL)
        host = (uri.host or "").lower()
        if self.registrar.is_local(uri) and self.registrar.is_dn(uri.user):
            assert uri.user is not None
            binding = self.registrar.lookup(uri.user, self._now())
            if binding is None:
                return Route(RouteKind.UNAVAILABLE)
            return Route(RouteKind.ENDPOINT, binding.hop, binding.contact)
        if host in (domain.lower() for domain in self.config.trunk.domains):
            return Route(RouteKind.TRUNK, self.trunk)
        return Route(RouteKind.NOT_FOUND)

    def hop_for_uri(self, uri: URI) -> Hop:
        """The hop for a route or contact URI: the trunk (with its TLS name) or a registered
        endpoint (over its connection) when it is one of those, else the URI's own."""
        hop = Hop.from_uri(uri)
        if hop.address == self.trunk.address:
            return self.trunk
        binding = self.registrar.binding_for(uri, self._now())
        if binding is not None and binding.hop.transport is hop.transport:
            return binding.hop
        return hop

    # -- requests ---------------------------------------------------------------------------

    async def _on_request(self, transaction: ServerTransaction, request: Request) -> None:
        try:
            await self._handle(transaction, request)
        except ProtocolError as error:
            status = error.status_hint if 400 <= error.status_hint <= 699 else 400
            self._reply(transaction, status, error.message)
        except SipTimeoutError as error:
            self._reply(transaction, 503, f"Service Unavailable: {error}")

    async def _handle(self, transaction: ServerTransaction, request: Request) -> None:
        max_forwards = request.max_forwards
        own_route = self._pop_own_routes(request)
        if not own_route and self._looped(request):
            self._reply(transaction, 482, "Loop Detected")
            return
        route = self.route(request)
        self._note(request, route.kind)
        if route.kind is RouteKind.LOCAL:
            self._local(transaction, request)
            return
        if route.kind is RouteKind.UNAVAILABLE:
            self._reply(
                transaction, 480, f"Temporarily Unavailable: {request.uri.user} is not registered"
            )
            return
        if route.kind is RouteKind.NOT_FOUND or route.hop is None:
            self._reply(transaction, 404, f"Not Found: no route for {request.uri}")
            return
        if max_forwards is not None and max_forwards <= 0:
            self._reply(transaction, 483, "Too Many Hops")
            return
        out = self._prepare(request, transaction.source, route)
        pending = self.stack.start_request(
            out, route.hop, on_provisional=lambda response: self._relay(transaction, response)
        )
        self._pending[transaction] = pending
        try:
            response = await pending.response()
        except SipTimeoutError as error:
            status = 503 if error.transport_error else 408
            what = "unreachable" if error.transport_error else "did not answer"
            self._reply(transaction, status, f"{route.hop} {what}")
            return
        finally:
            self._pending.pop(transaction, None)
        self._relay(transaction, response)

    def _local(self, transaction: ServerTransaction, request: Request) -> None:
        if request.method == "REGISTER":
            source = transaction.source
            hop = source if isinstance(source, Hop) else Hop(Transport.UDP, "0.0.0.0", 0)
            outcome = self.registrar.register(request, hop, self._now())
            logger.info(
                "REGISTER %s from %s: %d %s", request.to.uri, hop, outcome.status, outcome.reason
            )
            self._reply(transaction, outcome.status, outcome.reason, outcome.headers)
        elif request.method == "OPTIONS":
            self._reply(transaction, 200, "OK", (("Allow", ALLOW), ("Accept", "application/sdp")))
        else:
            self._reply(transaction, 404, f"Not Found: no route for {request.uri}")

    def _prepare(self, request: Request, source: object, route: Route) -> Request:
        """The request as we forward it (§16.6): new R-URI, Max-Forwards, Record-Route, Via."""
        out = request.copy()
        if route.uri is not None:
            out.uri = route.uri
        max_forwards = request.max_forwards
        out.headers.set(
            "Max-Forwards", max_forwards - 1 if max_forwards is not None else DEFAULT_MAX_FORWARDS
        )
        assert route.hop is not None
        outbound = self._local_address(route.hop.transport)
        if self.config.record_route and request.method in DIALOG_FORMING and request.to.tag is None:
            inbound_transport = source.transport if isinstance(source, Hop) else Transport.UDP
            inbound = self._local_address(inbound_transport)
            entries = (inbound, outbound) if inbound != outbound else (outbound,)
            for local in entries:  # the entry nearest the callee ends up on top
                out.headers.prepend("Record-Route", f"<{self._uri_of(local)}>")
        out.headers.prepend("Via", self._via(outbound))
        return out

    def _relay(self, transaction: ServerTransaction, response: Response) -> None:
        """A response from downstream, without our Via, on the server transaction (§16.7)."""
        try:
            relay_response(self.stack, transaction, response)
        except ProtocolError as error:
            logger.warning("cannot relay %d: %s", response.status, error.message)

    def _reply(
        self,
        transaction: ServerTransaction,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if transaction.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return
        if status >= 300:
            logger.info(
                "%d %s for %s %s",
                status,
                reason,
                transaction.request.method,
                transaction.request.uri,
            )
        response = make_response(transaction.request, status, reason)
        for name, value in headers:
            response.headers.add(name, value)
        try:
            self.stack.send_response(transaction, response)
        except ProtocolError as error:
            logger.warning("cannot answer %d: %s", status, error.message)

    # -- CANCEL, ACK, stray 2xx --------------------------------------------------------------

    def _on_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        pending = self._pending.get(transaction)
        if pending is not None:
            pending.cancel()  # the callee's 487 comes back through _relay
        else:
            self._reply(transaction, 487, "Request Terminated")

    def _on_ack(self, ack: Request, source: Hop) -> None:
        """An ACK for a 2xx: forwarded statelessly along its route (§16.11)."""
        out = ack.copy()
        self._pop_own_routes(out)
        try:
            route = self.route(out)
        except ProtocolError as error:
            logger.debug("ACK dropped: %s", error.message)
            return
        if route.hop is None or route.kind is RouteKind.LOCAL:
            logger.debug("ACK for Call-ID %s has nowhere to go", ack.call_id)
            return
        if route.uri is not None:
            out.uri = route.uri
        max_forwards = out.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return
        out.headers.set(
            "Max-Forwards", max_forwards - 1 if max_forwards is not None else DEFAULT_MAX_FORWARDS
        )
        out.headers.prepend("Via", self._via(self._local_address(route.hop.transport)))
        self.stack.send_stateless(out, route.hop)

    def _on_stray_response(self, response: Response) -> None:
        """A 2xx retransmission after our branch ended: on upstream statelessly (§16.7)."""
        vias = response.via
        if len(vias) < 2 or not self._is_our_via(vias[0].host, vias[0].port, vias[0].transport):
            return
        back = response.copy()
        back.headers.pop_first("Via")
        upstream = vias[1]
        host = upstream.received or upstream.host
        port = upstream.rport or upstream.port
        transport = Transport.parse(upstream.transport)
        self.stack.send_stateless(back, Hop(transport, host, port or transport.default_port))

    # -- helpers --------------------------------------------------------------------------------

    def _note(self, request: Request, kind: RouteKind) -> None:
        self.routed.append((request.method, str(request.uri), kind))
        del self.routed[:-200]

    def _local_address(self, transport: Transport) -> TransportAddress:
        listener = self.stack.listener(transport)
        if listener is None:
            raise ProtocolError(f"Service Unavailable: no {transport.value} listener", 503)
        return listener

    @staticmethod
    def _uri_of(local: TransportAddress) -> URI:
        params = Params.of(transport=local.transport.value.lower(), lr=None)
        return URI("sip", host=local.host, port=local.port, params=params)

    @staticmethod
    def _via(local: TransportAddress) -> str:
        sent_by = f"{format_host(local.host)}:{local.port}"
        return f"SIP/2.0/{local.transport.value} {sent_by};branch={new_branch()};rport"

    def _is_our_via(self, host: str, port: int | None, transport: str) -> bool:
        return any(
            listener.host == host
            and listener.port == (port or listener.transport.default_port)
            and listener.transport.value == transport.upper()
            for listener in self.stack.listeners
        )

    def _is_ours(self, uri: URI) -> bool:
        return any(
            uri.host == listener.host
            and (uri.port or listener.transport.default_port) == listener.port
            for listener in self.stack.listeners
        )

    def _pop_own_routes(self, request: Request) -> bool:
        """Remove our Route entries from the top (§16.4); True when there were any."""
        popped = False
        while True:
            routes = request.route
            if not routes or not self._is_ours(routes[0].uri):
                return popped
            request.headers.pop_first("Route")
            popped = True

    def _looped(self, request: Request) -> bool:
        """A Via of ours on a request that did not come back by our Record-Route (§16.3)."""
        return any(self._is_our_via(via.host, via.port, via.transport) for via in request.via)
