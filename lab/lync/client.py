"""A simulated Lync / Skype for Business client (satisfies ``lab.api.Caller`` / ``CallHandle``).

The client opens one TLS connection to its registrar (the FE when internal, the Access
Edge when external), registers over it and sends and receives everything on it, as real
clients do: they never listen. Calls carry a multipart/alternative offer (ICE draft-6 and
RFC 5245 parts), run ICE with aioice, then send SRTP audio (50 pps) and video (30 fps)
with real sequence numbers and timestamps, and count what arrives. A call stays
"connected" (Lync shows "Connecting...") until RTP arrives, then turns "media".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from pathlib import Path

from certs.pki import LabPKI, init_pki
from lab.api import MediaReport
from lab.hosts import resolve
from lab.lync import mras
from lab.lync import offer as sdp_offer
from lab.lync.client_media import IceServers, MediaStream, networks
from lab.lync.config import ClientConfig
from lab.lync.im import InstantMessaging
from lab.lync.sipae import (
    REALM,
    AuthError,
    ClientHandshake,
    SecurityAssociation,
    auth_params,
    signature_text,
)
from media.ms_dialect import Crypto, pick_sdp_body, read_stream
from media.sdp import SessionDescription, parse_sdp
from sip.dialog import Dialog, DialogState
from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Request, Response, new_call_id, new_tag
from sip.stack import ClientRequest, Hop, SipStack, SipTimeoutError
from sip.timers import TimerSettings
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import (
    ConnectionInfo,
    Transport,
    TransportAddress,
    TransportError,
    TransportSettings,
)
from sip.uri import URI, Params
from sip.useragent import ALLOW, UserAgent, UserAgentError, response_for

__all__ = ["CallRefused", "LyncCall", "LyncClient"]

logger = logging.getLogger(__name__)

SDP = "application/sdp"
USER_AGENT = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync) (lab)"
PROVISIONING_REQUEST = (
    '<provisioningGroupList xmlns="http://schemas.microsoft.com/2006/09/sip/'
    'provisioninggrouplist"><provisioningGroup name="ServerConfiguration"/>'
    '<provisioningGroup name="ucPolicy"/></provisioningGroupList>')
ICE_FAILED = 'Reason: SIP;cause=488;text="ICE processing failed: no media connectivity"'


class CallRefused(Exception):
    """The call was not answered with a 2xx (or could not be placed)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The final status, None for a timeout or transport failure."""


class LyncCall:
    """One call of a :class:`LyncClient` (a ``lab.api.CallHandle``)."""

    def __init__(self, client: LyncClient, call_id: str, *, outgoing: bool, peer: str) -> None:
        self.client = client
        self.call_id = call_id
        self.outgoing = outgoing
        self.peer = peer
        """The other party's URI."""
        self.streams: list[MediaStream] = []
        self.dialog: Dialog | None = None
        self.session_id = secrets.randbelow(2**31)
        self.version = 0
        self.remote_sdp: SessionDescription | None = None
        self.ringing = False
        self.answered = asyncio.get_running_loop().create_future()
        """Resolves when a 2xx is sent or received; fails with CallRefused."""
        self.ended = asyncio.Event()
        self.result = ""
        """How the call ended."""
        self.invite: ClientRequest | None = None
        self.invite_tx: ServerTransaction | None = None
        self.on_hold = False
        """We put the call on hold: our answers never receive until we resume."""
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- CallHandle -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.ended.is_set():
            return "ended"
        if self.answered.done() and not self.answered.exception():
            if any(s.counters.received for s in self.streams):
                return "media"
            return "connected"
        return "ringing" if self.ringing else "connecting"

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.answered), timeout)

    async def wait_media(self, *, both_ways: bool = True, min_packets: int = 10,
                         timeout: float = 10.0) -> MediaReport:
        """Until ``min_packets`` arrived (and were sent, with both_ways) on every stream
        that carries media in our direction."""
        async def reached() -> MediaReport:
            while True:
                self._changed.clear()
                if self.ended.is_set():
                    raise CallRefused(f"call ended: {self.result}")
                failed = [s.failed for s in self.streams if s.failed]
                if failed:
                    raise ConnectionError(failed[0])
                report = self.media()
                if self.streams and report.packets_received >= min_packets and (
                        not both_ways or report.packets_sent >= min_packets):
                    return report
                await self._changed.wait()
        try:
            return await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no media within {timeout} s: {self.media()}") from None

    async def hold(self) -> None:
        self.on_hold = True
        await self._reinvite("sendonly")

    async def resume(self) -> None:
        self.on_hold = False
        await self._reinvite("sendrecv")

    async def add_video(self) -> None:
        if any(s.kind == "video" for s in self.streams):
            return
        stream = self.client.new_stream("video", self, controlling=True)
        await stream.ice.gather()
        self.streams.append(stream)
        await self._reinvite(None)

    async def hangup(self) -> None:
        if self.ended.is_set():
            return
        if not self.answered.done():
            if self.invite is not None:
                self.invite.cancel()
                try:
                    await asyncio.wait_for(asyncio.shield(self.answered), 10.0)
                except (CallRefused, TimeoutError):
                    pass
                if not self.answered.done() or self.answered.exception():
                    await self.finish("cancelled")
                    return
            elif self.invite_tx is not None:
                self.client.agent.stack.respond(self.invite_tx, 486, "Busy Here")
                await self.finish("declined")
                return
        await self.client.bye(self)

    def media(self) -> MediaReport:
        kinds = tuple(s.kind for s in self.streams if s.counters.received or s.counters.sent)
        return MediaReport(
            packets_sent=sum(s.counters.sent for s in self.streams),
            packets_received=sum(s.counters.received for s in self.streams),
            streams=kinds,
            ice_pair=next((s.ice.pair_type for s in self.streams if s.ice.pair_type), None),
        )

    # -- internals ----------------------------------------------------------------------------

    def changed(self) -> None:
        self._changed.set()

    def descriptions(self, direction: str | None = None
                     ) -> list[sdp_offer.StreamDescription]:
        out = []
        for stream in self.streams:
            if direction is not None:
                stream.direction = direction
            out.append(sdp_offer.StreamDescription(
                kind=stream.kind, ufrag=stream.ice.local_username,
                pwd=stream.ice.local_password, candidates=stream.ice.sdp_candidates,
                cryptos=stream.cryptos, ssrc_range=stream.ssrc_range,
                direction=stream.direction))
        return out

    def body(self, streams: list[sdp_offer.StreamDescription]) -> bytes:
        self.version += 1
        return sdp_offer.sdp_text(streams, host=self.client.config.host,
                                  session_id=self.session_id, version=self.version)

    async def _reinvite(self, direction: str | None) -> None:
        async with self._lock:
            dialog = self._live_dialog()
            body = self.body(self.descriptions(direction))
            agent = self.client.agent
            request, hop = agent.dialog_request(dialog, "INVITE", body=body, content_type=SDP)
            pending = agent.stack.start_request(request, hop)
            response = await pending.final
            self.client.check_signed(response)
            dialog.receive_response(request, response)
            if not 200 <= response.status < 300:
                raise CallRefused(f"re-INVITE answered {response.status} {response.reason}",
                                  response.status)
            agent.send_ack(dialog, pending.transaction)
            answer = _sdp_of(response)
            if answer is not None:
                self.client.apply_answer(self, answer)

    def _live_dialog(self) -> Dialog:
        if self.dialog is None or self.dialog.state is DialogState.TERMINATED:
            raise CallRefused(f"call {self.call_id} has no live dialog")
        return self.dialog

    async def finish(self, result: str) -> None:
        if self.ended.is_set():
            return
        self.result = result
        self.ended.set()
        if not self.answered.done():
            self.answered.set_exception(CallRefused(result))
            self.answered.exception()
        if self.dialog is not None:
            self.dialog.terminate()
            self.client.agent.dialogs.remove(self.dialog.id)
        self.client.calls.pop(self.call_id, None)
        self.changed()
        logger.info("[%s] call %s %s ended: %s (%s)", self.client.aor, self.call_id,
                    self.peer, result, self.media())
        await asyncio.gather(*(s.close() for s in self.streams))


