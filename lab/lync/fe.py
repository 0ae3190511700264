"""The simulated Lync Front End: registrar for its domain and stateful proxy on mutual TLS.

Routing (as the real pool): a request for a user of our domain goes to that user's
registered endpoints (over the connection the REGISTER came on: clients do not listen,
external ones sit behind the Edge); a request for a contact we registered goes there; any
other domain takes a static route (``video.example.com`` -> the gateway cluster FQDN,
65072, TLS).

Trust, by TLS peer certificate name (``ConnectionInfo.peer_names``):
- trusted application pools (the gateway's cluster and peer FQDNs) and our own servers
  (the Edge) may send anything;
- clients are authenticated simply: a client certificate naming the user (CN
  ``user@domain``) or, without one, a registration on the same connection. A REGISTER
  is accepted from anyone whose certificate (if any) names the AOR being registered;
- anyone else is untrusted and gets what the real FE answers: OPTIONS 401, INFO
  "400 Missing Correct Via Header", INVITE (and the rest) 403.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from certs.pki import LabPKI
from lab.lync.config import FrontEndConfig
from lab.lync.proxy import LyncProxy, Refusal, hop_for_address, hop_for_uri, server_stack
from sip.message import Request, make_response
from sip.stack import Hop, SipStack
from sip.transaction_server import ServerTransaction
from sip.transport import ConnectionInfo, Transport
from sip.uri import URI

__all__ = ["Binding", "FrontEnd", "Trust"]

logger = logging.getLogger(__name__)

NTLM_CHALLENGE = (
    'NTLM realm="SIP Communications Service", targetname="{target}", version=4'
)


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an address of record."""

    aor: str
    """``user@domain``, lower case."""
    contact: URI
    """The client's Contact."""
    hop: Hop
    """Where requests for it go: the connection the REGISTER came on."""
    expires_at: float
    """Loop time the binding lapses."""


class Trust(enum.Enum):
    """Who a request comes from, as the FE sees it."""

    APPLICATION = "trusted application"
    SERVER = "trusted server"
    CLIENT = "client"
    UNTRUSTED = "untrusted"


