"""A simulated standards SIP video endpoint (Unified CM DN 3xxx style): answers and places
calls with plain RTP SDP, handles CANCEL, BYE, re-INVITE hold and OPTIONS."""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from certs.pki import LabPKI, init_pki
from lab.endpoint import sdp as endpoint_sdp
from lab.endpoint.config import EndpointConfig
from lab.endpoint.media import MediaPort
from media.sdp import SessionDescription, parse_sdp
from sip.dialog import Dialog, DialogId, DialogState
from sip.errors import ProtocolError
from sip.message import Request, Response, new_tag
from sip.stack import ClientRequest, Hop, SipStack, SipTimeoutError
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI
from sip.useragent import UserAgent, response_for

__all__ = ["Call", "CallFailed", "CallState", "Endpoint", "OutgoingInvite"]

logger = logging.getLogger(__name__)

SDP = "application/sdp"


class CallState(enum.Enum):
    """Where a call is."""

    RINGING = "ringing"
    ANSWERED = "answered"  # 2xx sent or received, ACK pending
    CONFIRMED = "confirmed"
    ENDED = "ended"


class CallFailed(Exception):
    """An outgoing call was not answered with 2xx (or the INVITE timed out)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The final status, or None for a timeout / transport failure."""


@dataclass(slots=True, eq=False)
class Call:
    """One call of the endpoint."""

    call_id: str
    """Call-ID."""
    outgoing: bool
    """True when we placed it."""
    peer: str
    """The other side's address (From or Request-URI)."""
    transport: Transport
    """Transport of the signalling."""
    started: float
    """Loop time of the INVITE."""
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    """Our SDP o= session id."""
    sdp_version: int = 0
    """Our SDP o= version (bumped with each new description)."""
    state: CallState = CallState.RINGING
    """Progress."""
    dialog: Dialog | None = None
    """The dialog, once there is a To tag."""
    invite_tx: ServerTransaction | None = None
    """Incoming: the INVITE server transaction while unanswered."""
    media: list[MediaPort | None] = field(default_factory=list)
    """Our RTP port per m= line (None where refused)."""
    local_sdp: SessionDescription | None = None
    """Our current description."""
    remote_sdp: SessionDescription | None = None
    """The peer's current description."""
    answered_at: float | None = None
    """Loop time of the 2xx."""
    result: str = ""
    """How it ended ("completed", "cancelled", "487 Request Terminated" ...)."""
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the ACK for the 2xx is sent or received."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the call is over."""

    @property
    def setup_ms(self) -> float | None:
        """INVITE to 2xx, in milliseconds."""
        return None if self.answered_at is None else (self.answered_at - self.started) * 1000

    @property
    def directions(self) -> tuple[str, ...]:
        """Our current direction per m= line (hold state)."""
        if self.local_sdp is None:
            return ()
        return tuple(m.direction for m in self.local_sdp.media)

    @property
    def rtp_packets(self) -> int:
        """RTP datagrams received on all our media ports."""
        return sum(port.packets for port in self.media if port is not None)


@dataclass(slots=True, eq=False)
class OutgoingInvite:
    """An INVITE we sent and have no final answer to yet."""

    call: Call
    """The call being set up."""
    request: ClientRequest
    """The client request (``request.cancel()`` CANCELs it)."""
    target: Hop
    """Where it went."""


