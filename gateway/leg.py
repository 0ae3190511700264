"""One side of a B2BUA call: a SIP dialog on the Microsoft or the video network.

A :class:`SideAgent` is the UA core of one side (its own :class:`SipStack`, listeners, Via
and Contact); it hands new requests, in-dialog requests, ACKs, CANCELs and ACK timeouts
to its owner (the call adapter, ``gateway.calls.adapter``) together with the
:class:`Leg` they belong to. A leg is either the UAS of an inbound INVITE or the UAC of an
outbound one; either way it ends up holding one confirmed :class:`Dialog`.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from gateway.calls.events import reason_header
from gateway.views import LegSide
from media.sdp import SessionDescription
from sip.dialog import Dialog, DialogId, DialogState
from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Headers, Request, Response, make_response, new_branch, new_call_id, new_tag
from sip.stack import ClientRequest, Hop, SipStack
from sip.transaction_server import ServerState, ServerTransaction
from sip.uri import URI
from sip.useragent import ALLOW, UserAgent, response_for

if TYPE_CHECKING:
    from gateway.call import ActiveCall
    from sip.reliable import ProvisionalAcceptor
    from sip.transaction_client import ClientTransaction

__all__ = [
    "GATEWAY_ALLOW",
    "MICROSOFT_ALLOW",
    "SUPPORTED",
    "VIDEO_SUPPORTED",
    "VIDEO_ALLOW",
    "Leg",
    "LegOwner",
    "LegRole",
    "SideAgent",
    "allow_for",
    "reason_header",
]

logger = logging.getLogger(__name__)

GATEWAY_ALLOW = ALLOW + ", REFER, NOTIFY"
"""Every method the B2BUA takes inside a call, on one side or the other."""
VIDEO_ALLOW = GATEWAY_ALLOW
"""The video side: REFER (we carry out the transfer of the Microsoft client), NOTIFY,
UPDATE (with SDP relayed as an offer, without it answered 200: a session refresh) and INFO
without a body (answered 200; with one 501)."""
MICROSOFT_ALLOW = ALLOW + ", NOTIFY"
"""The Microsoft side: a REFER from Microsoft is refused (403), so it is not allowed."""
SUPPORTED: frozenset[str] = frozenset({"timer"})
"""Option tags (RFC 3261 §19.2) a request to the gateway may require on the Microsoft side:
``timer`` (RFC 4028 session timers, negotiated on each leg). There ``100rel`` is implemented
as UAC only (we PRACK a callee's reliable 1xx) and ``replaces`` not at all: a ``Require``
naming them gets 420."""
VIDEO_SUPPORTED: frozenset[str] = SUPPORTED | {"100rel"}
"""The video side also takes ``Require: 100rel``: our 1xx to such a caller are sent
reliably (RFC 3262 §3, ``gateway.calls.reliable_uas``)."""


def allow_for(side: LegSide) -> str:
    """The ``Allow`` value the gateway sends on ``side``."""
    return MICROSOFT_ALLOW if side is LegSide.MICROSOFT else VIDEO_ALLOW


class LegRole(enum.Enum):
    """Which end of the INVITE that created the dialog we are."""

    UAS = "uas"
    """We received the INVITE (the caller's leg)."""
    UAC = "uac"
    """We sent the INVITE (the called leg)."""


@dataclass(slots=True, eq=False)
class Leg:
    """One SIP dialog of a call and the offer/answer state on it."""

    side: LegSide
    """The network the leg faces."""
    agent: SideAgent
    """The UA core it runs on."""
    role: LegRole
    """UAS (inbound) or UAC (outbound)."""
    call_id: str
    """This leg's own Call-ID."""
    hop: Hop
    """Where the peer is (the connection an inbound INVITE came on, or our INVITE's target)."""
    invite: Request
    """The dialog-creating INVITE (received or sent)."""
    local_tag: str = field(default_factory=new_tag)
    """Our tag on this dialog."""
    server_tx: ServerTransaction | None = None
    """UAS: the INVITE transaction until it is answered."""
    client: ClientRequest | None = None
    """UAC: our INVITE while it is pending."""
    dialog: Dialog | None = None
    """The dialog, once confirmed."""
    local_sdp: SessionDescription | None = None
    """The SDP we last sent on this leg."""
    remote_sdp: SessionDescription | None = None
    """The SDP the peer last sent on this leg."""
    call: ActiveCall | None = None
    """The call this leg belongs to."""
    last_status: int | None = None
    """UAC: the latest status received for our INVITE."""
    ack_for: ClientTransaction | None = None
    """The INVITE (or re-INVITE) transaction whose 2xx the next ``send_ack`` ACKs."""
    timer_headers: tuple[tuple[str, str], ...] = ()
    """UAS: the session-timer headers of our 2xx (RFC 4028 §9)."""
    peer_allows_update: bool = False
    """The peer's Allow lists UPDATE (session refreshes then go as UPDATE)."""
    acceptor: ProvisionalAcceptor | None = None
    """UAC: RSeq bookkeeping of reliable provisionals to our INVITE (RFC 3262)."""
    last_reliable: Response | None = None
    """UAC: the reliable provisional to PRACK."""

    # -- identity ---------------------------------------------------------------------------

    @property
    def remote_text(self) -> str:
        """The far end, as ``tls:127.0.1.1:5061``."""
        return f"{self.hop.transport.value.lower()}:{self.hop.host}:{self.hop.port}"

    @property
    def dialog_state(self) -> str:
        if self.dialog is not None:
            return self.dialog.state.value
        return "early" if self.last_status is not None and self.last_status < 200 else "trying"

    @property
    def confirmed(self) -> bool:
        return self.dialog is not None and self.dialog.state is DialogState.CONFIRMED

    # -- UAS: answering the inbound INVITE ---------------------------------------------------

    @property
    def pending(self) -> bool:
        """UAS: the INVITE still awaits its final answer."""
        tx = self.server_tx
        return tx is not None and tx.state in (ServerState.TRYING, ServerState.PROCEEDING)

    def provisional(self, status: int, reason: str | None = None,
                    sdp: SessionDescription | None = None) -> None:
        """Send a 1xx (with our To tag, so the caller sees one early dialog), with ``sdp``
        for early media."""
        if not self.pending or self.server_tx is None:
            return
        tag = None if status == 100 else self.local_tag
        body = bytes(sdp) if sdp is not None else b""
        response = response_for(self.invite, status, to_tag=tag, body=body,
                                content_type="application/sdp" if body else None)
        if reason:
            response.reason = reason
        if tag is not None:
            response.headers.add("Contact", self.agent.contact(self.hop.transport))
        if sdp is not None:
            self.local_sdp = sdp
        self.agent.stack.send_response(self.server_tx, response)

    def answer(self, sdp: SessionDescription | None,
               headers: Iterable[tuple[str, str]] = ()) -> Response:
        """Send the 2xx (our SDP when given) and confirm the dialog."""
        if self.server_tx is None:
            raise ProtocolError("no INVITE to answer", 500)
        body = bytes(sdp) if sdp is not None else b""
        response = response_for(
            self.invite,
            200,
            to_tag=self.local_tag,
            contact=self.agent.contact(self.hop.transport),
            body=body,
            content_type="application/sdp" if body else None,
        )
        response.headers.add("Allow", allow_for(self.side))
        for name, value in headers:
            response.headers.add(name, value)
        if self.dialog is None:
            self.dialog = Dialog.create_uas(
                self.invite, response, local_contact=self.agent.contact(self.hop.transport)
            )
            self.agent.adopt(self)
        else:
            self.dialog.confirm()
        self.local_sdp = sdp if sdp is not None else self.local_sdp
        self.agent.stack.send_response(self.server_tx, response)
        self.server_tx = None
        return response

    def reject(
        self, status: int, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """A final error to the pending INVITE (nothing when it was answered already)."""
        if not self.pending or self.server_tx is None:
            return
        response = make_response(self.invite, status, reason, to_tag=self.local_tag)
        for name, value in headers:
            response.headers.add(name, value)
        self.agent.stack.send_response(self.server_tx, response)
        self.server_tx = None

    # -- UAC: our INVITE ---------------------------------------------------------------------

    def confirm_uac(self, response: Response, transaction: ClientTransaction) -> None:
        """Our INVITE got a 2xx: make the dialog (``send_ack`` ACKs it). Raises
        ``ProtocolError`` for a 2xx a dialog cannot be made from."""
        if self.dialog is None:
            self.dialog = Dialog.create_uac(self.invite, response)
            self.agent.adopt(self)
        else:
            self.dialog.receive_response(self.invite, response)
        self.ack_for = transaction
        self.client = None

    def send_ack(self) -> None:
        """ACK the last 2xx (of our INVITE or re-INVITE), without body."""
        if self.dialog is None:
            raise ProtocolError("ACK needs a dialog", 500)
        self.agent.send_ack(self.dialog, self.ack_for)
        self.ack_for = None

    def answer_in_dialog(self, transaction: ServerTransaction, request: Request,
                         sdp: SessionDescription | None,
                         headers: Iterable[tuple[str, str]] = ()) -> None:
        """200 to a re-INVITE or UPDATE, with ``sdp`` when given."""
        body = bytes(sdp) if sdp is not None else b""
        response = response_for(request, 200, contact=self.agent.contact(self.hop.transport),
                                body=body, content_type="application/sdp" if body else None)
        for name, value in headers:
            response.headers.add(name, value)
        self.agent.stack.send_response(transaction, response)
        if sdp is not None:
            self.local_sdp = sdp

    # -- in-dialog requests --------------------------------------------------------------------

    def request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> ClientRequest:
        """Send a request inside the dialog."""
        if self.dialog is None:
            raise ProtocolError(f"{method} needs a dialog", 500)
        request, hop = self.agent.dialog_request(
            self.dialog, method, body=body, content_type=content_type, headers=headers
        )
        return self.agent.stack.start_request(request, hop)

    def bye(self, reason: tuple[str, str] | None = None) -> ClientRequest | None:
        """End the dialog with BYE (fire and forget); None when there is no live dialog."""
        if self.dialog is None or self.dialog.state is DialogState.TERMINATED:
            self.forget()
            return None
        headers = [reason] if reason is not None else []
        try:
            pending = self.request("BYE", headers=headers)
        except (ProtocolError, ValueError) as error:
            logger.warning("[%s] cannot send BYE: %s", self.call_id, error)
            pending = None
        self.dialog.terminate()
        self.forget()
        return pending

    def forget(self) -> None:
        """Drop the dialog from the agent's tables."""
        if self.dialog is not None:
            self.dialog.terminate()
            self.agent.release(self)


class LegOwner(Protocol):
    """What a :class:`SideAgent` reports to (the call adapter)."""

    def screen(self, agent: SideAgent, transaction: ServerTransaction, request: Request) -> bool:
        """First look at every request (trusted hosts): False when it was answered."""
        ...

    def on_new_request(
        self, agent: SideAgent, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None: ...

    def on_dialog_request(
        self, leg: Leg, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None: ...

    def on_ack(self, leg: Leg, ack: Request) -> None: ...

    def on_cancel(self, agent: SideAgent, transaction: ServerTransaction) -> None: ...

    def on_ack_timeout(self, leg: Leg) -> None: ...


class SideAgent(UserAgent):
    """The UA core of one side of the gateway."""

    supported = SUPPORTED

    def __init__(
        self, stack: SipStack, side: LegSide, owner: LegOwner, *, user: str, domain: str
    ) -> None:
        super().__init__(stack, user=user, domain=domain)
        self.side = side
        self.owner = owner
        self.supported = VIDEO_SUPPORTED if side is LegSide.VIDEO else SUPPORTED
        self.legs: dict[DialogId, Leg] = {}
        """Legs with a dialog on this side."""
        inner: Callable[..., Awaitable[None] | None] | None = stack.handlers.on_request
        assert inner is not None

        def screened(transaction: ServerTransaction, request: Request) -> Awaitable[None] | None:
            if not owner.screen(self, transaction, request):
                return None
            return inner(transaction, request)

        stack.handlers.on_request = screened

    def unsupported(self, request: Request) -> list[str]:
        """``Require`` tags we do not implement (answered 420 with ``Unsupported``, RFC 3261
        §8.2.2.3, by the UA core before the request reaches call control)."""
        tags = super().unsupported(request)
        if self.side is LegSide.MICROSOFT:
            # Microsoft's own ms-* tags (MS-SIPRE extensions the FE and Edge act on) have
            # always passed here so a real FE's requests are never refused for them; the
            # lab's FE traffic (tests/data/sipp/lync_fe_*.xml) requires none. They pass on
            # the Microsoft side only: the video side has no business requiring an ms-* tag.
            tags = [tag for tag in tags if not tag.lower().startswith("ms-")]
        return tags

    def answer_options(self, transaction: ServerTransaction) -> None:
        """200 to OPTIONS with this side's Allow and the option tags a request may require."""
        headers = [("Allow", allow_for(self.side)), ("Accept", "application/sdp")]
        if self.supported:
            headers.append(("Supported", ", ".join(sorted(self.supported))))
        self.stack.respond(transaction, 200, headers=tuple(headers))

    # -- legs ------------------------------------------------------------------------------

    def adopt(self, leg: Leg) -> None:
        """Register a leg whose dialog now exists."""
        assert leg.dialog is not None
        self.dialogs.add(leg.dialog, leg.hop)
        self.legs[leg.dialog.id] = leg

    def release(self, leg: Leg) -> None:
        """Forget a leg's dialog."""
        if leg.dialog is not None:
            self.dialogs.remove(leg.dialog.id)
            self.legs.pop(leg.dialog.id, None)

    def dialog_hop(self, dialog: Dialog) -> Hop:
        """Where the next request of ``dialog`` goes.

        The remote target when it is an IP address (reusing the dialog's connection), else
        the hop the dialog runs over: the gateway resolves no names, so a Contact like
        ``sip:alice@example.com;gruu`` is reached through the FE connection it came on.
        """
        leg = self.legs.get(dialog.id)
        try:
            hop = self.dialogs.hop(dialog)
        except ValueError:
            hop = None
        if hop is not None and _is_ip(hop.host):
            return hop
        if leg is not None:
            return leg.hop
        raise ProtocolError(f"no route to {dialog.next_hop()}", 500)

    def new_invite(
        self,
        uri: URI,
        hop: Hop,
        *,
        from_: Address,
        to: Address,
        max_forwards: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """An out-of-dialog INVITE from the B2BUA (fresh Call-ID, branch and From tag)."""
        out = Headers()
        out.add("Via", f"{self.via(hop.transport)};branch={new_branch()}")
        out.add("Max-Forwards", str(max_forwards))
        out.add("From", str(replace(from_, params=from_.params.without("tag")).with_tag(new_tag())))
        out.add("To", str(replace(to, params=to.params.without("tag"))))
        out.add("Call-ID", new_call_id(self.local_address(hop.transport).host))
        out.add("CSeq", "1 INVITE")
        out.add("Contact", self.contact(hop.transport))
        out.add("Allow", allow_for(self.side))
        for name, value in headers:
            out.add(name, value)
        if body:
            out.add("Content-Type", "application/sdp")
        return Request("INVITE", uri, out, body)

    def retry_invite(self, invite: Request, hop: Hop, body: bytes) -> Request:
        """``invite`` sent again after a final refusal, with a new body: the same Call-ID,
        From tag and To, CSeq + 1 and a new branch (the shape RFC 3261 §8.1.3.5 gives a
        retried request), so the callee sees one call attempt, not two calls."""
        retry = invite.copy()
        retry.headers.set("Via", f"{self.via(hop.transport)};branch={new_branch()}")
        retry.headers.set("CSeq", f"{invite.cseq.seq + 1} INVITE")
        retry.body = body
        return retry

    # -- to the owner ------------------------------------------------------------------------

    def handle_new_request(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        return self.owner.on_new_request(self, transaction, request)

    def handle_too_many_hops(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        # A new INVITE goes to call control, whose routing answers it 483 and counts the
        # refusal (too_many_hops); anything else gets the UA's plain 483.
        if request.method == "INVITE" and request.to.tag is None:
            return self.handle_new_request(transaction, request)
        return super().handle_too_many_hops(transaction, request)

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        leg = self.legs.get(dialog.id)
        if leg is None:
            return super().handle_dialog_request(dialog, transaction, request)
        return self.owner.on_dialog_request(leg, transaction, request)

    def handle_ack(self, dialog: Dialog, ack: Request) -> None:
        leg = self.legs.get(dialog.id)
        if leg is not None:
            self.owner.on_ack(leg, ack)

    def handle_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        self.owner.on_cancel(self, transaction)

    def handle_ack_timeout(self, dialog: Dialog) -> None:
        leg = self.legs.get(dialog.id)
        if leg is not None:
            self.owner.on_ack_timeout(leg)
        else:
            super().handle_ack_timeout(dialog)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
