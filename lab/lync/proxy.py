"""The stateful proxy (RFC 3261 §16) shared by the simulated Front End and Access Edge.

Both elements are proxies, not B2BUAs: Call-ID, tags and CSeq pass unchanged. The proxy
adds its Via, decrements Max-Forwards (483 at zero), Record-Routes dialog-forming requests
so in-dialog traffic comes back through it, consumes Route entries naming itself (loose
routing) and relays 1xx (but 100) and the final response on the server transaction. An
ACK for a 2xx has no transaction: it is forwarded statelessly; CANCEL cancels the
downstream INVITE, whose 487 then comes back the usual way.

Subclasses decide two things: whether a request may pass (``admit``) and where a request
with no Route left goes (``target``). Names in URIs are resolved with the lab host table,
and the name a TLS peer must present comes from the same table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certs.pki import LabPKI, init_pki
from lab.hosts import HOSTS
from sip.errors import ProtocolError
from sip.headers import Via
from sip.message import Request, Response, make_response, new_branch
from sip.proxy import relay_response
from sip.stack import ClientRequest, Hop, SipStack, SipTimeoutError, StackHandlers
from sip.timers import TimerSettings
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import ConnectionInfo, Transport, TransportAddress, TransportSettings
from sip.uri import URI, Params, format_host

__all__ = ["LyncProxy", "Refusal", "hop_for_uri", "server_stack"]

logger = logging.getLogger(__name__)

DIALOG_FORMING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
DEFAULT_MAX_FORWARDS = 70
SERVER_KEEPALIVE = 120.0
"""Seconds between CRLF keep-alives on a server's outbound connections."""


async def server_stack(
    certs: str, cert_name: str, t1: float, host: str | None, pki: LabPKI | None = None
) -> tuple[SipStack, LabPKI]:
    """A Lync server's SIP stack (no listener yet) and the lab PKI it uses: ``pki``, else
    the one in ``certs`` (made there if missing). Outbound TLS presents ``cert_name`` and
    leaves from ``host`` (None: the kernel's choice, for a role on several networks); T2 is
    at least 8*T1, as Lync servers retransmit. Its outbound connections (the Edge's to the
    FE, the FE's to the gateway) send RFC 5626 CRLF keep-alives, so an idle lab keeps them
    past the peer's 600 s idle timeout."""
    if pki is None:
        pki = (await asyncio.to_thread(init_pki, Path(certs)))[0]
    stack = SipStack(
        timers=TimerSettings(t1=t1, t2=max(4.0, t1 * 8)),
        transport_settings=TransportSettings(outbound_ports=None, source_host=host,
                                             keepalive_interval=SERVER_KEEPALIVE),
        tls_client=pki.client_context(cert_name),
    )
    return stack, pki


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request answered by the proxy itself."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def _source_of(transaction: ServerTransaction) -> Hop | None:
    source = transaction.source
    return source if isinstance(source, Hop) else None


def hop_for_uri(uri: URI, hosts: Mapping[str, str] = HOSTS) -> Hop:
    """Where a request for ``uri`` goes: a lab name resolved to its address, with the name
    kept as the TLS server name; an address gets the lab name it has, if any."""
    hop = Hop.from_uri(uri)
    host = uri.host.strip("[]").lower()
    if host in hosts:
        return Hop(hop.transport, hosts[host], hop.port, server_hostname=host)
    name = next((n for n, a in hosts.items() if a == host), None)
    return Hop(hop.transport, host, hop.port, server_hostname=name)


def hop_for_address(address: TransportAddress, name: str = "",
                    hosts: Mapping[str, str] = HOSTS) -> Hop:
    """A configured next hop (``tls:lyncexp.video.example.com:65072``) as a :class:`Hop`."""
    host = address.host.lower()
    resolved = hosts.get(host, address.host)
    server_name = name or (host if host in hosts else None)
    return Hop(address.transport, resolved, address.port, server_hostname=server_name)


