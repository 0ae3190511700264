"""The SIP UA core of the simulated Lync client and its one connection to the registrar.

Real Lync clients never listen: they open one TLS connection to their registrar (the FE
when internal, the Access Edge when external) and send and receive everything on it. The
agent holds that connection (``registrar``, ``local``), names it in Via and Contact, signs
what it sends and hands what arrives to the client's sign-in, IM and call handling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from sip.dialog import Dialog
from sip.headers import Address
from sip.message import Request
from sip.stack import Hop, SipStack
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import ConnectionInfo, Transport, TransportAddress, TransportError
from sip.uri import URI, Params
from sip.useragent import UserAgent, UserAgentError

if TYPE_CHECKING:
    from lab.lync.client import LyncClient

__all__ = ["USER_AGENT", "ClientAgent"]

USER_AGENT = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync) (lab)"


class ClientAgent(UserAgent):
    """The UA core: Via and Contact name our end of the registrar connection."""

    supported = frozenset({"ms-dialog-route-set-update", "timer", "histinfo", "ms-safe-transfer",
                           "ms-sender", "ms-early-media", "100rel", "replaces"})

    def __init__(self, client: LyncClient, stack: SipStack, registrar: Hop) -> None:
        config = client.config
        super().__init__(stack, user=config.user, domain=config.domain,
                         display_name=config.display_name or None)
        self.client = client
        self.local: TransportAddress | None = None
        """Our end of the registrar connection (None until connected)."""
        self.registrar = registrar
        """The hop all our requests go to (pinned to our connection once it is open)."""

    async def connect(self) -> ConnectionInfo:
        """Open the TLS connection (an RFC 5626 ping is the first thing sent on it)."""
        hop = self.registrar
        info = await self.stack.transports.send(
            b"\r\n\r\n", hop.address, server_hostname=hop.server_hostname)
        self.local = info.local
        self.registrar = replace(hop, connection_id=info.id)
        return info

    async def connect_ping(self) -> None:
        """A CRLF keep-alive on our registrar connection (fails when it is gone)."""
        hop = self.registrar
        if hop.connection_id is None or self.stack.transports.connection(
                hop.connection_id) is None:
            raise TransportError("the registrar connection is closed")
        await self.stack.transports.send(b"\r\n\r\n", hop.address,
                                         server_hostname=hop.server_hostname,
                                         connection_id=hop.connection_id)

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
        self.client.signin.sign_request(request)
        return request

    def dialog_request(self, dialog: Dialog, method: str, *, body: bytes = b"",
                       content_type: str | None = None,
                       headers: Iterable[tuple[str, str]] = ()) -> tuple[Request, Hop]:
        request, hop = super().dialog_request(dialog, method, body=body,
                                              content_type=content_type, headers=headers)
        self.client.signin.sign_request(request)
        return request, hop

    def handle_new_request(self, transaction: ServerTransaction, request: Request
                           ) -> Awaitable[None] | None:
        self.client.signin.check_signed(request)
        if request.method == "INVITE":
            return self.client.call_control.incoming(transaction, request)
        if request.method in ("MESSAGE", "INFO", "NOTIFY"):
            self.stack.respond(transaction, 200)
            return None
        return super().handle_new_request(transaction, request)

    def handle_dialog_request(self, dialog: Dialog, transaction: ServerTransaction,
                              request: Request) -> Awaitable[None] | None:
        self.client.signin.check_signed(request)
        if self.client.im.handle(dialog, transaction, request):
            return None
        control = self.client.call_control
        call = control.call_of(dialog)
        if request.method == "BYE":
            self.stack.respond(transaction, 200)
            if call is not None:
                return call.finish("BYE from peer")
            dialog.terminate()
            self.dialogs.remove(dialog.id)
            return None
        if request.method == "INVITE" and call is not None:
            return control.reinvited(call, transaction, request)
        if request.method in ("INFO", "UPDATE", "MESSAGE"):
            self.stack.respond(transaction, 200)
            return None
        return super().handle_dialog_request(dialog, transaction, request)

    def handle_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        if transaction.state is ServerState.PROCEEDING:
            call = next((c for c in self.client.call_control.calls.values()
                         if c.invite_tx is transaction), None)
            tag = call.dialog.id.local_tag if call is not None and call.dialog else None
            self.stack.respond(transaction, 487, to_tag=tag)
            if call is not None:
                asyncio.ensure_future(call.finish("cancelled by caller"))

    def handle_ack_timeout(self, dialog: Dialog) -> None:
        call = self.client.call_control.call_of(dialog)
        super().handle_ack_timeout(dialog)
        if call is not None:
            asyncio.ensure_future(call.finish("no ACK for our 2xx"))