class _Agent(UserAgent):
    """The UA core: Via and Contact name our end of the registrar connection."""

    supported = frozenset({"ms-dialog-route-set-update", "timer", "histinfo", "ms-safe-transfer",
                           "ms-sender", "ms-early-media", "100rel", "replaces"})

    def __init__(self, client: LyncClient, stack: SipStack) -> None:
        config = client.config
        super().__init__(stack, user=config.user, domain=config.domain,
                         display_name=config.display_name or None)
        self.client = client
        self.local: TransportAddress | None = None

    def local_address(self, transport: Transport) -> TransportAddress:
        if self.local is None:
            raise UserAgentError("not connected to the registrar")
        return self.local

    def contact(self, transport: Transport) -> str:
        local = self.local_address(transport)
        uri = URI("sip", user=self.user, host=local.host, port=local.port,
                  params=Params.of(transport="tls"))
        return f"<{uri}>"

    def new_request(self, method: str, uri: URI, target: Hop, *, to: Address | None = None,
                    body: bytes = b"", content_type: str | None = None,
                    headers: Iterable[tuple[str, str]] = (), call_id: str | None = None
                    ) -> Request:
        request = super().new_request(method, uri, target, to=to, body=body,
                                      content_type=content_type, headers=headers,
                                      call_id=call_id)
        self.client.sign_request(request)
        return request

    def dialog_request(self, dialog: Dialog, method: str, *, body: bytes = b"",
                       content_type: str | None = None,
                       headers: Iterable[tuple[str, str]] = ()) -> tuple[Request, Hop]:
        request, hop = super().dialog_request(dialog, method, body=body,
                                              content_type=content_type, headers=headers)
        self.client.sign_request(request)
        return request, hop

    def handle_new_request(self, transaction: ServerTransaction, request: Request
                           ) -> Awaitable[None] | None:
        self.client.check_signed(request)
        if request.method == "INVITE":
            return self.client.incoming(transaction, request)
        if request.method in ("MESSAGE", "INFO", "NOTIFY"):
            self.stack.respond(transaction, 200)
            return None
        return super().handle_new_request(transaction, request)

    def handle_dialog_request(self, dialog: Dialog, transaction: ServerTransaction,
                              request: Request) -> Awaitable[None] | None:
        self.client.check_signed(request)
        if self.client.im.handle(dialog, transaction, request):
            return None
        call = self.client.call_of(dialog)
        if request.method == "BYE":
            self.stack.respond(transaction, 200)
            if call is not None:
                return call.finish("BYE from peer")
            dialog.terminate()
            self.dialogs.remove(dialog.id)
            return None
        if request.method == "INVITE" and call is not None:
            return self.client.reinvited(call, transaction, request)
        if request.method in ("INFO", "UPDATE", "MESSAGE"):
            self.stack.respond(transaction, 200)
            return None
        return super().handle_dialog_request(dialog, transaction, request)

    def handle_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        if transaction.state is ServerState.PROCEEDING:
            call = next((c for c in self.client.calls.values() if c.invite_tx is transaction),
                        None)
            tag = call.dialog.id.local_tag if call is not None and call.dialog else None
            self.stack.respond(transaction, 487, to_tag=tag)
            if call is not None:
                asyncio.ensure_future(call.finish("cancelled by caller"))

    def handle_ack_timeout(self, dialog: Dialog) -> None:
        call = self.client.call_of(dialog)
        super().handle_ack_timeout(dialog)
        if call is not None:
            asyncio.ensure_future(call.finish("no ACK for our 2xx"))