class Endpoint(UserAgent):
    """A SIP endpoint on its own :class:`SipStack`."""

    def __init__(self, config: EndpointConfig, stack: SipStack, pki: LabPKI | None) -> None:
        super().__init__(stack, user=config.user, domain=config.domain)
        self.config = config
        self.pki = pki
        self.calls: dict[DialogId, Call] = {}
        """Calls with a dialog, by dialog id."""
        self.finished: list[Call] = []
        """Calls that ended (most recent last)."""

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def start(cls, config: EndpointConfig) -> Endpoint:
        """Make (or load) the PKI, bind every listener, return the running endpoint."""
        pki: LabPKI | None = None
        tls_client = None
        if config.certs is not None:
            made, _ = await asyncio.to_thread(init_pki, config.certs)
            tls_client = made.client_context(config.cert_name if config.client_cert else None)
            pki = made
        first_host = config.listen[0].host
        stack = SipStack(
            timers=config.timers,
            # Endpoints are not the gateway: their outbound connections use kernel ports.
            transport_settings=TransportSettings(outbound_ports=None),
            tls_client=tls_client,
        )
        endpoint = cls(config, stack, pki)
        try:
            for spec in config.listen:
                context = None
                if spec.transport is Transport.TLS:
                    assert pki is not None  # checked by EndpointConfig
                    context = pki.server_context(
                        config.cert_name, require_client_cert=config.require_client_cert
                    )
                await stack.listen(spec.transport, spec.host, spec.port, ssl=context)
        except BaseException:
            await stack.close()
            raise
        endpoint.media_host = config.media_host or first_host
        return endpoint

    media_host: str = "127.0.0.1"
    """Address of our RTP sockets and SDP."""

    async def close(self) -> None:
        """Close media and sockets (calls are dropped, not hung up)."""
        for call in list(self.calls.values()):
            self._end(call, "endpoint stopped")
        await self.stack.close()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- placing calls ------------------------------------------------------------------

    def hop_for(self, uri: URI) -> Hop:
        """Where a request for ``uri`` goes, with our configured TLS server name."""
        return Hop.from_uri(uri, server_hostname=self.config.tls_server_name)

    async def start_invite(
        self,
        uri: URI,
        target: Hop | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> OutgoingInvite:
        """Send an INVITE with our offer; finish with :meth:`complete_invite`."""
        hop = target if target is not None else self.hop_for(uri)
        loop = asyncio.get_running_loop()
        call = Call("", True, str(uri), hop.transport, loop.time())
        call.media = [await MediaPort.open(self.media_host)]
        if self.config.video:
            call.media.append(await MediaPort.open(self.media_host))
        ports = [port.port for port in call.media if port is not None]
        call.local_sdp = endpoint_sdp.offer(
            self.media_host,
            ports[0],
            ports[1] if len(ports) > 1 else None,
            session_id=call.session_id,
        )
        request = self.new_request(
            "INVITE",
            uri,
            hop,
            body=bytes(call.local_sdp),
            content_type=SDP,
            headers=(("Supported", "replaces"),),
        )
        call.call_id = request.call_id
        try:
            pending = self.stack.start_request(request, hop, on_provisional=on_provisional)
        except BaseException:
            _close_media(call)
            raise
        return OutgoingInvite(call, pending, hop)

    async def complete_invite(self, outgoing: OutgoingInvite) -> Call:
        """Wait for the answer; on 2xx make the dialog and ACK; else raise CallFailed."""
        call = outgoing.call
        try:
            response = await outgoing.request.final
        except SipTimeoutError as error:
            self._finish(call, f"no answer: {error}")
            raise CallFailed(f"INVITE to {call.peer}: {error}") from error
        if not 200 <= response.status < 300:
            self._finish(call, f"{response.status} {response.reason}")
            raise CallFailed(
                f"INVITE to {call.peer} answered {response.status} {response.reason}",
                response.status,
            )
        call.answered_at = asyncio.get_running_loop().time()
        try:
            dialog = Dialog.create_uac(outgoing.request.request, response)
            call.remote_sdp = _sdp_of(response)
        except ProtocolError as error:
            self._finish(call, f"bad 2xx: {error.message}")
            raise CallFailed(f"unusable 2xx from {call.peer}: {error.message}") from error
        call.dialog = dialog
        self.dialogs.add(dialog, outgoing.target)
        self.calls[dialog.id] = call
        self.send_ack(dialog, outgoing.request.transaction)
        call.state = CallState.CONFIRMED
        call.confirmed.set()
        return call

    async def invite(
        self,
        uri: URI,
        target: Hop | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Call:
        """Place a call and return it once ACKed; CallFailed when not answered."""
        outgoing = await self.start_invite(uri, target, on_provisional=on_provisional)
        return await self.complete_invite(outgoing)

    async def reinvite(self, call: Call, direction: str = "sendonly") -> Response:
        """Re-INVITE with our description in ``direction`` (sendonly = hold, sendrecv =
        resume); ACKs a 2xx. Returns the final response."""
        dialog = self._dialog(call)
        if call.local_sdp is None:
            raise CallFailed("the call has no session description to re-offer")
        call.sdp_version += 1
        offer = endpoint_sdp.with_direction(call.local_sdp, direction, call.sdp_version)
        request, hop = self.dialog_request(dialog, "INVITE", body=bytes(offer), content_type=SDP)
        pending = self.stack.start_request(request, hop)
        response = await pending.final
        dialog.receive_response(request, response)
        if 200 <= response.status < 300:
            call.local_sdp = offer
            call.remote_sdp = _sdp_of(response) or call.remote_sdp
            self.send_ack(dialog, pending.transaction)
        return response

    async def hangup(self, call: Call) -> Response | None:
        """BYE the call; returns the BYE's final response (None when it timed out)."""
        dialog = self._dialog(call)
        request, hop = self.dialog_request(dialog, "BYE")
        dialog.terminate()
        try:
            response: Response | None = await self.stack.send_request(request, hop)
        except SipTimeoutError as error:
            logger.warning("[%s] BYE got no answer: %s", call.call_id, error)
            response = None
        self._end(call, "completed" if response is not None else "BYE unanswered")
        return response

    async def place_call(
        self, uri: URI, target: Hop | None = None, *, duration: float = 0.0
    ) -> Call:
        """INVITE, ACK, hold the call ``duration`` seconds, BYE (the ``--call`` mode)."""
        call = await self.invite(uri, target)
        if duration > 0:
            try:
                await asyncio.wait_for(call.ended.wait(), duration)
            except TimeoutError:
                pass
        if call.state is not CallState.ENDED:
            response = await self.hangup(call)
            if response is None or not 200 <= response.status < 300:
                raise CallFailed(
                    f"BYE to {call.peer} answered "
                    + ("nothing" if response is None else f"{response.status} {response.reason}"),
                    None if response is None else response.status,
                )
        return call

    # -- answering ----------------------------------------------------------------------

    def handle_new_request(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        if request.method == "INVITE":
            return self._incoming_invite(transaction, request)
        return super().handle_new_request(transaction, request)

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        call = self.calls.get(dialog.id)
        if request.method == "BYE":
            self.stack.respond(transaction, 200)
            dialog.terminate()
            if call is not None:
                self._end(call, "completed (BYE from peer)")
            else:
                self.dialogs.remove(dialog.id)
            return None
        if request.method == "INVITE" and call is not None:
            self._reinvite(call, dialog, transaction, request)
            return None
        if request.method in ("INFO", "UPDATE") and not request.body:
            self.stack.respond(transaction, 200)
            return None
        return super().handle_dialog_request(dialog, transaction, request)

    def handle_ack(self, dialog: Dialog, ack: Request) -> None:
        call = self.calls.get(dialog.id)
        if call is None:
            return
        if ack.body and call.remote_sdp is None:
            call.remote_sdp = _sdp_of(ack)  # delayed offer: the answer comes in the ACK
        if call.state is CallState.ANSWERED:
            call.state = CallState.CONFIRMED
        call.confirmed.set()

    def handle_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        call = next((c for c in self.calls.values() if c.invite_tx is transaction), None)
        tag = call.dialog.id.local_tag if call is not None and call.dialog else None
        if transaction.state is ServerState.PROCEEDING:
            self.stack.respond(transaction, 487, to_tag=tag)
        if call is not None:
            self._end(call, "cancelled")

    def handle_ack_timeout(self, dialog: Dialog) -> None:
        call = self.calls.get(dialog.id)
        super().handle_ack_timeout(dialog)
        if call is not None:
            self._end(call, "no ACK for the 2xx")

    async def _incoming_invite(self, transaction: ServerTransaction, request: Request) -> None:
        loop = asyncio.get_running_loop()
        source = transaction.source
        transport = source.transport if isinstance(source, Hop) else Transport.UDP
        call = Call(request.call_id, False, str(request.from_.uri), transport, loop.time())
        try:
            offer = _sdp_of(request)
        except ProtocolError as error:
            # What a standard endpoint says to a multipart (Microsoft) or broken body.
            logger.info("[%s] refused: %s", call.call_id, error.message)
            self.stack.respond(transaction, 400, "Unable to decode SDP")
            return
        tag = new_tag()
        contact = self.contact(transport)
        body = b""
        if offer is not None:
            outcomes = [endpoint_sdp.negotiate(m, offer) for m in offer.media]
            if not any(o.accepted for o in outcomes):
                self.stack.respond(transaction, 488, to_tag=tag)
                self._finish(call, "488 no acceptable media")
                return
            call.media = [
                await MediaPort.open(self.media_host) if o.accepted else None for o in outcomes
            ]
            call.remote_sdp = offer
            call.local_sdp = endpoint_sdp.answer(
                offer,
                outcomes,
                [p.port if p else None for p in call.media],
                self.media_host,
                session_id=call.session_id,
                version=call.sdp_version,
            )
        else:
            # Delayed offer: we offer in the 2xx, the answer comes in the ACK.
            audio = await MediaPort.open(self.media_host)
            call.media = [audio]
            call.local_sdp = endpoint_sdp.offer(
                self.media_host, audio.port, None, session_id=call.session_id
            )
        body = bytes(call.local_sdp)
        if transaction.state is not ServerState.PROCEEDING:
            _close_media(call)  # cancelled while we were binding ports
            return
        ringing = response_for(request, 180, to_tag=tag, contact=contact)
        dialog = Dialog.create_uas(request, ringing)
        call.dialog = dialog
        call.invite_tx = transaction
        self.dialogs.add(dialog, source if isinstance(source, Hop) else self.hop_for(request.uri))
        self.calls[dialog.id] = call
        self.stack.send_response(transaction, ringing)
        if not self.config.auto_answer:
            return
        if self.config.ring_time > 0:
            await asyncio.sleep(self.config.ring_time)  # the configured ring, not a test wait
        if call.state is not CallState.RINGING or transaction.state is not ServerState.PROCEEDING:
            return
        ok = response_for(request, 200, to_tag=tag, contact=contact, body=body, content_type=SDP)
        ok.headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE")
        self.stack.send_response(transaction, ok)
        dialog.confirm()
        call.invite_tx = None
        call.state = CallState.ANSWERED
        call.answered_at = loop.time()

    def _reinvite(
        self, call: Call, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> None:
        try:
            offer = _sdp_of(request)
        except ProtocolError:
            self.stack.respond(transaction, 400, "Unable to decode SDP")
            return
        contact = self.contact(call.transport)
        if offer is None:
            # Re-INVITE without SDP: offer what we have (same version: nothing changed).
            body = bytes(call.local_sdp) if call.local_sdp is not None else b""
        else:
            outcomes = [endpoint_sdp.negotiate(m, offer) for m in offer.media]
            ports: list[int | None] = []
            for index, outcome in enumerate(outcomes):
                existing = call.media[index] if index < len(call.media) else None
                ports.append(existing.port if outcome.accepted and existing else None)
            call.sdp_version += 1
            call.remote_sdp = offer
            call.local_sdp = endpoint_sdp.answer(
                offer,
                outcomes,
                ports,
                self.media_host,
                session_id=call.session_id,
                version=call.sdp_version,
            )
            body = bytes(call.local_sdp)
            logger.info("[%s] re-INVITE: media now %s", call.call_id, ", ".join(call.directions))
        ok = response_for(
            request, 200, contact=contact, body=body, content_type=SDP if body else None
        )
        self.stack.send_response(transaction, ok)
        call.confirmed.clear()
        call.state = CallState.ANSWERED

    # -- internals ------------------------------------------------------------------------

    def _dialog(self, call: Call) -> Dialog:
        if call.dialog is None or call.dialog.state is DialogState.TERMINATED:
            raise CallFailed(f"call {call.call_id} has no live dialog")
        return call.dialog

    def _end(self, call: Call, result: str) -> None:
        if call.dialog is not None:
            call.dialog.terminate()
            self.dialogs.remove(call.dialog.id)
            self.calls.pop(call.dialog.id, None)
        self._finish(call, result)

    def _finish(self, call: Call, result: str) -> None:
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        call.result = result
        _close_media(call)
        self.finished.append(call)
        del self.finished[:-100]  # a long-running endpoint keeps only recent history
        call.ended.set()
        setup = f"{call.setup_ms:.0f} ms" if call.setup_ms is not None else "-"
        logger.info(
            "call %s %s %s over %s: %s (setup %s, %d RTP packets)",
            call.call_id,
            "to" if call.outgoing else "from",
            call.peer,
            call.transport.value,
            result,
            setup,
            call.rtp_packets,
        )


def _sdp_of(message: Request | Response) -> SessionDescription | None:
    """The SDP body, None when there is none; ProtocolError (400) when unusable."""
    if not message.body:
        return None
    content_type = (message.content_type or "").split(";", 1)[0].strip().lower()
    if content_type != SDP:
        raise ProtocolError(f"body of type {content_type or 'unknown'} is not SDP", 400)
    return parse_sdp(message.body)


def _close_media(call: Call) -> None:
    for port in call.media:
        if port is not None:
            port.close()
