"""The simulated Lync Front End: registrar, stateful proxy, and the notifier of a user's own data.

Routing (as the real pool): a request for a user of our domain goes to that user's
registered endpoints (over the connection the REGISTER came on: clients do not listen,
external ones sit behind the Edge); a request for a contact we registered goes there; any
other domain takes a static route (``video.example.com`` -> the gateway cluster FQDN,
65072, TLS).

Trust:
- trusted application pools (the gateway's cluster and peer FQDNs) and our own servers
  (the Edge) are known by their TLS certificate names (``ConnectionInfo.peer_names``) and
  are never challenged;
- clients connect without a certificate and sign in with NTLM as [MS-SIPAE] describes
  (:mod:`lab.lync.sipae`): REGISTER -> 401 ``WWW-Authenticate: NTLM`` -> the handshake ->
  200 signed with ``Authentication-Info``. Everything the FE sends a signed-in client is
  signed; a client's signed requests are checked. External clients sign in the same way
  through the Edge (the association is found by its ``opaque``);
- anyone else gets what the real FE answers: 401/407 with an NTLM challenge to a
  connection with no certificate, and to a server with an unknown certificate OPTIONS 401,
  INFO "400 Missing Correct Via Header", INVITE (and the rest) 403.

A signed-in user's self-subscriptions (provisioning-v2, roaming contacts/ACL/self,
pending watchers) are answered here (:mod:`lab.lync.self_data`), as are SERVICE requests
(publications: 200) and MRAS credential requests (:mod:`lab.lync.mras`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from dataclasses import dataclass, field

from certs.pki import LabPKI
from lab.lync import mras
from lab.lync.config import FrontEndConfig
from lab.lync.proxy import LyncProxy, Refusal, hop_for_address, hop_for_uri, server_stack
from lab.lync.self_data import SELF_EVENTS, AvEncryption, self_document
from lab.lync.sipae import (
    REALM,
    AuthError,
    SecurityAssociation,
    ServerHandshake,
    auth_params,
    signature_text,
)
from sip.message import Request, Response, make_response, new_branch, new_tag
from sip.stack import Hop, SipStack
from sip.transaction_server import ServerTransaction
from sip.transport import ConnectionInfo, Transport
from sip.uri import URI

__all__ = ["Binding", "FrontEnd", "SignedIn", "Trust"]

logger = logging.getLogger(__name__)

SERVER = "RTC/6.0"
ALLOW = ("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, REFER,"
         " REGISTER, SERVICE, BENOTIFY, PRACK, UPDATE")
SUPPORTED = ("gruu-10", "adhoclist", "msrtc-event-categories",
             "com.microsoft.msrtc.presence", "ms-piggyback-first-notify", "ms-benotify")
MAX_PENDING = 1000
"""Handshakes waiting for their AUTHENTICATE (oldest dropped first)."""
MAX_SIGNED_IN = 10000
"""Established associations kept (oldest dropped first)."""


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
    opaque: str = ""
    """The client's security association (signs what we send it)."""
    instance: str = ""
    """``+sip.instance`` of the Contact (GRUU)."""


