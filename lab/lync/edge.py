"""The simulated Lync Edge: Access Edge (SIP proxy for external clients) + A/V Edge (TURN).

Access Edge: external clients connect over TLS (5061, and 443 where that port can be
bound) without a certificate; everything they send (their REGISTER too: the FE signs them
in with NTLM) goes on to the FE pool over mutual TLS with the "edge" certificate,
Record-Routed so in-dialog requests come back through us. Requests from the
internal side (a connection whose certificate names the FE) go to the external client
whose connection the Request-URI (the client's Contact) names.

A/V Edge: ``turn.server.TurnServer`` on its own address (a real Edge gives the Access Edge
and the A/V Edge one each, both with 443): UDP 3478 and TCP 3478 + 443, relays 50000-59999,
serving MS-TURN (Lync / Skype for Business clients, pidgin-sipe: credentials from the FE's
MRAS, checked with the key the Edge shares with the FE) beside standard TURN (the static
accounts); external clients take their srflx and relay candidates from it.
"""

from __future__ import annotations

import errno
import logging

from certs.pki import LabPKI
from lab.lync.config import EdgeConfig
from lab.lync.proxy import LyncProxy, Refusal, hop_for_address, server_stack
from sip.message import Request
from sip.stack import Hop, SipStack
from sip.transport import ConnectionInfo, Transport, TransportAddress
from sip.uri import URI, Params
from turn.config import TurnConfig
from turn.server import TurnServer

__all__ = ["Edge"]

logger = logging.getLogger(__name__)