class LyncProxy:
    """A stateful proxy on its own :class:`SipStack` (one TLS listener)."""

    element = "proxy"
    """Name used in logs and Server headers."""

    def __init__(self, stack: SipStack) -> None:
        self.stack = stack
        self._pending: dict[ServerTransaction, ClientRequest] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        stack.handlers = StackHandlers(
            on_request=self._on_request,
            on_ack=self._on_ack,
            on_cancel=self._on_cancel,
            on_stray_response=self._on_stray_response,
        )

    # -- to override ---------------------------------------------------------------------

    def admit(self, request: Request, source: Hop, connection: ConnectionInfo | None
              ) -> Refusal | None:
        """None to let ``request`` through, else how to refuse it."""
        return None

    def target(self, request: Request, source: Hop, connection: ConnectionInfo | None
               ) -> tuple[URI, Hop] | Refusal:
        """(Request-URI, next hop) for a request with no Route left, or a refusal."""
        return Refusal(404, "Not Found")

    def handle_local(self, transaction: ServerTransaction, request: Request, source: Hop,
                     connection: ConnectionInfo | None) -> bool:
        """Answer a request addressed to this element itself; True when answered."""
        return False

    def sign(self, message: Request | Response, toward: Hop | None,
             answering: Request | None = None) -> None:
        """Last change before ``message`` leaves (toward ``toward``, or as the answer to
        ``answering``): the FE signs what goes to a signed-in client ([MS-SIPAE])."""

    # -- helpers for subclasses -------------------------------------------------------------

    @property
    def listener(self) -> TransportAddress:
        found = self.stack.listener(Transport.TLS)
        if found is None:
            raise RuntimeError(f"the {self.element} has no TLS listener")
        return found

    def connection_of(self, source: Hop) -> ConnectionInfo | None:
        if source.connection_id is None:
            return None
        return self.stack.transports.connection(source.connection_id)

    def is_ours(self, uri: URI) -> bool:
        """Whether ``uri`` names this element (its listener address and port)."""
        host = uri.host.strip("[]").lower()
        names = {listener.host for listener in self.stack.listeners}
        names |= {name for name, address in HOSTS.items() if address in names}
        ports = {listener.port for listener in self.stack.listeners}
        port = uri.port if uri.port is not None else 5061
        return host in names and port in ports

    def record_route_uri(self) -> URI:
        local = self.listener
        return URI("sip", host=local.host, port=local.port,
                   params=Params.of(transport="tls", lr=None))

    def record_routes(self, connection: ConnectionInfo | None, hop: Hop) -> tuple[URI, ...]:
        """Record-Route URIs to prepend, in order, for a request that came on ``connection``
        and goes to ``hop`` (an element on two networks adds one per side, RFC 5658)."""
        return (self.record_route_uri(),)

    # -- requests ---------------------------------------------------------------------------

    def _on_request(self, transaction: ServerTransaction, request: Request) -> None:
        source = transaction.source
        if not isinstance(source, Hop):
            self._answer(transaction, Refusal(500, "Server Internal Error"))
            return
        connection = self.connection_of(source)
        try:
            refusal = self.admit(request, source, connection)
            if refusal is not None:
                self._answer(transaction, refusal)
                return
            if self.handle_local(transaction, request, source, connection):
                return
            decision = self._route(request, source, connection)
        except ProtocolError as error:
            status = error.status_hint if 400 <= error.status_hint <= 699 else 400
            self._answer(transaction, Refusal(status, error.message))
            return
        if isinstance(decision, Refusal):
            self._answer(transaction, decision)
            return
        out, hop = decision
        task = asyncio.ensure_future(self._forward(transaction, out, hop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _route(self, request: Request, source: Hop, connection: ConnectionInfo | None
               ) -> tuple[Request, Hop] | Refusal:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return Refusal(483, "Too Many Hops")
        out = request.copy()
        while out.route and self.is_ours(out.route[0].uri):
            out.headers.pop_first("Route")
        out.headers.set("Max-Forwards", str(
            (max_forwards - 1) if max_forwards is not None else DEFAULT_MAX_FORWARDS))
        if out.route:
            hop = hop_for_uri(out.route[0].uri)
        else:
            decided = self.target(out, source, connection)
            if isinstance(decided, Refusal):
                return decided
            uri, hop = decided
            out.uri = uri
        if request.method in DIALOG_FORMING and request.to.tag is None:
            for uri in self.record_routes(connection, hop):
                out.headers.prepend("Record-Route", f"<{uri}>")
        return out, hop

    async def _forward(self, transaction: ServerTransaction, out: Request, hop: Hop) -> None:
        out.headers.prepend("Via", self._via(new_branch()))
        self.sign(out, hop)
        try:
            pending = self.stack.start_request(
                out, hop, on_provisional=lambda r: self._relay(transaction, r))
        except ProtocolError as error:
            self._answer(transaction, Refusal(500, f"Server Internal Error: {error.message}"))
            return
        self._pending[transaction] = pending
        try:
            response = await pending.response()
        except SipTimeoutError as error:
            logger.info("%s: %s %s to %s failed: %s", self.element, out.method, out.uri, hop,
                        error)
            status = 480 if error.transport_error else 408
            self._answer(transaction, Refusal(status, "Temporarily Unavailable"
                                              if status == 480 else "Request Timeout"))
            return
        finally:
            self._pending.pop(transaction, None)
        self._relay(transaction, response)

    def _relay(self, transaction: ServerTransaction, response: Response) -> None:
        """Send a downstream response upstream without our Via (§16.7)."""
        self.sign(response, _source_of(transaction), transaction.request)
        try:
            relay_response(self.stack, transaction, response)
        except ProtocolError as error:
            logger.warning("%s: cannot relay %d: %s", self.element, response.status,
                           error.message)

    def _answer(self, transaction: ServerTransaction, refusal: Refusal) -> None:
        if transaction.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return
        logger.info("%s: %d %s to %s (Call-ID %s)", self.element, refusal.status,
                    refusal.reason, transaction.request.method,
                    transaction.request.headers.get("Call-ID"))
        try:
            response = make_response(transaction.request, refusal.status, refusal.reason)
            for name, value in refusal.headers:
                response.headers.add(name, value)
            self.sign(response, _source_of(transaction), transaction.request)
            self.stack.send_response(transaction, response)
        except ProtocolError as error:
            logger.warning("%s: cannot answer %d: %s", self.element, refusal.status,
                           error.message)

    def _via(self, branch: str) -> str:
        local = self.listener
        return (f"SIP/2.0/TLS {format_host(local.host)}:{local.port};branch={branch};rport")

    # -- ACK, CANCEL, stray responses -------------------------------------------------------

    def _on_ack(self, ack: Request, source: Hop) -> None:
        """An ACK for a 2xx: forwarded statelessly along the route (§16.11)."""
        try:
            decision = self._route(ack, source, self.connection_of(source))
        except ProtocolError as error:
            logger.info("%s: ACK dropped: %s", self.element, error.message)
            return
        if isinstance(decision, Refusal):
            logger.info("%s: ACK dropped: %d %s", self.element, decision.status, decision.reason)
            return
        out, hop = decision
        out.headers.prepend("Via", self._via(new_branch()))
        self.sign(out, hop)
        self.stack.send_stateless(out, hop)

    def _on_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        pending = self._pending.get(transaction)
        if pending is not None:
            pending.cancel()  # the downstream 487 is relayed as the INVITE's answer
        else:
            self._answer(transaction, Refusal(487, "Request Terminated"))

    def _on_stray_response(self, response: Response) -> None:
        """A 2xx retransmission (or another fork's 2xx) after our transaction ended:
        forwarded statelessly to the next Via (§16.7 step 10)."""
        back = response.copy()
        back.headers.pop_first("Via")
        vias = back.via
        if not vias or response.status >= 300 or response.status < 200:
            return
        via: Via = vias[0]
        port = via.rport if isinstance(via.rport, int) else (via.port or 5061)
        host = via.received or via.host
        self.stack.send_stateless(back, Hop(Transport.parse(via.transport), host, port))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        await self.stack.close()