@dataclass(slots=True)
class SignedIn:
    """A client's established MS-SIPAE association."""

    context: SecurityAssociation
    aor: str
    connection_id: int | None
    """The client's own connection (None: it came through the Edge)."""
    remote: bool
    snum: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def next_num(self) -> str:
        self.snum += 1
        return str(self.snum)


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
        self.handshakes: dict[str, ServerHandshake] = {}
        """NTLM handshakes waiting for the AUTHENTICATE, by opaque."""
        self.signed_in: dict[str, SignedIn] = {}
        """Established associations by opaque."""
        self.auth_failures: list[tuple[str, str]] = []
        """(account or AOR, reason) of failed sign-ins (newest last, 100 kept)."""
        self.notified: list[tuple[str, str]] = []
        """(AOR, event) of every self-subscription answered (newest last, 100 kept)."""

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: FrontEndConfig, pki: LabPKI | None = None) -> FrontEnd:
        """Load (or make) the PKI, bind the TLS listener, return the running FE."""
        stack, pki = await server_stack(config.certs, config.cert_name, config.t1,
                                        config.listen.host, pki)
        fe = cls(config, stack)
        try:
            # Clients come without a certificate (CERT_OPTIONAL); one that is presented is
            # still verified against the lab CA, and names trusted servers.
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
        if self.session_of(request, source) is not None:
            return Trust.CLIENT
        return Trust.UNTRUSTED

    def session_of(self, request: Request, source: Hop | None) -> SignedIn | None:
        """The association a request belongs to: its Authorization's opaque, else the
        client connection it came on."""
        header = request.headers.get("Authorization") or request.headers.get(
            "Proxy-Authorization")
        if header:
            scheme, params = auth_params(header)
            session = self.signed_in.get(params.get("opaque", ""))
            if session is not None and scheme.upper() == "NTLM":
                return session
        if source is not None and source.connection_id is not None:
            for session in self.signed_in.values():
                if session.connection_id == source.connection_id:
                    return session
        return None

    def _challenge_header(self) -> str:
        return (f'NTLM realm="{REALM}", targetname="{self.config.target_name}", version=4')

    def admit(self, request: Request, source: Hop, connection: ConnectionInfo | None
              ) -> Refusal | None:
        trust = self.trust_of(request, source, connection)
        if request.method == "REGISTER":
            return None
        if trust is Trust.CLIENT:
            return self._check_signature(request, source, required=True)
        if trust is Trust.SERVER and request.from_.uri.host.lower() == (
                self.config.domain.lower()):
            # A user of ours through the Edge: signed in like any client.
            return self._check_signature(request, source, required=True)
        if trust is not Trust.UNTRUSTED:
            if request.headers.get("Authorization"):
                return self._check_signature(request, source)
            return None
        names = ", ".join(connection.peer_names) if connection and connection.peer_names else ""
        logger.warning("FE: %s from unauthenticated %s (certificate names: %s)",
                       request.method, source, names or "none")
        if not names:
            # A client that has not signed in: authenticate first (MS-SIPAE 407).
            refusal = Refusal(407, "Proxy Authentication Required", (
                ("Proxy-Authenticate", self._challenge_header()),))
        elif request.method == "OPTIONS":
            refusal = Refusal(401, "Unauthorized", (
                ("WWW-Authenticate", self._challenge_header()),))
        else:
            refusal = Refusal(*_UNTRUSTED.get(request.method, (403, "Forbidden")))
        self.refusals.append((request.method, refusal.status))
        del self.refusals[:-100]
        return refusal

    def _check_signature(self, request: Request, source: Hop, *, required: bool = False
                         ) -> Refusal | None:
        """A client's request must carry a signature that verifies ([MS-SIPAE]: every
        message after sign-in is signed); ACK and CANCEL are hop by hop and pass."""
        if request.method in ("ACK", "CANCEL"):
            return None
        header = request.headers.get("Authorization") or request.headers.get(
            "Proxy-Authorization")
        if not header:
            if not required:
                return None
            self.refusals.append((request.method, 407))
            del self.refusals[:-100]
            return Refusal(407, "Proxy Authentication Required: unsigned request", (
                ("Proxy-Authenticate", self._challenge_header()),))
        session = self.session_of(request, source)
        _, params = auth_params(header)
        if session is None:
            return Refusal(401, "Unauthorized: unknown security association", (
                ("WWW-Authenticate", self._challenge_header()),))
        if "response" not in params:
            return Refusal(401, "Unauthorized: no message signature", (
                ("WWW-Authenticate", self._challenge_header()),))
        text = signature_text(request, protocol="NTLM", rand=params.get("crand", ""),
                              num=params.get("cnum", ""), realm=session.context.realm,
                              target=session.context.target)
        if not session.context.verify(text, params["response"]):
            logger.warning("FE: bad signature on %s from %s", request.method, session.aor)
            return Refusal(401, "Unauthorized: message signature does not verify", (
                ("WWW-Authenticate", self._challenge_header()),))
        return None

    # -- signing ------------------------------------------------------------------------------

    def sign(self, message: Request | Response, toward: Hop | None,
             answering: Request | None = None) -> None:
        if isinstance(message, Request):
            # A client's credentials were for us (the hop it signed in with): never passed on.
            for name in ("Authorization", "Proxy-Authorization"):
                value = message.headers.get(name)
                if value and auth_params(value)[1].get("opaque", "") in self.signed_in:
                    message.headers.remove(name)
        session: SignedIn | None = None
        if answering is not None:
            # An answer goes back where the request came from (``toward``).
            session = self.session_of(answering, toward)
        elif isinstance(message, Request) and toward is not None:
            session = self._session_toward(message, toward)
        if session is None:
            return
        rand = secrets.token_hex(4).upper()
        num = session.next_num()
        context = session.context
        text = signature_text(message, protocol="NTLM", rand=rand, num=num,
                              realm=context.realm, target=context.target)
        message.headers.set("Authentication-Info", (
            f'NTLM rspauth="{context.sign(text)}", srand="{rand}", snum="{num}",'
            f' opaque="{context.opaque}", qop="auth", targetname="{context.target}",'
            f' realm="{context.realm}"'))

    def _session_for_connection(self, hop: Hop | None) -> SignedIn | None:
        if hop is None or hop.connection_id is None:
            return None
        return next((s for s in self.signed_in.values()
                     if s.connection_id == hop.connection_id), None)

    def _session_toward(self, request: Request, hop: Hop) -> SignedIn | None:
        direct = self._session_for_connection(hop)
        if direct is not None:
            return direct
        for bindings in self.bindings.values():
            for binding in bindings:
                if binding.opaque and _same_contact(binding.contact, request.uri):
                    return self.signed_in.get(binding.opaque)
        return None

    # -- registrar and local requests -----------------------------------------------------

    def handle_local(self, transaction: ServerTransaction, request: Request, source: Hop,
                     connection: ConnectionInfo | None) -> bool:
        if request.method == "REGISTER":
            self._register(transaction, request, source, connection)
            return True
        if request.method == "OPTIONS" and request.uri.user is None and not request.route:
            response = make_response(request, 200)
            response.headers.add("Allow", ALLOW)
            response.headers.add("Server", SERVER)
            self._send(transaction, response)
            return True
        session = self.session_of(request, source)
        if session is None or request.route:
            return False
        if request.method == "SERVICE" and _is_mras(request.uri):
            self._mras(transaction, request, session)
            return True
        own = _aor(request.uri) == session.aor
        if request.method == "SERVICE" and own:
            # Publications of the user's own presence/categories: accepted, kept nowhere.
            self._send(transaction, make_response(request, 200))
            return True
        if request.method == "SUBSCRIBE" and own and request.to.tag is None:
            self._self_subscribe(transaction, request, source, session)
            return True
        return False

    def _send(self, transaction: ServerTransaction, response: Response) -> None:
        source = transaction.source
        self.sign(response, source if isinstance(source, Hop) else None, transaction.request)
        self.stack.send_response(transaction, response)

    def _register(self, transaction: ServerTransaction, request: Request, source: Hop,
                  connection: ConnectionInfo | None) -> None:
        aor = _aor(request.to.uri)
        if request.to.uri.host.lower() != self.config.domain.lower():
            self._reply(transaction, request, 403, f"Forbidden: not a user of {self.config.domain}")
            return
        trust = self.trust_of(request, source, connection)
        if trust is Trust.APPLICATION:
            self._reply(transaction, request, 403, "Forbidden: applications do not register")
            return
        session = self._authenticate(transaction, request, source, trust)
        if session is None:
            return
        if session.aor != aor:
            self._reply(transaction, request, 403,
                        f"Forbidden: signed in as {session.aor}, not {aor}")
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
            instance = (contact.params.get("+sip.instance") or "").strip('"')
            # The same device (instance) registering again replaces its old contact.
            current = [b for b in current if b.contact != contact.uri
                       and not (instance and b.instance == instance)]
            if expires > 0:
                binding = Binding(aor, contact.uri, source, now + expires,
                                  opaque=session.context.opaque, instance=instance)
                current.append(binding)
        if (request.headers.get("Contact") or "").strip() == "*":
            current = []
        if current:
            self.bindings[aor] = current
        else:
            self.bindings.pop(aor, None)
        response = make_response(request, 200)
        longest = 0
        for binding in current:
            left = max(0, round(binding.expires_at - now))
            longest = max(longest, left)
            text = f"<{binding.contact}>;expires={left}"
            if binding.instance:
                gruu = f"sip:{aor};opaque=user:epid:{_epid(binding.instance)};gruu"
                text += f';+sip.instance="{binding.instance}";gruu="{gruu}"'
            response.headers.add("Contact", text)
        response.headers.add("Expires", str(longest))
        for value in SUPPORTED:
            response.headers.add("Supported", value)
        # sipe splits Allow-Events on "," without trimming: no spaces.
        response.headers.add("Allow-Events", ",".join((*SELF_EVENTS, "presence")))
        response.headers.add("ms-keep-alive", f"UAS; tcp=no; hop-hop=yes; end-end=no;"
                             f" timeout={self.config.keep_alive}")
        if session.remote:
            response.headers.add("ms-user-logon-data", "RemoteUser")
        response.headers.add("Server", SERVER)
        self._send(transaction, response)
        logger.info("FE: %s signed in as %s, %d contact(s) from %s", aor,
                    session.context.user, len(current), source)

    def _authenticate(self, transaction: ServerTransaction, request: Request, source: Hop,
                      trust: Trust) -> SignedIn | None:
        """The REGISTER's association, or None once answered (401 challenge / refusal)."""
        header = request.headers.get("Authorization")
        if not header:
            self._unauthorized(transaction, request, self._challenge_header())
            return None
        scheme, params = auth_params(header)
        if scheme.upper() != "NTLM":
            self._unauthorized(transaction, request, self._challenge_header(),
                               f"Unauthorized: {scheme} is not offered")
            return None
        opaque = params.get("opaque", "")
        token = params.get("gssapi-data")
        session = self.signed_in.get(opaque)
        if session is not None and not token:
            refusal = self._check_signature(request, source)
            if refusal is not None:
                self._answer(transaction, refusal)
                return None
            return session
        if token is None or (token == "" and opaque in self.signed_in):
            self._unauthorized(transaction, request, self._challenge_header())
            return None
        if token == "":
            handshake = ServerHandshake(self.config.target_name)
            challenge = handshake.challenge()
            self.handshakes[handshake.opaque] = handshake
            while len(self.handshakes) > MAX_PENDING:
                del self.handshakes[next(iter(self.handshakes))]
            self._unauthorized(transaction, request, (
                f'NTLM opaque="{handshake.opaque}", gssapi-data="{challenge}",'
                f' targetname="{self.config.target_name}", realm="{REALM}", version=4'))
            return None
        pending = self.handshakes.pop(opaque, None)
        if pending is None:
            self._unauthorized(transaction, request, self._challenge_header(),
                               "Unauthorized: no handshake with this opaque")
            return None
        try:
            context = pending.accept(token, self.config.passwords)
        except AuthError as error:
            self.auth_failures.append((_aor(request.to.uri), str(error)))
            del self.auth_failures[:-100]
            logger.warning("FE: sign-in of %s failed: %s", _aor(request.to.uri), error)
            self._unauthorized(transaction, request, self._challenge_header(),
                               "Unauthorized: authentication failed")
            return None
        account = context.user.rpartition("\\")[2].lower()
        aor = next((a.aor.lower() for a in self.config.accounts
                    if account in (a.aor.lower(), a.aor.lower().partition("@")[0])), account)
        session = SignedIn(context, aor, source.connection_id if trust is not Trust.SERVER
                           else None, remote=trust is Trust.SERVER)
        if "response" in params:
            text = signature_text(request, protocol="NTLM", rand=params.get("crand", ""),
                                  num=params.get("cnum", ""), realm=context.realm,
                                  target=context.target)
            if not context.verify(text, params["response"]):
                self._unauthorized(transaction, request, self._challenge_header(),
                                   "Unauthorized: message signature does not verify")
                return None
        self._forget_closed(aor)
        self.signed_in[context.opaque] = session
        while len(self.signed_in) > MAX_SIGNED_IN:
            del self.signed_in[next(iter(self.signed_in))]
        return session

    def _forget_closed(self, aor: str) -> None:
        """Drop ``aor``'s associations whose own connection has closed."""
        transports = self.stack.transports
        for opaque, old in list(self.signed_in.items()):
            if (old.aor == aor and old.connection_id is not None
                    and transports.connection(old.connection_id) is None):
                del self.signed_in[opaque]

    def _unauthorized(self, transaction: ServerTransaction, request: Request, challenge: str,
                      reason: str = "Unauthorized") -> None:
        response = make_response(request, 401, reason)
        response.headers.add("WWW-Authenticate", challenge)
        response.headers.add("Server", SERVER)
        self.stack.send_response(transaction, response)

    def _reply(self, transaction: ServerTransaction, request: Request, status: int,
               reason: str) -> None:
        self._send(transaction, make_response(request, status, reason))

    # -- the user's own data ------------------------------------------------------------

    def _self_subscribe(self, transaction: ServerTransaction, request: Request, source: Hop,
                        session: SignedIn) -> None:
        event = (request.headers.get("Event") or "").split(";", 1)[0].strip()
        policy = AvEncryption(self.config.av_encryption)
        # No focusFactoryUri: the lab has no conferencing server to offer.
        document = self_document(event, session.aor, encryption=policy,
                                 mras_uri=self.mras_uri)
        if document is None:
            if event.lower() == "presence":
                document = None  # batched presence of an empty list: nothing to tell
                response = make_response(request, 200, to_tag=new_tag())
                response.headers.add("Expires", "0")
                response.headers.add("Event", event)
                response.headers.add("subscription-state", "terminated;expires=0")
                self._send(transaction, response)
                return
            self._reply(transaction, request, 489, f"Bad Event: {event or 'none'}")
            return
        asked = request.headers.get("Expires")
        expires = 0 if document.one_off else min(
            int(asked) if asked and asked.isdigit() else 3600, 3600)
        if asked == "0":
            expires = 0
        state = "terminated;expires=0" if expires == 0 else f"active;expires={expires}"
        tag = new_tag()
        response = make_response(request, 200, to_tag=tag)
        response.headers.add("Expires", str(expires))
        response.headers.add("Event", event)
        response.headers.add("Contact", f"<{self.record_route_uri()}>")
        piggyback = "ms-piggyback-first-notify" in _supported(request)
        if piggyback:
            # The first notification rides on the 200 ([MS-SIP] piggyback-first-notify).
            response.headers.add("subscription-state", state)
            response.headers.add("ms-piggyback-cseq", str(request.cseq.seq))
            response.headers.add("Content-Type", document.content_type)
            response.body = document.body.encode()
        self._send(transaction, response)
        self.notified.append((session.aor, event))
        del self.notified[:-100]
        if not piggyback:
            self._notify(request, source, tag, event, state, document.content_type,
                         document.body)

    def _notify(self, subscribe: Request, source: Hop, tag: str, event: str, state: str,
                content_type: str, body: str) -> None:
        contact = subscribe.contact[0].uri if subscribe.contact else subscribe.from_.uri
        notify = Request("NOTIFY", contact)
        headers = notify.headers
        headers.add("Via", self._via(new_branch()))
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{subscribe.headers.get('To')};tag={tag}")
        headers.add("To", subscribe.headers.get("From") or "")
        headers.add("Call-ID", subscribe.call_id)
        headers.add("CSeq", "1 NOTIFY")
        headers.add("Event", event)
        headers.add("subscription-state", state)
        headers.add("Contact", f"<{self.record_route_uri()}>")
        headers.add("Content-Type", content_type)
        notify.body = body.encode()
        hop = source if source.connection_id is not None else hop_for_uri(contact)
        self.sign(notify, hop)
        pending = self.stack.start_request(notify, hop)
        task = asyncio.ensure_future(pending.response())
        task.add_done_callback(_log_notify_result)

    @property
    def mras_uri(self) -> str:
        return f"sip:mras.{self.config.domain}@{self.config.domain};gruu;opaque=srvr:MRAS:lab"

    def _mras(self, transaction: ServerTransaction, request: Request, session: SignedIn
              ) -> None:
        try:
            asked = mras.parse_request(request.body)
        except mras.MrasError as error:
            self._reply(transaction, request, 400, f"Bad Request: {error}")
            return
        relays = (mras.Relay(self.config.turn_host, self.config.turn_udp_port,
                             self.config.turn_tcp_port),)
        if self.config.mras_secret:
            body = mras.answer_with_key(asked, secret=self.config.mras_secret,
                                        identity=session.aor, now=time.time(), relays=relays)
            response = make_response(request, 200)
            response.headers.add("Content-Type", mras.CONTENT_TYPE)
            response.body = body.encode()
            self._send(transaction, response)
            return
        user = session.aor.partition("@")[0]
        turn = next((u for u in self.config.turn_users if u.username == user),
                    self.config.turn_users[0] if self.config.turn_users else None)
        if turn is None:
            self._reply(transaction, request, 503, "Service Unavailable: no A/V Edge accounts")
            return
        body = mras.answer(asked, username=turn.username, password=turn.password,
                           relays=(mras.Relay(self.config.turn_host, self.config.turn_udp_port,
                                              self.config.turn_tcp_port),))
        response = make_response(request, 200)
        response.headers.add("Content-Type", mras.CONTENT_TYPE)
        response.body = body.encode()
        self._send(transaction, response)

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


def _log_notify_result(task: asyncio.Future[Response]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.info("FE: NOTIFY failed: %s", error)
    elif task.result().status >= 300:
        logger.info("FE: NOTIFY answered %d", task.result().status)


def _supported(request: Request) -> set[str]:
    return {v.strip().lower() for value in request.headers.get_all("Supported")
            for v in value.split(",")}


def _is_mras(uri: URI) -> bool:
    return (uri.params.get("opaque") or "").lower().startswith("srvr:mras")


def _epid(instance: str) -> str:
    return instance.strip("<>").rpartition(":")[2].replace("-", "")[:10] or "lab"


def _aor(uri: URI) -> str:
    return f"{uri.user or ''}@{uri.host}".lower()


def _same_contact(a: URI, b: URI) -> bool:
    return (a.user == b.user and a.host.lower() == b.host.lower()
            and (a.port or 5061) == (b.port or 5061))