class FrontEnd(LyncProxy):
    """Registrar + proxy for ``config.domain`` (see the module doc)."""

    element = "FE"

    def __init__(self, config: FrontEndConfig, stack: SipStack) -> None:
        super().__init__(stack)
        self.config = config
        self.bindings: dict[str, list[Binding]] = {}
        """Registered contacts by AOR."""
        self.refusals: list[tuple[str, int]] = []
        """(method, status) of every request refused for trust (newest last, 100 kept)."""

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: FrontEndConfig, pki: LabPKI | None = None) -> FrontEnd:
        """Load (or make) the PKI, bind the TLS listener, return the running FE."""
        stack, pki = await server_stack(config.certs, config.cert_name, config.t1,
                                        config.listen.host, pki)
        fe = cls(config, stack)
        try:
            await stack.listen(
                Transport.TLS, config.listen.host, config.listen.port,
                ssl=pki.server_context(config.cert_name,
                                       require_client_cert=config.require_client_cert))
        except BaseException:
            await stack.close()
            raise
        return fe

    async def stop(self) -> None:
        await self.close()

    # -- trust --------------------------------------------------------------------------------

    def trust_of(
        self, request: Request, source: Hop, connection: ConnectionInfo | None
    ) -> Trust:
        names = {n.lower() for n in (connection.peer_names if connection else ())}
        if names & {n.lower() for n in self.config.trusted_applications}:
            return Trust.APPLICATION
        if names & {n.lower() for n in self.config.trusted_servers}:
            return Trust.SERVER
        sender = _aor(request.from_.uri)
        if sender in names:
            return Trust.CLIENT
        if not names and source.connection_id is not None and any(
            b.hop.connection_id == source.connection_id
            for bindings in self.bindings.values() for b in bindings
        ):
            return Trust.CLIENT
        return Trust.UNTRUSTED

    def admit(self, request: Request, source: Hop, connection: ConnectionInfo | None
              ) -> Refusal | None:
        trust = self.trust_of(request, source, connection)
        if trust is not Trust.UNTRUSTED or request.method == "REGISTER":
            return None
        names = ", ".join(connection.peer_names) if connection and connection.peer_names else "none"
        logger.warning("FE: %s from untrusted %s (certificate names: %s)", request.method,
                       source, names)
        if request.method == "OPTIONS":
            target = self.config.listen.host
            refusal = Refusal(401, "Unauthorized", (
                ("WWW-Authenticate", NTLM_CHALLENGE.format(target=target)),))
        else:
            refusal = Refusal(*_UNTRUSTED.get(request.method, (403, "Forbidden")))
        self.refusals.append((request.method, refusal.status))
        del self.refusals[:-100]
        return refusal

    # -- registrar and local requests -----------------------------------------------------

    def handle_local(self, transaction: ServerTransaction, request: Request, source: Hop,
                     connection: ConnectionInfo | None) -> bool:
        if request.method == "REGISTER":
            self._register(transaction, request, source, connection)
            return True
        if request.method == "OPTIONS" and request.uri.user is None and not request.route:
            response = make_response(request, 200)
            response.headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE,"
                                 " SUBSCRIBE, NOTIFY, REFER, REGISTER")
            response.headers.add("Server", "RTC/6.0")
            self.stack.send_response(transaction, response)
            return True
        return False

    def _register(self, transaction: ServerTransaction, request: Request, source: Hop,
                  connection: ConnectionInfo | None) -> None:
        aor = _aor(request.to.uri)
        if request.to.uri.host.lower() != self.config.domain.lower():
            self._reply(transaction, request, 403, f"Forbidden: not a user of {self.config.domain}")
            return
        names = {n.lower() for n in (connection.peer_names if connection else ())}
        trust = self.trust_of(request, source, connection)
        if names and trust is Trust.UNTRUSTED and aor not in names:
            # A certificate naming someone else: the real FE would fail authentication.
            self._reply(transaction, request, 403, "Forbidden: certificate does not match")
            return
        now = asyncio.get_running_loop().time()
        expires_header = request.headers.get("Expires")
        default = int(expires_header) if expires_header and expires_header.isdigit() else (
            self.config.registration_expires)
        current = [b for b in self.bindings.get(aor, []) if b.expires_at > now]
        for contact in request.contact:
            value = contact.params.get("expires")
            expires = int(value) if value and value.isdigit() else default
            expires = min(expires, self.config.registration_expires)
            current = [b for b in current if b.contact != contact.uri]
            if expires > 0:
                current.append(Binding(aor, contact.uri, source, now + expires))
        if (request.headers.get("Contact") or "").strip() == "*":
            current = []
        if current:
            self.bindings[aor] = current
        else:
            self.bindings.pop(aor, None)
        response = make_response(request, 200)
        for binding in current:
            left = max(0, int(binding.expires_at - now))
            response.headers.add("Contact", f"<{binding.contact}>;expires={left}")
        self.stack.send_response(transaction, response)
        logger.info("FE: %s registered %d contact(s) from %s", aor, len(current), source)

    def _reply(self, transaction: ServerTransaction, request: Request, status: int,
               reason: str) -> None:
        self.stack.send_response(transaction, make_response(request, status, reason))

    # -- routing --------------------------------------------------------------------------------

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``."""
        now = asyncio.get_running_loop().time()
        return [b for b in self.bindings.get(aor.lower(), []) if b.expires_at > now]

    def target(self, request: Request, source: Hop, connection: ConnectionInfo | None
               ) -> tuple[URI, Hop] | Refusal:
        uri = request.uri
        host = uri.host.lower()
        if host == self.config.domain.lower() and uri.user:
            bindings = self.lookup(_aor(uri))
            if not bindings:
                return Refusal(480, "Temporarily Unavailable")
            binding = bindings[-1]  # the most recent registration
            return binding.contact, binding.hop
        for bindings in self.bindings.values():
            for binding in bindings:
                if _same_contact(binding.contact, uri):
                    return uri, binding.hop
        for route in self.config.static_routes:
            if host == route.domain.lower():
                return uri, hop_for_address(route.destination, route.server_name)
        if request.to.tag is not None:
            # In-dialog (ACK, BYE, re-INVITE toward the gateway): the Request-URI is the far
            # end's Contact, reached directly, as the FE's Record-Route keeps it in the path.
            return uri, hop_for_uri(uri)
        return Refusal(404, "Not Found")


_UNTRUSTED = {
    "INFO": (400, "Missing Correct Via Header"),
    "INVITE": (403, "Forbidden"),
}


def _aor(uri: URI) -> str:
    return f"{uri.user or ''}@{uri.host}".lower()


def _same_contact(a: URI, b: URI) -> bool:
    return (a.user == b.user and a.host.lower() == b.host.lower()
            and (a.port or 5061) == (b.port or 5061))