class LyncClient:
    """A Lync client: ``await LyncClient.start(config)``, ``await client.call(target)``."""

    def __init__(self, config: ClientConfig, stack: SipStack, registrar: Hop) -> None:
        self.config = config
        self.aor = config.aor.removeprefix("sip:")
        """``user@domain``."""
        self.agent = _Agent(self, stack)
        self.im = InstantMessaging(self, USER_AGENT)
        """Instant messaging (IM sessions or page mode, per ``config.im_mode``)."""
        self.registrar = registrar
        """The hop all our requests go to (pinned to our connection once it is open)."""
        self.calls: dict[str, LyncCall] = {}
        """Live calls by Call-ID."""
        self.incoming_calls: asyncio.Queue[LyncCall] = asyncio.Queue()
        """Calls we were offered, in arrival order."""
        self.registered = False
        self.granted = config.expires
        """Registration lifetime the FE granted."""
        self.security: SecurityAssociation | None = None
        """Our MS-SIPAE association with the FE (None until signed in)."""
        self.instance = str(uuid.uuid4())
        """+sip.instance of our Contact."""
        self.server_configuration: dict[str, str] = {}
        """provisioning-v2 ServerConfiguration (ucPC2PCAVEncryption, mrasUri...)."""
        self.keep_alive = 300
        """Seconds between CRLF keep-alives (the FE's ms-keep-alive timeout)."""
        self.unsigned: list[str] = []
        """Messages from the FE a real client would have dropped (not signed / bad
        signature), newest last."""
        self.server_signatures = 0
        """FE signatures verified."""
        self.reregistrations = 0
        """Sign-ins after a lost connection."""
        self._register_call_id = new_call_id(config.host)
        self._register_cseq = 0
        self._cnum = 0
        self._handshaking = False
        self._refresh: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        servers = config
        self.ice_servers = IceServers(
            stun=(resolve(servers.stun.host), servers.stun.port) if servers.stun else None,
            turn=(resolve(servers.turn.host), servers.turn.port) if servers.turn else None,
            turn_username=servers.turn_username, turn_password=servers.turn_password,
            relay_only=servers.relay_only)
        self.allowed_networks = networks(config.allowed_networks)
        """The only networks our media may go to."""
        self.remote_user = False
        """Signed in through the Access Edge (the REGISTER 200 said ``RemoteUser``)."""
        self.media_relay: mras.MrasAnswer | None = None
        """The A/V Edge and credentials MRAS handed out (``turn_dialect = "ms-turn"``)."""
        self._mras_renewal: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: ClientConfig, pki: LabPKI | None = None, *,
                    register: bool = True) -> LyncClient:
        """Connect to the registrar over TLS and REGISTER (unless ``register`` is False)."""
        if pki is None:
            pki = (await asyncio.to_thread(init_pki, Path(config.certs)))[0]
        stack = SipStack(
            timers=TimerSettings(t1=config.t1, t2=max(4.0, config.t1 * 8)),
            transport_settings=TransportSettings(outbound_ports=None, source_host=config.host,
                                                 idle_timeout=None),
            tls_client=pki.client_context(config.cert_name or None),
        )
        target = config.registrar
        hop = Hop(Transport.TLS, resolve(target.host), target.port,
                  server_hostname=config.registrar_name or target.host)
        client = cls(config, stack, hop)
        try:
            await client.connect()
            if register:
                await client.register()
                await client.provisioning()
                # Relay candidates for those who need them: external users (signed in
                # through the Access Edge) and clients configured with a relay. Real
                # internal clients ask MRAS too; the lab's internal ones keep host-only
                # media, as before, so their calls hold no A/V Edge allocations.
                if config.turn_dialect == "ms-turn" and (client.remote_user or config.turn):
                    await client._renew_media_relay()
        except BaseException:
            await stack.close()
            raise
        return client

    async def connect(self) -> ConnectionInfo:
        """Open the TLS connection (an RFC 5626 ping is the first thing sent on it)."""
        hop = self.registrar
        info = await self.agent.stack.transports.send(
            b"\r\n\r\n", hop.address, server_hostname=hop.server_hostname)
        self.agent.local = info.local
        self.registrar = replace(hop, connection_id=info.id)
        return info

    async def connect_ping(self) -> None:
        """A CRLF keep-alive on our registrar connection (fails when it is gone)."""
        hop = self.registrar
        if hop.connection_id is None or self.agent.stack.transports.connection(
                hop.connection_id) is None:
            raise TransportError("the registrar connection is closed")
        await self.agent.stack.transports.send(b"\r\n\r\n", hop.address,
                                               server_hostname=hop.server_hostname,
                                               connection_id=hop.connection_id)

    async def register(self, expires: int | None = None) -> Response:
        """Sign in (MS-SIPAE NTLM, as sipe) and REGISTER our Contact; raises CallRefused on
        a refusal or a server signature that does not verify."""
        expires = self.config.expires if expires is None else expires
        agent = self.agent
        authorization: str | None = None
        for _ in range(4):
            self._register_cseq += 1
            request = agent.new_request(
                "REGISTER", URI("sip", host=self.config.domain), self.registrar,
                to=Address(agent.aor), call_id=self._register_call_id,
                headers=(("Contact", f"{agent.contact(Transport.TLS)};expires={expires}"
                          f';+sip.instance="<urn:uuid:{self.instance}>"'),
                         ("User-Agent", USER_AGENT), ("Supported", "gruu-10"),
                         ("Supported", "adhoclist"), ("Supported", "msrtc-event-categories"),
                         ("Supported", "com.microsoft.msrtc.presence"),
                         ("Event", "registration"), ("Allow-Events", "presence"),
                         ("ms-keep-alive", "UAC;hop-hop=yes")))
            request.headers.set("CSeq", f"{self._register_cseq} REGISTER")
            if authorization is not None and self._handshaking:
                self._sign(request, extra=authorization)  # the AUTHENTICATE, signed
            elif authorization is not None:
                request.headers.set("Authorization", authorization)
            elif self.security is not None:
                self._sign(request)  # again: the CSeq changed
            response = await agent.stack.send_request(request, self.registrar)
            if response.status == 401:
                authorization = self._answer_challenge(response)
                continue
            if not 200 <= response.status < 300:
                raise CallRefused(f"REGISTER answered {response.status} {response.reason}",
                                  response.status)
            self._verify(response)
            granted = response.headers.get("Expires")
            self.granted = int(granted) if granted and granted.isdigit() else expires
            keep_alive = re.search(r"timeout=(\d+)", response.headers.get("ms-keep-alive") or "")
            if keep_alive:
                self.keep_alive = max(1, int(keep_alive.group(1)))
            self.registered = expires > 0
            self.remote_user = "remoteuser" in (
                response.headers.get("ms-user-logon-data") or "").lower()
            if self.registered and self._refresh is None:
                self._refresh = asyncio.ensure_future(self._maintain())
            return response
        raise CallRefused("REGISTER: authentication did not complete", 401)

    def _answer_challenge(self, response: Response) -> str:
        """The Authorization for the next REGISTER after a 401 (sipe's sequence: empty
        gssapi-data, then the AUTHENTICATE signed with the new context)."""
        header = next((h for h in response.headers.get_all("WWW-Authenticate")
                       if h.strip().upper().startswith("NTLM")), None)
        if header is None:
            raise CallRefused("REGISTER: no NTLM in the 401", 401)
        _, params = auth_params(header)
        realm, target = params.get("realm", REALM), params.get("targetname", "")
        version = int(params.get("version", "4") or 4)
        token = params.get("gssapi-data")
        if not token:
            self.security = None
            if self._handshaking:
                # Our AUTHENTICATE was refused: wrong password or unknown account.
                self._handshaking = False
                raise CallRefused(f"REGISTER: sign-in refused ({response.reason})", 401)
            return (f'NTLM qop="auth", realm="{realm}", targetname="{target}",'
                    f' gssapi-data="", version={version}')
        login = self.config.login or self.config.user
        domain, _, user = login.rpartition("\\")
        handshake = ClientHandshake(user, self.config.password, domain)
        try:
            authenticate, context = handshake.authenticate(
                token, opaque=params.get("opaque", ""), target=target, version=version)
        except AuthError as error:
            raise CallRefused(f"REGISTER: {error}", 401) from None
        self.security = context
        self._handshaking = True
        # The rest of the header comes with the signature (_sign).
        return f', gssapi-data="{authenticate}", version={version}'

    def sign_request(self, request: Request) -> None:
        """Sign what we send once signed in, as sipe does (REGISTER signs itself; ACK and
        CANCEL are hop by hop)."""
        if self.security is not None and request.method not in ("REGISTER", "ACK", "CANCEL"):
            self._sign(request)

    def _sign(self, request: Request, *, extra: str = "") -> None:
        """Authorization carrying our signature of ``request``."""
        context = self.security
        assert context is not None
        self._cnum += 1
        rand = secrets.token_hex(4)
        text = signature_text(request, protocol="NTLM", rand=rand, num=str(self._cnum),
                              realm=context.realm, target=context.target,
                              version=context.version)
        request.headers.set("Authorization", (
            f'NTLM qop="auth", opaque="{context.opaque}", realm="{context.realm}",'
            f' targetname="{context.target}"{extra}, crand="{rand}", cnum="{self._cnum}",'
            f' response="{context.sign(text)}"'))

    def _verify(self, message: Response | Request) -> None:
        """Check the FE's signature (Authentication-Info), as sipe does."""
        if self.security is None:
            return
        self._handshaking = False
        problem = self._signature_problem(message)
        if problem is not None:
            raise CallRefused(problem, 0)

    def _signature_problem(self, message: Response | Request) -> str | None:
        """Why ``message`` is not signed by the FE we signed in with (None: it is)."""
        context = self.security
        if context is None:
            return None
        info = message.headers.get("Authentication-Info")
        if info is None:
            return "the FE's message is not signed"
        _, params = auth_params(info)
        text = signature_text(message, protocol="NTLM", rand=params.get("srand", ""),
                              num=params.get("snum", ""), realm=params.get("realm", REALM),
                              target=params.get("targetname", ""), version=context.version)
        if not context.verify(text, params.get("rspauth", "")):
            return "the FE's signature does not verify"
        self.server_signatures += 1
        return None

    def check_signed(self, message: Request | Response) -> None:
        """Check a message from the FE once signed in (sipe drops unsigned ones but
        provisional responses and 401s): the lab records what a real client would have
        dropped, and goes on."""
        if self.security is None or self._handshaking:
            return
        if isinstance(message, Response) and (message.status < 200 or message.status == 401):
            return
        problem = self._signature_problem(message)
        if problem is not None:
            first = (f"{message.method} {message.uri}" if isinstance(message, Request)
                     else f"{message.status} {message.reason} ({message.cseq.method})")
            self.unsigned.append(f"{first}: {problem}")
            del self.unsigned[:-100]
            logger.warning("%s: %s: %s", self.aor, first, problem)

    async def provisioning(self) -> dict[str, str]:
        """Subscribe to provisioning-v2 (one-off) and read ServerConfiguration."""
        agent = self.agent
        request = agent.new_request(
            "SUBSCRIBE", URI.parse(f"sip:{self.aor}"), self.registrar, to=Address(agent.aor),
            body=PROVISIONING_REQUEST.encode(),
            content_type="application/vnd-microsoft-roaming-provisioning-v2+xml",
            headers=(("Event", "vnd-microsoft-provisioning-v2"),
                     ("Accept", "application/vnd-microsoft-roaming-provisioning-v2+xml"),
                     ("Supported", "com.microsoft.autoextend"), ("Supported", "ms-benotify"),
                     ("Proxy-Require", "ms-benotify"),
                     ("Supported", "ms-piggyback-first-notify"), ("Expires", "0")))
        response = await agent.stack.send_request(request, self.registrar)
        if response.status != 200:
            raise CallRefused(f"provisioning answered {response.status} {response.reason}",
                              response.status)
        self._verify(response)
        settings = read_provisioning(response.body)
        self.server_configuration = settings
        return settings

    async def request_media_relay(self) -> mras.MrasAnswer | None:
        """Ask the FE's MRAS (``mrasUri`` of provisioning) for the A/V Edge and credentials,
        as Lync clients and sipe do after sign-in; relay candidates then come from an
        MS-TURN allocation there. Asked again at half their validity. None (logged) when
        provisioning names no MRAS or MRAS refuses: no relay candidates then."""
        uri = self.server_configuration.get("mrasUri")
        if not uri:
            logger.warning("%s: provisioning names no mrasUri: no A/V Edge relay", self.aor)
            return None
        agent = self.agent
        body = mras.request_body(
            request_id=secrets.token_hex(4), sender=f"sip:{self.aor}", mras_uri=uri,
            identity=f"sip:{self.aor}", location="internet" if self.remote_user else "intranet")
        request = agent.new_request("SERVICE", URI.parse(uri), self.registrar,
                                    to=Address(URI.parse(uri)), body=body.encode(),
                                    content_type=mras.CONTENT_TYPE)
        response = await agent.stack.send_request(request, self.registrar)
        if response.status != 200:
            logger.warning("%s: MRAS answered %d %s: no A/V Edge relay", self.aor,
                           response.status, response.reason)
            return None
        self._verify(response)
        try:
            answer = mras.parse_answer(response.body)
            username = base64.b64decode(answer.username, validate=True)
            password = base64.b64decode(answer.password, validate=True)
        except (mras.MrasError, binascii.Error) as error:
            logger.warning("%s: unusable MRAS answer (%s): no A/V Edge relay", self.aor, error)
            return None
        relay = answer.relays[0]
        self.media_relay = answer
        self.ice_servers = replace(
            self.ice_servers, turn=(resolve(relay.host), relay.udp_port), ms_turn=True,
            ms_turn_username=username, ms_turn_password=password)
        if self._mras_renewal is not None:
            self._mras_renewal.cancel()
        self._mras_renewal = asyncio.get_running_loop().call_later(
            max(1.0, answer.duration * 30.0), lambda: self._spawn(self._renew_media_relay()))
        return answer

    async def _renew_media_relay(self) -> None:
        """:meth:`request_media_relay`, a failure logged (signed in, but no relay)."""
        try:
            await self.request_media_relay()
        except (SipTimeoutError, TransportError, CallRefused) as error:
            logger.warning("%s: MRAS request failed: %r", self.aor, error)

    async def _maintain(self) -> None:
        """Refresh the registration; after a failure or a lost connection, connect and
        sign in again with backoff (retry_min doubling to retry_max)."""
        loop = asyncio.get_running_loop()
        delay = self.config.retry_min
        refresh_at = loop.time() + max(1.0, self.granted / 2)
        ping_at = loop.time() + self.keep_alive
        failed = False
        while True:
            # The connection watch tick: real clients notice a closed TLS connection at
            # once; 0.5 s is close enough for the lab.
            await asyncio.sleep(0.5)
            connection_id = self.registrar.connection_id
            lost = (connection_id is None
                    or self.agent.stack.transports.connection(connection_id) is None)
            if not lost and loop.time() >= ping_at:
                # The CRLF keep-alive the FE asked for (ms-keep-alive timeout).
                ping_at = loop.time() + self.keep_alive
                try:
                    await self.connect_ping()
                except (OSError, TransportError) as error:
                    logger.info("%s: keep-alive failed: %s", self.aor, error)
                    lost = True
            if not (lost or failed) and loop.time() < refresh_at:
                continue
            try:
                if lost:
                    self.registered = False
                    self.security = None
                    logger.info("%s: connection to the registrar lost, signing in again",
                                self.aor)
                    await self.connect()
                await self.register()
                if lost:
                    await self.provisioning()
            except (CallRefused, SipTimeoutError, UserAgentError, OSError,
                    TransportError) as error:
                logger.warning("%s: sign-in failed (%s); next try in %.1f s", self.aor,
                               error, delay)
                failed = True
                self.registered = False
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, self.config.retry_max)
                continue
            if lost or failed:
                self.reregistrations += 1
            failed = False
            delay = self.config.retry_min
            refresh_at = loop.time() + max(1.0, self.granted / 2)

    async def close(self) -> None:
        """Hang up every call, unregister, close the connection."""
        for call in list(self.calls.values()):
            try:
                await asyncio.wait_for(call.hangup(), 5.0)
            except Exception as error:  # closing anyway
                logger.info("%s: hangup on close: %r", self.aor, error)
                await call.finish("client stopped")
        await self.im.close()
        if self._mras_renewal is not None:
            self._mras_renewal.cancel()
        if self._refresh is not None:
            self._refresh.cancel()
        if self.registered:
            try:
                await asyncio.wait_for(self.register(0), 2.0)
            except Exception as error:
                logger.info("%s: unregister on close: %r", self.aor, error)
        for task in list(self._tasks):
            task.cancel()
        await self.agent.stack.close()

    async def __aenter__(self) -> LyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- streams -------------------------------------------------------------------------------

    def new_stream(self, kind: str, call: LyncCall, *, controlling: bool) -> MediaStream:
        rate = self.config.audio_pps if kind == "audio" else self.config.video_fps
        return MediaStream(kind, self.config.host, self.ice_servers, controlling=controlling,
                           on_packet=call.changed, rate=rate, allowed=self.allowed_networks,
                           stun_dialect=self.config.stun_dialect)

    def call_of(self, dialog: Dialog) -> LyncCall | None:
        call = self.calls.get(dialog.id.call_id)
        return call if call is not None and call.dialog is dialog else None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- placing calls -----------------------------------------------------------------------

    async def call(self, target: str, *, video: bool | None = None) -> LyncCall:
        """INVITE ``target`` ("3001@video.example.com"); returns once the INVITE is sent."""
        uri = URI.parse(target if target.startswith("sip") else f"sip:{target}")
        agent = self.agent
        call = LyncCall(self, "", outgoing=True, peer=str(uri))
        kinds = ["audio"] + (["video"] if (self.config.video if video is None else video)
                             else [])
        call.streams = [self.new_stream(kind, call, controlling=True) for kind in kinds]
        try:
            await asyncio.gather(*(s.ice.gather() for s in call.streams))
        except BaseException:
            await asyncio.gather(*(s.close() for s in call.streams))
            raise
        call.version += 1
        content_type, body = sdp_offer.multipart_offer(
            call.descriptions(), host=self.config.host, session_id=call.session_id,
            version=call.version)
        request = agent.new_request(
            "INVITE", uri, self.registrar, body=body, content_type=content_type,
            headers=(("User-Agent", USER_AGENT), ("Supported", "ms-dialog-route-set-update"),
                     ("Supported", "timer"), ("Supported", "histinfo"),
                     ("Supported", "ms-safe-transfer"), ("Supported", "ms-sender"),
                     ("Supported", "ms-early-media"), ("ms-keep-alive", "UAC;hop-hop=yes"),
                     ("Ms-Conversation-ID", secrets.token_urlsafe(18))))
        call.call_id = request.call_id
        self.calls[call.call_id] = call

        def provisional(response: Response) -> None:
            if response.status in (180, 183):
                call.ringing = True
                call.changed()

        call.invite = agent.stack.start_request(request, self.registrar,
                                                on_provisional=provisional)
        self._spawn(self._outgoing(call, call.invite))
        return call

    async def _outgoing(self, call: LyncCall, pending: ClientRequest) -> None:
        agent = self.agent
        try:
            response = await pending.final
        except SipTimeoutError as error:
            await call.finish(f"no answer: {error}")
            return
        self.check_signed(response)
        if not 200 <= response.status < 300:
            if not call.answered.done():
                call.answered.set_exception(CallRefused(
                    f"INVITE to {call.peer} answered {response.status} {response.reason}",
                    response.status))
                call.answered.exception()
            await call.finish(f"{response.status} {response.reason}")
            return
        try:
            dialog = Dialog.create_uac(pending.request, response)
            answer = _sdp_of(response)
        except ProtocolError as error:
            await call.finish(f"bad 2xx: {error.message}")
            return
        call.dialog = dialog
        agent.dialogs.add(dialog, self.registrar)
        agent.send_ack(dialog, pending.transaction)
        if answer is None:
            await self.bye(call, reason='Reason: SIP;cause=488;text="no SDP in the answer"')
            return
        try:
            self.apply_answer(call, answer)
        except ProtocolError as error:
            await self.bye(call, reason=f'Reason: SIP;cause=488;text="{error.message}"')
            return
        if not call.answered.done():
            call.answered.set_result(None)
        call.changed()
        self._spawn(self._watch_ice(call))

    def apply_answer(self, call: LyncCall, answer: SessionDescription) -> None:
        """Keys, codecs, directions and ICE from the peer's answer (first or re-INVITE)."""
        call.remote_sdp = answer
        for index, stream in enumerate(call.streams):
            if index >= len(answer.media) or answer.media[index].port == 0:
                continue
            remote = read_stream(answer, index)
            media = answer.media[index]
            mine = {c.tag: c for c in stream.cryptos}
            theirs = next((c for c in remote.cryptos if c.tag in mine), None)
            if theirs is None:
                raise ProtocolError(f"{stream.kind}: no acceptable a=crypto in the answer", 488)
            stream.set_keys(mine[theirs.tag], theirs)
            codecs = sdp_offer.common_codecs(media, stream.kind)
            stream.payload_type = next((pt for pt, name, _ in codecs
                                        if not name.startswith("telephone-event")), None)
            stream.remote_direction = media.direction
            if remote.ice_ufrag is None or remote.ice_pwd is None:
                raise ProtocolError(f"{stream.kind}: the answer has no ICE credentials", 488)
            stream.start_ice(remote.ice_ufrag, remote.ice_pwd, remote.candidates,
                             self.config.ice_timeout)
        call.changed()

    async def _watch_ice(self, call: LyncCall) -> None:
        """Hang up with a Reason when ICE fails on a stream (as Lync: no media, no call)."""
        results = await asyncio.gather(*(s.ice_done for s in call.streams),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        call.changed()
        if failed and not call.ended.is_set():
            logger.warning("[%s] %s", call.call_id, failed[0])
            await self.bye(call, reason=ICE_FAILED)

    async def bye(self, call: LyncCall, *, reason: str | None = None) -> None:
        """BYE the call (with a Reason header line when given) and close its media."""
        dialog = call.dialog
        if dialog is None or dialog.state is DialogState.TERMINATED:
            await call.finish(call.result or "ended")
            return
        headers: tuple[tuple[str, str], ...] = ()
        if reason is not None:
            name, _, value = reason.partition(":")
            headers = ((name.strip(), value.strip()),)
        request, hop = self.agent.dialog_request(dialog, "BYE", headers=headers)
        dialog.terminate()
        try:
            self.check_signed(await self.agent.stack.send_request(request, hop))
            result = "completed" if reason is None else f"hung up: {reason}"
        except SipTimeoutError as error:
            result = f"BYE unanswered: {error}"
        await call.finish(result)

    # -- answering ---------------------------------------------------------------------------

    async def incoming(self, transaction: ServerTransaction, request: Request) -> None:
        agent = self.agent
        call = LyncCall(self, request.call_id, outgoing=False, peer=str(request.from_.uri))
        try:
            offer = _sdp_of(request)
        except ProtocolError as error:
            agent.stack.respond(transaction, 400, f"Bad Request: {error.message}")
            return
        if offer is None:
            # Microsoft clients do not take an INVITE without SDP (SPEC.md §3).
            agent.stack.respond(transaction, 488, "Not Acceptable Here: no SDP offer")
            return
        try:
            descriptions = await self._answer_streams(call, offer, controlling=False)
        except ProtocolError as error:
            agent.stack.respond(transaction, error.status_hint if error.status_hint >= 400
                                else 488, error.message)
            await asyncio.gather(*(s.close() for s in call.streams))
            return
        if transaction.state is not ServerState.PROCEEDING:
            await asyncio.gather(*(s.close() for s in call.streams))
            return
        tag = new_tag()
        contact = agent.contact(Transport.TLS)
        ringing = response_for(request, 180, to_tag=tag, contact=contact)
        dialog = Dialog.create_uas(request, ringing)
        call.dialog = dialog
        call.invite_tx = transaction
        call.ringing = True
        agent.dialogs.add(dialog, transaction.source if isinstance(transaction.source, Hop)
                          else self.registrar)
        self.calls[call.call_id] = call
        agent.stack.send_response(transaction, ringing)
        self.incoming_calls.put_nowait(call)
        if not self.config.auto_answer:
            return
        if self.config.answer_delay > 0:
            await asyncio.sleep(self.config.answer_delay)  # the configured ring time
        if call.ended.is_set() or transaction.state is not ServerState.PROCEEDING:
            return
        await self.answer(call, descriptions)

    async def answer(self, call: LyncCall,
                     descriptions: list[sdp_offer.StreamDescription] | None = None) -> None:
        """Send the 2xx (auto-answer does this by itself) and start ICE."""
        transaction = call.invite_tx
        dialog = call.dialog
        if transaction is None or dialog is None or call.remote_sdp is None:
            raise CallRefused("no incoming call to answer")
        if descriptions is None:
            descriptions = self._describe_answer(call, call.remote_sdp)
        call.version += 1
        body = sdp_offer.sdp_text(descriptions, host=self.config.host,
                                  session_id=call.session_id, version=call.version)
        ok = response_for(transaction.request, 200, to_tag=dialog.id.local_tag,
                              contact=self.agent.contact(Transport.TLS), body=body,
                              content_type=SDP)
        ok.headers.add("Allow", ALLOW)
        ok.headers.add("User-Agent", USER_AGENT)
        self.agent.stack.send_response(transaction, ok)
        dialog.confirm()
        call.invite_tx = None
        if not call.answered.done():
            call.answered.set_result(None)
        self._start_answered_ice(call, call.remote_sdp)
        self._spawn(self._watch_ice(call))

    async def _answer_streams(self, call: LyncCall, offer: SessionDescription, *,
                              controlling: bool) -> list[sdp_offer.StreamDescription]:
        """Make (or keep) a stream per offered m= line, take the offer's keys and codecs."""
        for index, media in enumerate(offer.media):
            if index < len(call.streams):
                continue
            stream = self.new_stream(media.kind, call, controlling=controlling)
            call.streams.append(stream)
            if media.port != 0 and media.kind in ("audio", "video"):
                await stream.ice.gather()
        call.remote_sdp = offer
        return self._describe_answer(call, offer)

    def _describe_answer(self, call: LyncCall, offer: SessionDescription
                         ) -> list[sdp_offer.StreamDescription]:
        out = []
        for index, (stream, media) in enumerate(zip(call.streams, offer.media, strict=False)):
            remote = read_stream(offer, index)
            codecs = sdp_offer.common_codecs(media, stream.kind)
            usable = [c for c in remote.cryptos if c.suite == stream.cryptos[0].suite]
            offered = next((c for c in usable
                            if (c.mki is not None) == self.config.answer_mki),
                           usable[0] if usable else None)
            if media.port == 0 or not codecs or offered is None:
                out.append(sdp_offer.StreamDescription(
                    kind=media.kind, ufrag=stream.ice.local_username,
                    pwd=stream.ice.local_password, candidates=(), cryptos=(),
                    ssrc_range=stream.ssrc_range, codecs=codecs or _placeholder(media.kind),
                    port=0))
                continue
            # Answer with the offered tag, our own key, an MKI exactly when the offer had one.
            ours = next((c for c in stream.cryptos if (c.mki is None) == (offered.mki is None)),
                        stream.cryptos[0])
            ours = Crypto(offered.tag, ours.suite, ours.key_salt, ours.lifetime, ours.mki)
            stream.set_keys(ours, offered)
            stream.payload_type = next((pt for pt, name, _ in codecs
                                        if not name.startswith("telephone-event")), None)
            stream.remote_direction = media.direction
            stream.direction = _ANSWER_DIRECTION[media.direction]
            if call.on_hold:
                # Still holding: a sendonly offer makes the stream inactive, not recvonly.
                stream.direction = _HELD_DIRECTION[stream.direction]
            stream.cryptos = (ours,)
            out.append(sdp_offer.StreamDescription(
                kind=stream.kind, ufrag=stream.ice.local_username,
                pwd=stream.ice.local_password, candidates=stream.ice.sdp_candidates,
                cryptos=(ours,), ssrc_range=stream.ssrc_range, direction=stream.direction,
                codecs=codecs))
        return out

    def _start_answered_ice(self, call: LyncCall, offer: SessionDescription) -> None:
        for index, stream in enumerate(call.streams):
            if index >= len(offer.media) or offer.media[index].port == 0:
                continue
            remote = read_stream(offer, index)
            if remote.ice_ufrag is None or remote.ice_pwd is None:
                stream.failed = "the offer has no RFC 5245 ICE credentials"
                continue
            stream.start_ice(remote.ice_ufrag, remote.ice_pwd, remote.candidates,
                             self.config.ice_timeout)

    async def reinvited(self, call: LyncCall, transaction: ServerTransaction,
                        request: Request) -> None:
        """A re-INVITE: hold / resume (directions) or a new stream (add video)."""
        try:
            offer = _sdp_of(request)
        except ProtocolError as error:
            self.agent.stack.respond(transaction, 400, f"Bad Request: {error.message}")
            return
        if offer is None:
            descriptions = call.descriptions()
        else:
            try:
                descriptions = await self._answer_streams(call, offer, controlling=False)
            except ProtocolError as error:
                self.agent.stack.respond(transaction, 488, error.message)
                return
        body = call.body(descriptions)
        ok = response_for(request, 200, contact=self.agent.contact(Transport.TLS), body=body,
                          content_type=SDP)
        self.agent.stack.send_response(transaction, ok)
        if offer is not None:
            self._start_answered_ice(call, offer)  # new streams only: running ones keep going
        call.changed()
        logger.info("[%s] re-INVITE: now %s", call.call_id,
                    ", ".join(f"{s.kind} {s.direction}" for s in call.streams))


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
                     "inactive": "inactive"}


