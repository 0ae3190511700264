"""Sign-in of the simulated Lync client: registration, MS-SIPAE signing, provisioning.

The client signs in as pidgin-sipe does: REGISTER, a 401 with NTLM, an empty gssapi-data,
then the AUTHENTICATE signed with the new context (:mod:`lab.lync.sipae`). From then on it
signs what it sends and checks the FE's signatures. It reads provisioning-v2 once, refreshes
the registration at half its lifetime, sends the CRLF keep-alives the FE asks for, and signs
in again with backoff after a failure or a lost connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from lab.lync.agent import USER_AGENT
from lab.lync.call import CallRefused
from lab.lync.sipae import (
    REALM,
    AuthError,
    ClientHandshake,
    SecurityAssociation,
    auth_params,
    signature_text,
)
from sip.headers import Address
from sip.message import Request, Response, new_call_id
from sip.stack import SipTimeoutError
from sip.transport import Transport, TransportError
from sip.uri import URI
from sip.useragent import UserAgentError

if TYPE_CHECKING:
    from lab.lync.client import LyncClient

__all__ = ["PROVISIONING_REQUEST", "SignIn", "read_provisioning"]

logger = logging.getLogger(__name__)

PROVISIONING_REQUEST = (
    '<provisioningGroupList xmlns="http://schemas.microsoft.com/2006/09/sip/'
    'provisioninggrouplist"><provisioningGroup name="ServerConfiguration"/>'
    '<provisioningGroup name="ucPolicy"/></provisioningGroupList>')


class SignIn:
    """The client's registration with its registrar and its MS-SIPAE association."""

    def __init__(self, client: LyncClient) -> None:
        config = client.config
        self.client = client
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
        self.remote_user = False
        """Signed in through the Access Edge (the REGISTER 200 said ``RemoteUser``)."""
        self._register_call_id = new_call_id(config.host)
        self._register_cseq = 0
        self._cnum = 0
        self._handshaking = False
        self._refresh: asyncio.Task[None] | None = None

    async def register(self, expires: int | None = None) -> Response:
        """Sign in (MS-SIPAE NTLM, as sipe) and REGISTER our Contact; raises CallRefused on
        a refusal or a server signature that does not verify."""
        config = self.client.config
        expires = config.expires if expires is None else expires
        agent = self.client.agent
        authorization: str | None = None
        for _ in range(4):
            self._register_cseq += 1
            request = agent.new_request(
                "REGISTER", URI("sip", host=config.domain), agent.registrar,
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
                self.sign(request, extra=authorization)  # the AUTHENTICATE, signed
            elif authorization is not None:
                request.headers.set("Authorization", authorization)
            elif self.security is not None:
                self.sign(request)  # again: the CSeq changed
            response = await agent.stack.send_request(request, agent.registrar)
            if response.status == 401:
                authorization = self._answer_challenge(response)
                continue
            if not 200 <= response.status < 300:
                raise CallRefused(f"REGISTER answered {response.status} {response.reason}",
                                  response.status)
            self.verify(response)
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
        config = self.client.config
        login = config.login or config.user
        domain, _, user = login.rpartition("\\")
        handshake = ClientHandshake(user, config.password, domain)
        try:
            authenticate, context = handshake.authenticate(
                token, opaque=params.get("opaque", ""), target=target, version=version)
        except AuthError as error:
            raise CallRefused(f"REGISTER: {error}", 401) from None
        self.security = context
        self._handshaking = True
        # The rest of the header comes with the signature (sign).
        return f', gssapi-data="{authenticate}", version={version}'

    def sign_request(self, request: Request) -> None:
        """Sign what we send once signed in, as sipe does (REGISTER signs itself; ACK and
        CANCEL are hop by hop)."""
        if self.security is not None and request.method not in ("REGISTER", "ACK", "CANCEL"):
            self.sign(request)

    def sign(self, request: Request, *, extra: str = "") -> None:
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

    def verify(self, message: Response | Request) -> None:
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
            logger.warning("%s: %s: %s", self.client.aor, first, problem)

    async def provisioning(self) -> dict[str, str]:
        """Subscribe to provisioning-v2 (one-off) and read ServerConfiguration."""
        agent = self.client.agent
        request = agent.new_request(
            "SUBSCRIBE", URI.parse(f"sip:{self.client.aor}"), agent.registrar,
            to=Address(agent.aor), body=PROVISIONING_REQUEST.encode(),
            content_type="application/vnd-microsoft-roaming-provisioning-v2+xml",
            headers=(("Event", "vnd-microsoft-provisioning-v2"),
                     ("Accept", "application/vnd-microsoft-roaming-provisioning-v2+xml"),
                     ("Supported", "com.microsoft.autoextend"), ("Supported", "ms-benotify"),
                     ("Proxy-Require", "ms-benotify"),
                     ("Supported", "ms-piggyback-first-notify"), ("Expires", "0")))
        response = await agent.stack.send_request(request, agent.registrar)
        if response.status != 200:
            raise CallRefused(f"provisioning answered {response.status} {response.reason}",
                              response.status)
        self.verify(response)
        settings = read_provisioning(response.body)
        self.server_configuration = settings
        return settings

    async def _maintain(self) -> None:
        """Refresh the registration; after a failure or a lost connection, connect and
        sign in again with backoff (retry_min doubling to retry_max)."""
        loop = asyncio.get_running_loop()
        config, agent, aor = self.client.config, self.client.agent, self.client.aor
        delay = config.retry_min
        refresh_at = loop.time() + max(1.0, self.granted / 2)
        ping_at = loop.time() + self.keep_alive
        failed = False
        while True:
            # The connection watch tick: real clients notice a closed TLS connection at
            # once; 0.5 s is close enough for the lab.
            await asyncio.sleep(0.5)
            connection_id = agent.registrar.connection_id
            lost = (connection_id is None
                    or agent.stack.transports.connection(connection_id) is None)
            if not lost and loop.time() >= ping_at:
                # The CRLF keep-alive the FE asked for (ms-keep-alive timeout).
                ping_at = loop.time() + self.keep_alive
                try:
                    await agent.connect_ping()
                except (OSError, TransportError) as error:
                    logger.info("%s: keep-alive failed: %s", aor, error)
                    lost = True
            if not (lost or failed) and loop.time() < refresh_at:
                continue
            try:
                if lost:
                    self.registered = False
                    self.security = None
                    logger.info("%s: connection to the registrar lost, signing in again",
                                aor)
                    await agent.connect()
                await self.register()
                if lost:
                    await self.provisioning()
            except (CallRefused, SipTimeoutError, UserAgentError, OSError,
                    TransportError) as error:
                logger.warning("%s: sign-in failed (%s); next try in %.1f s", aor,
                               error, delay)
                failed = True
                self.registered = False
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, config.retry_max)
                continue
            if lost or failed:
                self.reregistrations += 1
            failed = False
            delay = config.retry_min
            refresh_at = loop.time() + max(1.0, self.granted / 2)

    async def close(self) -> None:
        """Stop refreshing and unregister."""
        if self._refresh is not None:
            self._refresh.cancel()
        if self.registered:
            try:
                await asyncio.wait_for(self.register(0), 2.0)
            except Exception as error:
                logger.info("%s: unregister on close: %r", self.client.aor, error)


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