class Edge(LyncProxy):
    """Access Edge proxy + A/V Edge TURN server."""

    element = "Edge"

    def __init__(self, config: EdgeConfig, stack: SipStack) -> None:
        super().__init__(stack)
        self.config = config
        self.turn: TurnServer | None = None
        """The A/V Edge, when enabled and started."""

    @classmethod
    async def start(cls, config: EdgeConfig, pki: LabPKI | None = None) -> Edge:
        """Bind the Access Edge listeners and start the A/V Edge."""
        # Connections go only toward the FE (clients' own connections are reused): they
        # leave from the internal leg, not from the external listen address.
        stack, pki = await server_stack(config.certs, config.cert_name, config.t1,
                                        config.source_host, pki)
        edge = cls(config, stack)
        try:
            # External clients may come without a certificate: asked for, not required.
            context = pki.server_context(config.cert_name, require_client_cert=False)
            await stack.listen(Transport.TLS, config.listen.host, config.listen.port,
                               ssl=context)
            for port in config.extra_ports:
                try:
                    await stack.listen(Transport.TLS, config.listen.host, port, ssl=context)
                except OSError as error:
                    if error.errno not in (errno.EACCES, errno.EADDRINUSE, errno.EPERM):
                        raise
                    logger.warning("Edge: TLS port %d not bound (%s); clients use %d", port,
                                   error.strerror, config.listen.port)
            if config.turn.enabled:
                turn = edge.turn_config()
                # Configured with one address for both roles (a real Edge, and the lab's by
                # default, has one each): a TCP port the Access Edge serves stays its own.
                shared = [p for p in turn.tcp_ports if any(
                    a.host == turn.listen and a.port == p for a in stack.listeners)]
                if shared:
                    logger.info("A/V Edge: TCP %s is the Access Edge's on %s; MS-TURN over TCP "
                                "on %d", ",".join(map(str, shared)), turn.listen, turn.ports[0])
                    turn = turn.replace(tcp_ports=tuple(
                        p for p in turn.tcp_ports if p not in shared))
                edge.turn = await _start_turn(turn)
        except BaseException:
            await edge.close()
            raise
        return edge

    def turn_config(self) -> TurnConfig:
        av = self.config.turn
        return TurnConfig(
            listen=av.listen,
            ports=(av.port, av.port),
            relay_ports=(av.relay_ports.first, av.relay_ports.last),
            tcp_ports=av.tcp_ports,
            realm=av.realm,
            users=tuple((u.username, u.password) for u in av.users),
            ms_turn_secret=av.mras_secret or None,
            allow_peers=av.allow_peers,
            default_lifetime=min(600, av.max_lifetime),
            max_lifetime=av.max_lifetime,
        )

    @property
    def turn_tcp_port(self) -> int | None:
        """The A/V Edge's TCP port for MS-TURN clients: 443 when bound, else the main one."""
        if self.turn is None:
            return None
        ports = [p for t, _, p in self.turn.addresses if t == "tcp"]
        extra = [p for p in ports if p in self.config.turn.tcp_ports]
        return (extra or ports)[0] if ports else None

    @property
    def turn_address(self) -> tuple[str, int] | None:
        """(host, port) of the A/V Edge UDP listener, once started."""
        if self.turn is None:
            return None
        return next(((h, p) for t, h, p in self.turn.addresses if t == "udp"), None)

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self.turn is not None:
            await self.turn.stop()
        await super().close()

    # -- routing --------------------------------------------------------------------------------

    # -- the two legs ------------------------------------------------------------------------

    def is_ours(self, uri: URI) -> bool:
        """Our listeners, and any URI on our internal leg (the Record-Route of a flow)."""
        inside = self.config.source_host
        return super().is_ours(uri) or (inside is not None and self.two_legs
                                        and uri.host.strip("[]") == inside)

    @property
    def two_legs(self) -> bool:
        """Whether the internal leg has its own address (a multi-homed Edge)."""
        return self.config.internal_source not in ("", self.config.listen.host)

    def record_routes(self, connection: ConnectionInfo | None, hop: Hop) -> tuple[URI, ...]:
        """On two legs, one Record-Route per side (RFC 5658): the external listener for the
        clients, and toward the FE the local address of our connection to it. The FE has no
        route to the external network, and reaches that address over the connection we
        opened (it reuses a connection whose remote address a Route names)."""
        external = self.record_route_uri()
        if not self.two_legs:
            return (external,)
        if self.from_inside(connection):
            flow = connection
        else:
            flow = self.stack.transports.find_connection(
                TransportAddress(hop.transport, hop.host, hop.port), hop.server_hostname)
        if flow is None:
            logger.info("Edge: no connection to the FE yet: one Record-Route (in-dialog "
                        "requests from the FE need the external address)")
            return (external,)
        internal = URI("sip", host=flow.local.host, port=flow.local.port,
                       params=Params.of(transport="tls", lr=None))
        # Prepended in order: the entry for the side the request goes to ends up on top.
        return (internal, external) if self.from_inside(connection) else (external, internal)

    def from_inside(self, connection: ConnectionInfo | None) -> bool:
        names = {n.lower() for n in (connection.peer_names if connection else ())}
        return bool(names & {n.lower() for n in self.config.internal_names})

    def target(self, request: Request, source: Hop, connection: ConnectionInfo | None
               ) -> tuple[URI, Hop] | Refusal:
        if not self.from_inside(connection):
            return request.uri, hop_for_address(self.config.front_end,
                                                self.config.front_end_name)
        uri = request.uri
        address = TransportAddress(Transport.TLS, uri.host, uri.port or 5061)
        client = self.stack.transports.find_connection(address)
        if client is None or client.outbound:
            return Refusal(480, "Temporarily Unavailable: no such external client connected")
        return uri, Hop(Transport.TLS, uri.host, uri.port or 5061, connection_id=client.id)


async def _start_turn(config: TurnConfig) -> TurnServer:
    """The A/V Edge TURN server; its extra TCP ports (443) only where they can be bound."""
    server = TurnServer(config)
    try:
        await server.start()
    except OSError as error:
        if not config.tcp_ports or error.errno not in (errno.EACCES, errno.EADDRINUSE,
                                                       errno.EPERM):
            raise
        await server.stop()
        logger.warning("A/V Edge: TCP ports %s not bound (%s); MS-TURN over TCP uses %d",
                       ",".join(map(str, config.tcp_ports)), error.strerror, config.ports[0])
        server = TurnServer(config.replace(tcp_ports=()))
        await server.start()
    return server