_HELD_DIRECTION = {"sendrecv": "sendonly", "recvonly": "inactive", "sendonly": "sendonly",
                   "inactive": "inactive"}


def read_provisioning(body: bytes) -> dict[str, str]:
    """ServerConfiguration's children (``ucPC2PCAVEncryption``, ``mrasUri``...) by name."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise CallRefused(f"provisioning body is not XML: {error}") from None
    out: dict[str, str] = {}
    for group in root:
        if group.tag.rpartition("}")[2] == "provisionGroup" and (
                group.get("name") == "ServerConfiguration"):
            for item in group:
                out[item.tag.rpartition("}")[2]] = (item.text or "").strip()
    return out


def _placeholder(kind: str) -> tuple[tuple[int, str, str | None], ...]:
    return sdp_offer.CODECS.get(kind, ((0, "PCMU/8000", None),))[:1]


def _sdp_of(message: Request | Response) -> SessionDescription | None:
    """The SDP of a body (the RFC 5245 part of a multipart offer); None without a body."""
    if not message.body:
        return None
    body, _ = pick_sdp_body(message.content_type or "", message.body)
    return parse_sdp(body)


def describe(call: LyncCall) -> str:
    """One line for logs and the CLI."""
    report = call.media()
    return (f"call {call.call_id} {'to' if call.outgoing else 'from'} {call.peer}: "
            f"{call.state}, ICE {report.ice_pair or '-'}, sent {report.packets_sent}, "
            f"received {report.packets_received}")

