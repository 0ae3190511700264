"""The STUN/TURN servers of the simulated Lync client's media, and the MRAS request.

Configured servers come from the client config; with ``turn_dialect = "ms-turn"`` the
client asks the FE's MRAS (``mrasUri`` of provisioning) for the A/V Edge and time-limited
credentials, as Lync clients and pidgin-sipe do after sign-in, and asks again at half
their validity.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING

from lab.hosts import resolve
from lab.lync import mras
from lab.lync.call import CallRefused
from lab.lync.client_media import IceServers
from sip.headers import Address
from sip.stack import SipTimeoutError
from sip.transport import TransportError
from sip.uri import URI

if TYPE_CHECKING:
    from lab.lync.client import LyncClient

__all__ = ["MediaRelay"]

logger = logging.getLogger(__name__)


class MediaRelay:
    """The ICE servers new streams use, and the MRAS answer that set the relay."""

    def __init__(self, client: LyncClient) -> None:
        servers = client.config
        self.client = client
        self.ice_servers = IceServers(
            stun=(resolve(servers.stun.host), servers.stun.port) if servers.stun else None,
            turn=(resolve(servers.turn.host), servers.turn.port) if servers.turn else None,
            turn_username=servers.turn_username, turn_password=servers.turn_password,
            relay_only=servers.relay_only)
        self.answer: mras.MrasAnswer | None = None
        """The A/V Edge and credentials MRAS handed out (``turn_dialect = "ms-turn"``)."""
        self._renewal: asyncio.TimerHandle | None = None

    async def request(self) -> mras.MrasAnswer | None:
        """Ask the FE's MRAS (``mrasUri`` of provisioning) for the A/V Edge and credentials,
        as Lync clients and sipe do after sign-in; relay candidates then come from an
        MS-TURN allocation there. Asked again at half their validity. None (logged) when
        provisioning names no MRAS or MRAS refuses: no relay candidates then."""
        client = self.client
        signin, aor = client.signin, client.aor
        uri = signin.server_configuration.get("mrasUri")
        if not uri:
            logger.warning("%s: provisioning names no mrasUri: no A/V Edge relay", aor)
            return None
        agent = client.agent
        body = mras.request_body(
            request_id=secrets.token_hex(4), sender=f"sip:{aor}", mras_uri=uri,
            identity=f"sip:{aor}", location="internet" if signin.remote_user else "intranet")
        request = agent.new_request("SERVICE", URI.parse(uri), agent.registrar,
                                    to=Address(URI.parse(uri)), body=body.encode(),
                                    content_type=mras.CONTENT_TYPE)
        response = await agent.stack.send_request(request, agent.registrar)
        if response.status != 200:
            logger.warning("%s: MRAS answered %d %s: no A/V Edge relay", aor,
                           response.status, response.reason)
            return None
        signin.verify(response)
        try:
            answer = mras.parse_answer(response.body)
            username = base64.b64decode(answer.username, validate=True)
            password = base64.b64decode(answer.password, validate=True)
        except (mras.MrasError, binascii.Error) as error:
            logger.warning("%s: unusable MRAS answer (%s): no A/V Edge relay", aor, error)
            return None
        relay = answer.relays[0]
        self.answer = answer
        self.ice_servers = replace(
            self.ice_servers, turn=(resolve(relay.host), relay.udp_port), ms_turn=True,
            ms_turn_username=username, ms_turn_password=password)
        if self._renewal is not None:
            self._renewal.cancel()
        self._renewal = asyncio.get_running_loop().call_later(
            max(1.0, answer.duration * 30.0), lambda: client.spawn(self.renew()))
        return answer

    async def renew(self) -> None:
        """:meth:`request`, a failure logged (signed in, but no relay)."""
        try:
            await self.request()
        except (SipTimeoutError, TransportError, CallRefused) as error:
            logger.warning("%s: MRAS request failed: %r", self.client.aor, error)

    def close(self) -> None:
        """No more renewals."""
        if self._renewal is not None:
            self._renewal.cancel()
