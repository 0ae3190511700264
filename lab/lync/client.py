"""A simulated Lync / Skype for Business client (satisfies ``lab.api.Caller`` / ``CallHandle``).

The client opens one TLS connection to its registrar (the FE when internal, the Access
Edge when external), registers over it and sends and receives everything on it, as real
clients do: they never listen. This module is its public face; the parts live in
:mod:`lab.lync.agent` (the UA core and the connection), :mod:`lab.lync.signin` (NTLM
sign-in, signing, provisioning, re-registration), :mod:`lab.lync.media_relay` (ICE servers,
MRAS), :mod:`lab.lync.call_control` and :mod:`lab.lync.call` (calls and their media) and
:mod:`lab.lync.im` (instant messaging).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

from certs.pki import LabPKI, init_pki
from lab.hosts import resolve
from lab.lync import mras
from lab.lync import offer as sdp_offer
from lab.lync.agent import USER_AGENT, ClientAgent
from lab.lync.call import SDP, CallRefused, LyncCall, describe
from lab.lync.call_control import ICE_FAILED, CallControl
from lab.lync.client_media import IceServers, networks
from lab.lync.config import ClientConfig
from lab.lync.im import InstantMessaging
from lab.lync.media_relay import MediaRelay
from lab.lync.signin import PROVISIONING_REQUEST, SignIn, read_provisioning
from sip.message import Request, Response
from sip.stack import Hop, SipStack
from sip.timers import TimerSettings
from sip.transport import ConnectionInfo, Transport, TransportSettings

__all__ = ["ICE_FAILED", "PROVISIONING_REQUEST", "SDP", "USER_AGENT", "CallRefused",
           "LyncCall", "LyncClient", "describe", "read_provisioning"]

logger = logging.getLogger(__name__)


class LyncClient:
    """A Lync client: ``await LyncClient.start(config)``, ``await client.call(target)``."""

    def __init__(self, config: ClientConfig, stack: SipStack, registrar: Hop) -> None:
        self.config = config
        self.aor = config.aor.removeprefix("sip:")
        """``user@domain``."""
        self.agent = ClientAgent(self, stack, registrar)
        """The UA core, holding our connection to the registrar."""
        self.im = InstantMessaging(self, USER_AGENT)
        """Instant messaging (IM sessions or page mode, per ``config.im_mode``)."""
        self.signin = SignIn(self)
        """Registration, MS-SIPAE signing and provisioning."""
        self.call_control = CallControl(self)
        """Our calls (placing, answering, re-INVITEs, BYE)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.relay = MediaRelay(self)
        """The STUN/TURN servers of our media (the A/V Edge from MRAS)."""
        self.allowed_networks = networks(config.allowed_networks)
        """The only networks our media may go to."""

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
                    await client.relay.renew()
        except BaseException:
            await stack.close()
            raise
        return client

    async def connect(self) -> ConnectionInfo:
        """Open the TLS connection (an RFC 5626 ping is the first thing sent on it)."""
        return await self.agent.connect()

    async def connect_ping(self) -> None:
        """A CRLF keep-alive on our registrar connection (fails when it is gone)."""
        await self.agent.connect_ping()

    async def register(self, expires: int | None = None) -> Response:
        """Sign in and REGISTER our Contact (:meth:`SignIn.register`)."""
        return await self.signin.register(expires)

    async def provisioning(self) -> dict[str, str]:
        """Subscribe to provisioning-v2 (one-off) and read ServerConfiguration."""
        return await self.signin.provisioning()

    async def request_media_relay(self) -> mras.MrasAnswer | None:
        """Ask the FE's MRAS for the A/V Edge (:meth:`MediaRelay.request`)."""
        return await self.relay.request()

    async def call(self, target: str, *, video: bool | None = None) -> LyncCall:
        """INVITE ``target`` ("3001@video.example.com"); returns once the INVITE is sent."""
        return await self.call_control.call(target, video=video)

    async def answer(self, call: LyncCall,
                     descriptions: list[sdp_offer.StreamDescription] | None = None) -> None:
        """Send the 2xx (auto-answer does this by itself) and start ICE."""
        await self.call_control.answer(call, descriptions)

    async def close(self) -> None:
        """Hang up every call, unregister, close the connection."""
        for call in list(self.calls.values()):
            try:
                await asyncio.wait_for(call.hangup(), 5.0)
            except Exception as error:  # closing anyway
                logger.info("%s: hangup on close: %r", self.aor, error)
                await call.finish("client stopped")
        await self.im.close()
        self.relay.close()
        await self.signin.close()
        for task in list(self._tasks):
            task.cancel()
        await self.agent.stack.close()

    async def __aenter__(self) -> LyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task of the client (cancelled on close)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- signing (the sign-in tests sign and check messages of their own) -----------------

    def _sign(self, request: Request, *, extra: str = "") -> None:
        self.signin.sign(request, extra=extra)

    def _verify(self, message: Response | Request) -> None:
        self.signin.verify(message)

    # -- state, read through to its owner ----------------------------------------------------

    @property
    def registrar(self) -> Hop:
        """The hop all our requests go to (pinned to our connection once it is open)."""
        return self.agent.registrar

    @property
    def calls(self) -> dict[str, LyncCall]:
        """Live calls by Call-ID."""
        return self.call_control.calls

    @property
    def incoming_calls(self) -> asyncio.Queue[LyncCall]:
        """Calls we were offered, in arrival order."""
        return self.call_control.incoming_calls

    @property
    def ice_servers(self) -> IceServers:
        return self.relay.ice_servers

    @property
    def media_relay(self) -> mras.MrasAnswer | None:
        """The A/V Edge and credentials MRAS handed out (``turn_dialect = "ms-turn"``)."""
        return self.relay.answer

    @property
    def registered(self) -> bool:
        return self.signin.registered

    @property
    def instance(self) -> str:
        """+sip.instance of our Contact."""
        return self.signin.instance

    @property
    def server_configuration(self) -> dict[str, str]:
        """provisioning-v2 ServerConfiguration (ucPC2PCAVEncryption, mrasUri...)."""
        return self.signin.server_configuration

    @property
    def keep_alive(self) -> int:
        """Seconds between CRLF keep-alives (the FE's ms-keep-alive timeout)."""
        return self.signin.keep_alive

    @property
    def unsigned(self) -> list[str]:
        """Messages from the FE a real client would have dropped, newest last."""
        return self.signin.unsigned

    @property
    def server_signatures(self) -> int:
        """FE signatures verified."""
        return self.signin.server_signatures

    @property
    def reregistrations(self) -> int:
        """Sign-ins after a lost connection."""
        return self.signin.reregistrations

    @property
    def remote_user(self) -> bool:
        """Signed in through the Access Edge (the REGISTER 200 said ``RemoteUser``)."""
        return self.signin.remote_user
