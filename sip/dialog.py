"""Dialogs (RFC 3261 §12): identity, route set, sequence numbers, target refresh, and the
requests sent inside a dialog (BYE, re-INVITE, INFO, REFER, ACK for 2xx...).

Pure data and rules, no timers: the §13.3.1.4 2xx retransmission and its 64*T1 give-up run
in the INVITE server transaction's Accepted state (``sip.transaction_server``), which reports
``AckTimeout`` so the TU can send the BYE; a retransmitted 2xx at the UAC is answered with
the ACK remembered by ``TransactionLayer.send_ack``.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.headers import Address
from sip.message import Headers, Request, Response, new_branch
from sip.transaction import transition
from sip.uri import URI

__all__ = ["DIALOG_TABLE", "Dialog", "DialogId", "DialogInput", "DialogState"]

logger = logging.getLogger(__name__)

# Requests that refresh the remote target (§12.2: INVITE; RFC 3311 UPDATE; RFC 6665 the
# subscription ones) and that must carry our Contact.
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(enum.Enum):
    """§12: a dialog is early (from a 1xx with a To tag), confirmed (2xx) or over."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogInput(enum.Enum):
    """What moves a dialog between states."""

    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "non-2xx final to the INVITE"
    TERMINATE = "BYE / give-up"


_D = DialogState
_In = DialogInput

DIALOG_TABLE: Mapping[DialogState, Mapping[DialogInput, DialogState]] = {
    _D.EARLY: {
        _In.PROVISIONAL: _D.EARLY,
        _In.SUCCESS: _D.CONFIRMED,
        _In.FAILURE: _D.TERMINATED,
        _In.TERMINATE: _D.TERMINATED,
    },
    _D.CONFIRMED: {
        _In.SUCCESS: _D.CONFIRMED,  # 2xx retransmissions, re-INVITE answers
        _In.TERMINATE: _D.TERMINATED,
    },
    _D.TERMINATED: {},
}


@dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID, local tag and remote tag (from this side's point of view)."""

    call_id: str
    """The Call-ID."""
    local_tag: str
    """Our tag (From of our requests)."""
    remote_tag: str
    """The peer's tag (To of our requests)."""

    @classmethod
    def of_received_request(cls, request: Request) -> DialogId:
        """The id a request received in a dialog belongs to (UAS view: local = To tag)."""
        return cls(request.call_id, request.to.tag or "", request.from_.tag or "")

    @classmethod
    def of_received_response(cls, response: Response) -> DialogId:
        """The id a response to our request belongs to (UAC view: local = From tag)."""
        return cls(response.call_id, response.from_.tag or "", response.to.tag or "")


def _initial_seq() -> int:
    # §8.1.1.5: any value below 2**31; random, so a restarted element does not reuse one.
    return secrets.randbelow(2**16) + 1


@dataclass(slots=True, eq=False)
class Dialog:
    """One dialog's state (mutable: CSeq numbers, target and state move on)."""

    id: DialogId
    """Call-ID and tags."""
    is_uac: bool
    """True when we sent the request that created it."""
    local_address: Address
    """Our From for requests in the dialog (with our tag)."""
    remote_address: Address
    """The peer's address, To of our requests (with its tag)."""
    remote_target: URI
    """Where requests go: the peer's Contact (§12.1), updated by target refreshes."""
    route_set: tuple[Address, ...]
    """Record-Route of the creating message; reversed for the UAC (§12.1.2)."""
    local_seq: int | None
    """CSeq of our last request (None until we send one as UAS)."""
    remote_seq: int | None
    """CSeq of the peer's last request (None for a UAC until it sends one)."""
    secure: bool = False
    """True when the creating request's Request-URI was sips (§12.1)."""
    local_contact: str | None = None
    """Our Contact, sent in target refresh requests (INVITE, UPDATE, REFER...)."""
    state: DialogState = DialogState.EARLY
    """Early, confirmed or terminated."""
    invite_seq: int | None = None
    """CSeq number of the last INVITE we sent: the ACK for its 2xx reuses it (§13.2.2.4)."""

    # -- creation -----------------------------------------------------------------------

    @classmethod
    def create_uac(
        cls, request: Request, response: Response, *, local_contact: str | None = None
    ) -> Dialog:
        """The UAC's dialog from its request and a 1xx (with To tag) or 2xx (§12.1.2)."""
        if response.to.tag is None or not 101 <= response.status < 300:
            raise RemoteProtocolError("a dialog needs a 101-299 response with a To tag", 400)
        if request.from_.tag is None:
            raise LocalProtocolError("our request has no From tag", 500)
        return cls._of_uac(
            response, request.from_, request.uri, request.cseq.seq,
            secure=request.uri.scheme.lower() == "sips",
            local_contact=local_contact or request.headers.get("Contact"),
            invite_seq=request.cseq.seq if request.method == "INVITE" else None,
        )

    @classmethod
    def create_fork(cls, sibling: Dialog, response: Response) -> Dialog:
        """Another dialog of the INVITE that made ``sibling``: a 2xx from another fork, with
        its own To tag (§13.2.2.4). Our side is as in ``sibling``; the peer's side, its
        target and route set come from the response (§12.1.2)."""
        if response.to.tag is None or not 200 <= response.status < 300:
            raise RemoteProtocolError("a fork's dialog needs a 2xx with a To tag", 400)
        if sibling.invite_seq is None:
            raise LocalProtocolError("the sibling dialog was not made by our INVITE", 500)
        return cls._of_uac(
            response, sibling.local_address, sibling.remote_target, sibling.invite_seq,
            secure=sibling.secure, local_contact=sibling.local_contact,
            invite_seq=sibling.invite_seq,
        )

    @classmethod
    def _of_uac(
        cls, response: Response, local_address: Address, target_fallback: URI, local_seq: int,
        *, secure: bool, local_contact: str | None, invite_seq: int | None,
    ) -> Dialog:
        """A UAC's dialog: the peer's side, target and route set from ``response``."""
        dialog = cls(
            id=DialogId.of_received_response(response),
            is_uac=True,
            local_address=local_address,
            remote_address=response.to,
            remote_target=_contact_uri(response, target_fallback),
            route_set=tuple(reversed(response.record_route)),
            local_seq=local_seq,
            remote_seq=None,
            secure=secure,
            local_contact=local_contact,
            invite_seq=invite_seq,
        )
        dialog.state = transition(DIALOG_TABLE, dialog.state, _status_input(response.status))
        return dialog

    @classmethod
    def create_uas(
        cls, request: Request, response: Response, *, local_contact: str | None = None
    ) -> Dialog:
        """The UAS's dialog from the request and the 1xx/2xx (with To tag) it sends (§12.1.1)."""
        if response.to.tag is None or not 101 <= response.status < 300:
            raise LocalProtocolError("a dialog needs a 101-299 response with a To tag", 500)
        if request.from_.tag is None:
            # RFC 2543 peers may omit it; §12.1.1 says the remote tag is then null.
            logger.debug("request %s has no From tag", request.call_id)
        dialog = cls(
            id=DialogId(request.call_id, response.to.tag, request.from_.tag or ""),
            is_uac=False,
            local_address=response.to,
            remote_address=request.from_,
            remote_target=_contact_uri(request, None),
            route_set=tuple(request.record_route),
            local_seq=None,
            remote_seq=request.cseq.seq,
            secure=request.uri.scheme.lower() == "sips",
            local_contact=local_contact or response.headers.get("Contact"),
        )
        dialog.state = transition(DIALOG_TABLE, dialog.state, _status_input(response.status))
        return dialog

    # -- in-dialog traffic --------------------------------------------------------------

    def receive_request(self, request: Request) -> None:
        """Check and account a request from the peer in this dialog (§12.2.2).

        Raises ``RemoteProtocolError`` 481 when it is not of this dialog, 500 when its CSeq
        is lower than the last one. A target refresh request replaces the remote target.
        """
        if DialogId.of_received_request(request) != self.id:
            raise RemoteProtocolError("request does not belong to this dialog", 481)
        if self.state is DialogState.TERMINATED and request.method != "ACK":
            raise RemoteProtocolError("dialog has terminated", 481)
        if request.method in ("ACK", "CANCEL"):
            return  # they carry the INVITE's number and are no new request in sequence
        seq = request.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            # the phrase does not start with "CSeq": simple parsers (SIPp) took it for the
            # CSeq header when looking for that name at a line start
            raise RemoteProtocolError(
                f"Out of order: sequence number {seq} is below the dialog's {self.remote_seq}",
                500,
            )
        self.remote_seq = seq
        if request.method in TARGET_REFRESH and request.contact:
            self.remote_target = request.contact[0].uri

    def receive_response(self, request: Request, response: Response) -> None:
        """Account a response to a request we sent in this dialog (UAC side of §12.2.1.2).

        A 2xx to a target refresh request replaces the remote target; for an early dialog a
        2xx to the INVITE confirms it and recomputes the route set (§13.2.2.4); a non-2xx
        final answer to the creating INVITE ends an early dialog.
        """
        if response.status < 200:
            if self.state is DialogState.EARLY:
                self._apply(_In.PROVISIONAL)
                self._refresh_target(response)
            return
        if 200 <= response.status < 300:
            if request.method == "INVITE" and self.state is DialogState.EARLY:
                if self.is_uac:
                    self.route_set = tuple(reversed(response.record_route))
                self._apply(_In.SUCCESS)
            if request.method in TARGET_REFRESH:
                self._refresh_target(response)
        elif request.method == "INVITE" and self.state is DialogState.EARLY:
            self._apply(_In.FAILURE)

    def confirm(self) -> None:
        """The UAS sent a 2xx: the early dialog is confirmed."""
        self._apply(_In.SUCCESS)

    def terminate(self) -> None:
        """BYE sent or received, or the ACK never came: the dialog is over."""
        if self.state is not DialogState.TERMINATED:
            self._apply(_In.TERMINATE)

    def create_request(
        self,
        method: str,
        *,
        via: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A new request in the dialog (§12.2.1.1): BYE, re-INVITE, INFO, REFER, UPDATE...

        Takes the next local CSeq (not for ACK/CANCEL), routes by the route set (loose or
        strict), puts our Contact on target refresh requests. ``via`` is the sent-by part
        (``"SIP/2.0/TLS gw.example.com:65072;rport"``); a fresh branch is added to it. With
        ``via=None`` the caller (transport) adds the Via.
        """
        method = method.upper()
        if method == "ACK":
            return self.create_ack(via=via, body=body, content_type=content_type)
        if method == "CANCEL":
            raise LocalProtocolError("CANCEL is built from the request (make_cancel)", 500)
        if self.state is DialogState.TERMINATED and method != "BYE":
            raise LocalProtocolError(f"cannot send {method} in a terminated dialog", 500)
        self.local_seq = (self.local_seq if self.local_seq is not None else _initial_seq()) + 1
        if method == "INVITE":
            self.invite_seq = self.local_seq
        return self._build(method, self.local_seq, via, body, content_type, headers)

    def create_ack(
        self,
        invite_seq: int | None = None,
        *,
        via: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to our INVITE (§13.2.2.4): the INVITE's CSeq number, new branch."""
        seq = invite_seq if invite_seq is not None else self.invite_seq
        if seq is None:
            raise LocalProtocolError("no INVITE was sent in this dialog to ACK", 500)
        return self._build("ACK", seq, via, body, content_type, ())

    def next_hop(self) -> URI:
        """Where a request in this dialog is sent: the first route, else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def log(self) -> logging.LoggerAdapter[Any]:
        """A logger prefixing messages with this dialog's Call-ID."""
        return _CallIdAdapter(logger, {"call_id": self.id.call_id})

    # -- internals ----------------------------------------------------------------------

    def _apply(self, event: DialogInput) -> None:
        self.state = transition(DIALOG_TABLE, self.state, event)

    def _refresh_target(self, message: Request | Response) -> None:
        if message.contact:
            self.remote_target = message.contact[0].uri

    def _build(
        self,
        method: str,
        seq: int,
        via: str | None,
        body: bytes,
        content_type: str | None,
        extra: Iterable[tuple[str, str]],
    ) -> Request:
        uri, routes = self._request_uri_and_routes()
        headers = Headers()
        if via is not None:
            headers.add("Via", f"{via};branch={new_branch()}")
        headers.add("Max-Forwards", "70")
        for route in routes:
            headers.add("Route", route)
        headers.add("From", str(self.local_address))
        headers.add("To", str(self.remote_address))
        headers.add("Call-ID", self.id.call_id)
        headers.add("CSeq", f"{seq} {method}")
        if self.local_contact is not None and method in TARGET_REFRESH:
            headers.add("Contact", self.local_contact)
        for name, value in extra:
            headers.add(name, value)
        if body:
            if content_type is None:
                raise LocalProtocolError("a request body needs a content type", 500)
            headers.add("Content-Type", content_type)
        return Request(method, uri, headers, body)

    def _request_uri_and_routes(self) -> tuple[URI, list[str]]:
        """§12.2.1.1: loose routing keeps the target as Request-URI; strict routing puts
        the first route there and the target last in Route."""
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        if "lr" in first.uri.params:
            return self.remote_target, [str(route) for route in self.route_set]
        # Strict router: its URI (without headers, §12.2.1.1) becomes the Request-URI.
        uri = replace(first.uri, headers=())
        routes = [str(route) for route in self.route_set[1:]]
        routes.append(f"<{self.remote_target}>")
        return uri, routes


class _CallIdAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('call_id')}] {msg}", kwargs


def _contact_uri(message: Request | Response, fallback: URI | None) -> URI:
    contacts = message.contact
    if contacts:
        return contacts[0].uri
    if fallback is not None:
        # A 2xx without Contact breaks §13.3.1.4, but the Request-URI still reaches the peer.
        logger.debug("no Contact in %s: using the Request-URI as remote target", message)
        return fallback
    raise RemoteProtocolError("a dialog-creating request needs a Contact", 400)


def _status_input(status: int) -> DialogInput:
    return _In.PROVISIONAL if status < 200 else _In.SUCCESS
