"""A UA core over :class:`sip.stack.SipStack`: its own Via and Contact, new requests,
dialog bookkeeping, and the checks every UAS makes before the application sees a request
(RFC 3261 §8.2: 483 when Max-Forwards is 0, 420 for an unsupported Require, 481 for a
request in an unknown dialog).

Subclass :class:`UserAgent` and override ``handle_new_request`` / ``handle_dialog_request`` /
``handle_ack`` (see ``lab.endpoint.agent``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, replace

from sip.dialog import Dialog, DialogId, DialogState
from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Headers, Request, Response, make_response, new_branch, new_call_id, new_tag
from sip.stack import Hop, SipStack, StackHandlers
from sip.transaction_client import ClientTransaction
from sip.transaction_server import ServerTransaction
from sip.transport_types import Transport, TransportAddress
from sip.uri import URI, Params

__all__ = ["ALLOW", "Dialogs", "UserAgent", "UserAgentError", "response_for"]

logger = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"


class UserAgentError(Exception):
    """A UA operation that cannot be done (no listener for a transport, unknown dialog...)."""


@dataclass(slots=True, eq=False)
class _Entry:
    dialog: Dialog
    hop: Hop


class Dialogs:
    """The dialogs of one UA, keyed by :class:`DialogId`, each with the hop it runs over.

    The hop remembers the connection the dialog was set up on, so in-dialog requests reuse
    it (a peer behind NAT or a TLS tunnel cannot take a new connection).
    """

    def __init__(self) -> None:
        self._entries: dict[DialogId, _Entry] = {}

    def add(self, dialog: Dialog, hop: Hop) -> Dialog:
        """Register ``dialog`` (replacing an entry with the same id)."""
        self._entries[dialog.id] = _Entry(dialog, hop)
        return dialog

    def get(self, dialog_id: DialogId) -> Dialog | None:
        """The dialog with this id, if known."""
        entry = self._entries.get(dialog_id)
        return None if entry is None else entry.dialog

    def for_request(self, request: Request) -> Dialog | None:
        """The dialog a received request belongs to (UAS view of its tags)."""
        return self.get(DialogId.of_received_request(request))

    def for_response(self, response: Response) -> Dialog | None:
        """The dialog a response to our request belongs to (UAC view)."""
        return self.get(DialogId.of_received_response(response))

    def remove(self, dialog_id: DialogId) -> Dialog | None:
        """Forget a dialog; returns it when it was known."""
        entry = self._entries.pop(dialog_id, None)
        return None if entry is None else entry.dialog

    def hop(self, dialog: Dialog) -> Hop:
        """Where the next request in ``dialog`` goes: its next hop URI, over the dialog's
        connection when the transport is the same."""
        entry = self._entries.get(dialog.id)
        target = Hop.from_uri(dialog.next_hop())
        if entry is None:
            return target
        known = entry.hop
        if target.transport is known.transport:
            # Same transport: reuse the connection (UDP: the same socket) and TLS name.
            return replace(
                target, connection_id=known.connection_id, server_hostname=known.server_hostname
            )
        return target

    def update_hop(self, dialog: Dialog, hop: Hop) -> None:
        """Remember the hop the latest message of ``dialog`` arrived on."""
        entry = self._entries.get(dialog.id)
        if entry is not None and hop.transport.reliable:
            entry.hop = hop

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Dialog]:
        return iter([entry.dialog for entry in self._entries.values()])

    def __contains__(self, dialog_id: object) -> bool:
        return dialog_id in self._entries


class UserAgent:
    """A user agent (client and server cores) for one address of record."""

    supported: frozenset[str] = frozenset()
    """Option tags (RFC 3261 §19.2) this UA supports; others in Require get 420."""

    def __init__(
        self, stack: SipStack, *, user: str, domain: str, display_name: str | None = None
    ) -> None:
        self.stack = stack
        self.user = user
        """User part of our address of record."""
        self.domain = domain
        """Host part of our address of record."""
        self.display_name = display_name
        self.dialogs = Dialogs()
        """Our dialogs."""
        stack.handlers = StackHandlers(
            on_request=self._on_request,
            on_ack=self._on_ack,
            on_cancel=self.handle_cancel,
            on_ack_timeout=self._on_ack_timeout,
            on_stray_response=self._on_stray_response,
        )

    # -- identity ------------------------------------------------------------------------

    @property
    def aor(self) -> URI:
        """``sip:user@domain``."""
        return URI("sip", user=self.user, host=self.domain)

    def local_address(self, transport: Transport) -> TransportAddress:
        """The listener we advertise for ``transport`` (else any listener: its host)."""
        listener = self.stack.listener(transport)
        if listener is not None:
            return listener
        if not self.stack.listeners:
            raise UserAgentError("the UA has no listener")
        host = self.stack.listeners[0].host
        return TransportAddress(transport, host, transport.default_port)

    def via(self, transport: Transport) -> str:
        """Our Via sent-protocol and sent-by, without branch (rport asked for, RFC 3581)."""
        local = self.local_address(transport)
        host = f"[{local.host}]" if ":" in local.host else local.host
        return f"SIP/2.0/{transport.value} {host}:{local.port};rport"

    def contact(self, transport: Transport) -> str:
        """Our Contact for ``transport``."""
        local = self.local_address(transport)
        params = (
            Params() if transport is Transport.UDP else Params.of(transport=transport.value.lower())
        )
        uri = URI("sip", user=self.user, host=local.host, port=local.port, params=params)
        return f"<{uri}>"

    # -- building requests --------------------------------------------------------------

    def new_request(
        self,
        method: str,
        uri: URI,
        target: Hop,
        *,
        to: Address | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        call_id: str | None = None,
    ) -> Request:
        """An out-of-dialog request (§8.1.1) from our AOR with a fresh tag and Call-ID."""
        out = Headers()
        out.add("Via", f"{self.via(target.transport)};branch={new_branch()}")
        out.add("Max-Forwards", "70")
        out.add("From", str(Address(self.aor, self.display_name).with_tag(new_tag())))
        out.add("To", str(to if to is not None else Address(replace(uri, params=Params()))))
        out.add("Call-ID", call_id or new_call_id(self.local_address(target.transport).host))
        out.add("CSeq", f"1 {method}")
        if method in ("INVITE", "SUBSCRIBE", "REFER", "OPTIONS"):
            out.add("Contact", self.contact(target.transport))
        if method in ("INVITE", "OPTIONS"):
            out.add("Allow", ALLOW)
        for name, value in headers:
            out.add(name, value)
        if body:
            if content_type is None:
                raise UserAgentError("a request body needs a content type")
            out.add("Content-Type", content_type)
        return Request(method, uri, out, body)

    def dialog_hop(self, dialog: Dialog) -> Hop:
        """Where the next request (or ACK) in ``dialog`` goes; a subclass may route otherwise."""
        return self.dialogs.hop(dialog)

    def dialog_request(
        self,
        dialog: Dialog,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> tuple[Request, Hop]:
        """A request inside ``dialog`` and the hop it goes to."""
        hop = self.dialog_hop(dialog)
        request = dialog.create_request(
            method,
            via=self.via(hop.transport),
            body=body,
            content_type=content_type,
            headers=headers,
        )
        return request, hop

    def send_ack(
        self,
        dialog: Dialog,
        transaction: ClientTransaction | None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        """ACK the 2xx to our INVITE in ``dialog`` (§13.2.2.4)."""
        hop = self.dialog_hop(dialog)
        ack = dialog.create_ack(via=self.via(hop.transport), body=body, content_type=content_type)
        self.stack.send_ack(ack, hop, transaction)

    async def send_in_dialog(
        self, dialog: Dialog, method: str, *, body: bytes = b"", content_type: str | None = None
    ) -> Response:
        """Send a non-INVITE request in ``dialog`` and return the final response."""
        request, hop = self.dialog_request(dialog, method, body=body, content_type=content_type)
        return await self.stack.send_request(request, hop)

    # -- to override ---------------------------------------------------------------------

    def handle_new_request(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        """A request outside any dialog (no To tag). Default: OPTIONS 200, others 501."""
        if request.method == "OPTIONS":
            self.answer_options(transaction)
        else:
            self.stack.respond(transaction, 501, headers=(("Allow", ALLOW),))
        return None

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        """A request in a known dialog (CSeq already checked). Default: BYE ends it."""
        if request.method == "BYE":
            dialog.terminate()
            self.dialogs.remove(dialog.id)
            self.stack.respond(transaction, 200)
        elif request.method == "OPTIONS":
            self.answer_options(transaction)
        else:
            self.stack.respond(transaction, 501, headers=(("Allow", ALLOW),))
        return None

    def handle_ack(self, dialog: Dialog, ack: Request) -> None:
        """The ACK for our 2xx in ``dialog``."""

    def handle_too_many_hops(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        """A request with Max-Forwards 0: 483 (a subclass that routes may answer it itself,
        to count it)."""
        self.stack.respond(transaction, 483)
        return None

    def handle_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        """A CANCEL matched our pending INVITE; default: 487 to the INVITE."""
        self.stack.respond(transaction, 487)

    def handle_ack_timeout(self, dialog: Dialog) -> None:
        """Our 2xx was never ACKed: the dialog is confirmed then ended with BYE (§13.3.1.4)."""
        dialog.terminate()
        request, hop = self.dialog_request(dialog, "BYE")
        self.dialogs.remove(dialog.id)
        self.stack.start_request(request, hop)

    def answer_options(self, transaction: ServerTransaction) -> None:
        """200 to OPTIONS with what we allow and accept."""
        headers = [("Allow", ALLOW), ("Accept", "application/sdp")]
        if self.supported:
            headers.append(("Supported", ", ".join(sorted(self.supported))))
        self.stack.respond(transaction, 200, headers=tuple(headers))

    # -- stack callbacks -----------------------------------------------------------------

    def _on_request(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return self.handle_too_many_hops(transaction, request)
        unsupported = self.unsupported(request)
        if unsupported and request.method != "CANCEL":
            # §8.2.2.3: refuse what we would have to understand, naming it.
            self.stack.respond(transaction, 420, headers=(("Unsupported", ", ".join(unsupported)),))
            return None
        if request.to.tag is None:
            return self.handle_new_request(transaction, request)
        dialog = self.dialogs.for_request(request)
        if dialog is None:
            self.stack.respond(transaction, 481)
            return None
        try:
            dialog.receive_request(request)
        except ProtocolError as error:
            self.stack.respond(transaction, error.status_hint, error.message)
            return None
        self.dialogs.update_hop(dialog, transaction.source)
        return self.handle_dialog_request(dialog, transaction, request)

    def unsupported(self, request: Request) -> list[str]:
        """The option tags of Require (and Proxy-Require) we do not support."""
        wanted = request.headers.getlist("Require")
        return [
            tag for tag in (t.strip() for t in wanted) if tag and tag.lower() not in self.supported
        ]

    def _on_ack(self, ack: Request, source: Hop) -> None:
        dialog = self.dialogs.for_request(ack)
        if dialog is None:
            logger.debug("ACK for an unknown dialog (Call-ID %s) dropped", ack.call_id)
            return
        try:
            dialog.receive_request(ack)
        except ProtocolError as error:
            logger.debug("ACK refused by its dialog: %s", error.message)
            return
        self.handle_ack(dialog, ack)

    def _on_ack_timeout(self, transaction: ServerTransaction, response: Response) -> None:
        dialog = self.dialogs.get(
            DialogId(response.call_id, response.to.tag or "", response.from_.tag or "")
        )
        if dialog is not None and dialog.state is not DialogState.TERMINATED:
            self.handle_ack_timeout(dialog)

    def _on_stray_response(self, response: Response) -> None:
        if response.cseq.method == "INVITE" and 200 <= response.status < 300:
            dialog = self.dialogs.for_response(response)
            if dialog is not None and dialog.invite_seq == response.cseq.seq:
                # §13.2.2.4: a 2xx retransmitted after our transaction ended gets the ACK again.
                self.send_ack(dialog, None)
                return
            sibling = self._forked_from(response) if dialog is None else None
            if sibling is not None:
                self._end_fork(sibling, response)
                return
        logger.debug("stray %d response (Call-ID %s) dropped", response.status, response.call_id)

    def _forked_from(self, response: Response) -> Dialog | None:
        """Our dialog made by the same INVITE as this 2xx from another fork (same Call-ID,
        our tag and CSeq, another To tag), if any."""
        for dialog in self.dialogs:
            if (dialog.is_uac and dialog.id.call_id == response.call_id
                    and dialog.id.local_tag == response.from_.tag
                    and dialog.invite_seq == response.cseq.seq):
                return dialog
        return None

    def _end_fork(self, sibling: Dialog, response: Response) -> None:
        """§13.2.2.4: a forked INVITE's 2xx after the first is ACKed like it; we keep one
        dialog per call, so the other is ended with a BYE right after. It stays known (for
        the ACK of its retransmissions) until its BYE is answered."""
        fork = Dialog.create_fork(sibling, response)
        self.dialogs.add(fork, self.dialogs.hop(sibling))
        logger.info("2xx from another fork of Call-ID %s (To tag %s): ACK and BYE",
                    response.call_id, response.to.tag)
        self.send_ack(fork, None)
        self.stack.spawn(self._bye_fork(fork))

    async def _bye_fork(self, fork: Dialog) -> None:
        try:
            request, hop = self.dialog_request(fork, "BYE")
            answer = await self.stack.send_request(request, hop)
            logger.debug("BYE to the extra fork answered %d", answer.status)
        except Exception as exc:  # the fork's peer gone: nothing more to end
            logger.info("BYE to the extra fork of Call-ID %s failed: %s", fork.id.call_id, exc)
        finally:
            fork.terminate()
            self.dialogs.remove(fork.id)


DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
"""Requests whose 1xx/2xx can establish a dialog (RFC 3261 §12, RFC 6665, RFC 3515)."""


def response_for(
    request: Request,
    status: int,
    *,
    to_tag: str | None = None,
    contact: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` with our To tag and Contact (for dialog-creating answers).

    A response that establishes a dialog carries the request's Record-Route, in order
    (RFC 3261 §12.1.1), so that in-dialog requests keep passing the proxies (a Lync FE,
    CUCM) that asked to stay in the path.
    """
    response = make_response(request, status, to_tag=to_tag, body=body, content_type=content_type)
    if contact is not None:
        response.headers.add("Contact", contact)
    if 100 < status < 300 and request.method in DIALOG_METHODS and request.to.tag is None:
        for value in request.headers.getlist("Record-Route"):
            response.headers.add("Record-Route", value)
    return response
