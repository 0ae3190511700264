"""A simulated standards SIP video endpoint (Unified CM DN 3xxx style): registers to a
registrar (Unified CM), answers and places calls (directly or through a proxy) with plain RTP
or SDES-SRTP SDP, early or delayed offer, sends and counts real RTP once a call connects,
handles CANCEL, BYE, re-INVITE (hold, resume, added video) and OPTIONS."""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from certs.pki import LabPKI
from lab.endpoint import sdp as endpoint_sdp
from lab.endpoint.config import EndpointConfig
from lab.endpoint.media import MediaPort
from lab.endpoint.registration import Registration
from lab.endpoint.session import apply_media
from lab.listeners import listen_all, load_pki
from media.ms_dialect import Crypto
from media.sdp import SessionDescription, parse_sdp
from sip.dialog import Dialog, DialogId, DialogState
from sip.errors import ProtocolError
from sip.message import Request, Response, new_tag
from sip.stack import ClientRequest, Hop, SipStack, SipTimeoutError
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import Transport, TransportSettings, source_host_of
from sip.uri import URI
from sip.useragent import UserAgent, response_for

if TYPE_CHECKING:
    from lab.endpoint.handle import EndpointCall

__all__ = [
    "Call",
    "CallFailed",
    "CallState",
    "Endpoint",
    "OutgoingInvite",
    "target_uri",
]

logger = logging.getLogger(__name__)

SDP = "application/sdp"
KEEPALIVE_INTERVAL = 30.0
"""RFC 5626 ping interval on the streams we open (a phone keeps its registrar flow up)."""


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
    keys: list[Crypto | None] = field(default_factory=list)
    """Our SRTP key per m= line (None: plain RTP)."""
    ringing: bool = False
    """A 180/183 came (outgoing) or was sent (incoming)."""
    awaiting_answer: bool = False
    """We offered in a 2xx (delayed offer): the answer is due in the ACK."""
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
        """RTP packets received on all our media ports."""
        return sum(port.packets for port in self.media if port is not None)

    @property
    def rtp_sent(self) -> int:
        """RTP packets sent from all our media ports."""
        return sum(port.sent for port in self.media if port is not None)


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
        self.incoming: asyncio.Queue[Call] = asyncio.Queue()
        """Calls offered to us, in arrival order (see :meth:`next_call`)."""
        self.registration: Registration | None = None
        """The binding at the registrar, when one is configured."""

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def start(cls, config: EndpointConfig) -> Endpoint:
        """Make (or load) the PKI, bind every listener, register when a registrar is set
        (raises :class:`CallFailed` when it refuses), return the running endpoint."""
        pki, tls_client = await load_pki(
            config.certs, config.cert_name if config.client_cert else None
        )
        first_host = config.listen[0].host
        stack = SipStack(
            timers=config.timers,
            # Endpoints are not the gateway: their outbound connections use kernel ports,
            # from the endpoint's own address (the gateway matches zones by it).
            # Registered over TCP/TLS, RFC 5626 CRLF pings keep the flow (and so the
            # binding) alive and show when it is gone (see Registration).
            transport_settings=TransportSettings(
                outbound_ports=None, source_host=source_host_of(first_host),
                keepalive_interval=KEEPALIVE_INTERVAL,
            ),
            tls_client=tls_client,
        )
        endpoint = cls(config, stack, pki)
        try:
            await listen_all(
                stack,
                config.listen,
                pki,
                config.cert_name,
                require_client_cert=config.require_client_cert,
            )
            endpoint.media_host = config.media_host or first_host
            if config.registrar is not None:
                registrar = config.registrar
                endpoint.registration = Registration(
                    endpoint,
                    Hop(
                        registrar.transport,
                        registrar.host,
                        registrar.port,
                        server_hostname=config.registrar_tls_name,
                    ),
                    config.register_expires,
                )
                await endpoint.registration.start()
        except BaseException:
            await endpoint.close()
            raise
        return endpoint

    media_host: str = "127.0.0.1"
    """Address of our RTP sockets and SDP."""

    async def close(self) -> None:
        """Unregister (briefly), close media and sockets (calls are dropped, not hung up)."""
        if self.registration is not None:
            await self.registration.stop()
        for call in list(self.calls.values()):
            self._end(call, "endpoint stopped")
        await self.stack.close()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the lab API (lab.api.Caller) ------------------------------------------------------

    async def call(self, target: str, *, video: bool | None = None) -> EndpointCall:
        """Place a call to ``target`` ("3002@video.example.com" or a SIP URI) through the
        configured proxy (else straight to the URI); returns once the INVITE is sent.
        ``video`` None follows the endpoint's ``video`` setting."""
        from lab.endpoint.handle import EndpointCall

        uri = target_uri(target)
        outgoing = await self.start_invite(uri, video=video)
        return EndpointCall.outgoing(self, outgoing)

    async def next_call(self, timeout: float = 10.0) -> EndpointCall:
        """The next call offered to us, as a :class:`lab.api.CallHandle`."""
        from lab.endpoint.handle import EndpointCall

        async with asyncio.timeout(timeout):
            call = await self.incoming.get()
        return EndpointCall.incoming(self, call)

    # -- placing calls ------------------------------------------------------------------

    def hop_for(self, uri: URI) -> Hop:
        """Where a request for ``uri`` goes: the outbound proxy when one is set, else the
        URI itself, with our configured TLS server name."""
        proxy = self.config.outbound_proxy
        if proxy is not None:
            return Hop(
                proxy.transport,
                proxy.host,
                proxy.port,
                server_hostname=self.config.registrar_tls_name or self.config.tls_server_name,
            )
        return Hop.from_uri(uri, server_hostname=self.config.tls_server_name)

    async def _offer(
        self, call: Call, *, video: bool, version: int = 0, direction: str = "sendrecv"
    ) -> SessionDescription:
        """Open ports (audio, video) as needed and build our offer over them."""
        wanted = 2 if video else 1
        while len(call.media) < wanted:
            kind = "audio" if not call.media else "video"
            call.media.append(await MediaPort.open(self.media_host, kind=kind))
        while len(call.keys) < len(call.media):
            call.keys.append(endpoint_sdp.new_crypto() if self.config.srtp else None)
        ports = [port.port if port is not None else 0 for port in call.media]
        return endpoint_sdp.offer(
            self.media_host,
            ports[0],
            ports[1] if wanted > 1 else None,
            session_id=call.session_id,
            version=version,
            direction=direction,
            keys=call.keys,
            audio=self.config.audio_codecs,
        )

    async def start_invite(
        self,
        uri: URI,
        target: Hop | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        video: bool | None = None,
    ) -> OutgoingInvite:
        """Send an INVITE (with our offer, or none when set to delayed offer); finish with
        :meth:`complete_invite`."""
        hop = target if target is not None else self.hop_for(uri)
        loop = asyncio.get_running_loop()
        call = Call("", True, str(uri), hop.transport, loop.time())
        try:
            offer = await self._offer(call, video=self.config.video if video is None else video)
            body = b""
            # Delayed offer: no body; the offer comes in the 2xx and the ports opened here
            # carry our answer in the ACK.
            if not self.config.delayed_offer:
                call.local_sdp = offer
                body = bytes(offer)
            request = self.new_request(
                "INVITE",
                uri,
                hop,
                body=body,
                content_type=SDP if body else None,
                headers=(("Supported", "replaces"),),
            )
            call.call_id = request.call_id

            def provisional(response: Response) -> None:
                if response.status in (180, 183):
                    call.ringing = True
                if on_provisional is not None:
                    on_provisional(response)

            pending = self.stack.start_request(request, hop, on_provisional=provisional)
        except BaseException:
            _close_media(call)
            raise
        return OutgoingInvite(call, pending, hop)

    async def complete_invite(self, outgoing: OutgoingInvite) -> Call:
        """Wait for the answer; on 2xx make the dialog, ACK (with our answer after a
        delayed offer) and start media; else raise CallFailed."""
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
        ack_body = b""
        if call.local_sdp is None and call.remote_sdp is not None:
            # Delayed offer: the 2xx carried the offer, our answer rides on the ACK.
            call.local_sdp = await self._answer(call, call.remote_sdp)
            ack_body = bytes(call.local_sdp)
        self.send_ack(dialog, outgoing.request.transaction, ack_body, SDP if ack_body else None)
        call.state = CallState.CONFIRMED
        call.confirmed.set()
        self._start_media(call)
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

    async def reinvite(
        self, call: Call, direction: str = "sendonly", *, video: bool | None = None
    ) -> Response:
        """Re-INVITE with our description in ``direction`` (sendonly = hold, sendrecv =
        resume), adding a video stream when ``video`` is True and there is none; ACKs a
        2xx and applies the new media state. Returns the final response."""
        dialog = self._dialog(call)
        if call.local_sdp is None:
            raise CallFailed("the call has no session description to re-offer")
        version = call.sdp_version + 1
        if video and len(call.local_sdp.media) < 2:
            offer = await self._offer(call, video=True, version=version, direction=direction)
        else:
            offer = endpoint_sdp.with_direction(call.local_sdp, direction, version)
        call.sdp_version = version
        request, hop = self.dialog_request(dialog, "INVITE", body=bytes(offer), content_type=SDP)
        pending = self.stack.start_request(request, hop)
        response = await pending.final
        dialog.receive_response(request, response)
        if 200 <= response.status < 300:
            call.local_sdp = offer
            call.remote_sdp = _sdp_of(response) or call.remote_sdp
            self.send_ack(dialog, pending.transaction)
            self._start_media(call)
        return response

    async def hangup(self, call: Call) -> Response | None:
        """BYE the call; returns the BYE's final response (None when it timed out)."""
        dialog = self._dialog(call)
        request, hop = self.dialog_request(dialog, "BYE")
        dialog.terminate()
        for port in call.media:
            if port is not None:
                port.stop_sending()
        try:
            response: Response | None = await self.stack.send_request(request, hop)
        except SipTimeoutError as error:
            logger.warning("[%s] BYE got no answer: %s", call.call_id, error)
            response = None
        self._end(call, "completed" if response is not None else "BYE unanswered")
        return response

    def decline(self, call: Call, status: int = 486) -> None:
        """Refuse a ringing incoming call (486 Busy Here by default)."""
        transaction = call.invite_tx
        if transaction is not None and transaction.state is ServerState.PROCEEDING:
            tag = call.dialog.id.local_tag if call.dialog is not None else None
            self.stack.respond(transaction, status, to_tag=tag)
        self._end(call, f"declined {status}")

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
            return self._reinvite(call, transaction, request)
        if request.method in ("INFO", "UPDATE") and not request.body:
            self.stack.respond(transaction, 200)
            return None
        return super().handle_dialog_request(dialog, transaction, request)

    def handle_ack(self, dialog: Dialog, ack: Request) -> None:
        call = self.calls.get(dialog.id)
        if call is None:
            return
        if ack.body and call.awaiting_answer:
            try:
                call.remote_sdp = _sdp_of(ack)  # delayed offer: the answer comes in the ACK
            except ProtocolError as error:
                logger.info("[%s] ACK with unusable SDP: %s", call.call_id, error.message)
            call.awaiting_answer = False
        if call.state is CallState.ANSWERED:
            call.state = CallState.CONFIRMED
        call.confirmed.set()
        self._start_media(call)

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

    async def _answer(self, call: Call, offer: SessionDescription) -> SessionDescription:
        """Our answer to ``offer`` (opening ports for newly accepted m= lines); raises
        ProtocolError(488) when nothing is acceptable."""
        outcomes = [endpoint_sdp.negotiate(m, offer, srtp=self.config.srtp) for m in offer.media]
        if not any(o.accepted for o in outcomes):
            raise ProtocolError("no acceptable media", 488)
        ports: list[MediaPort | None] = []
        keys: list[Crypto | None] = []
        for index, (offered, outcome) in enumerate(zip(offer.media, outcomes, strict=True)):
            existing = call.media[index] if index < len(call.media) else None
            if outcome.accepted and existing is None:
                existing = await MediaPort.open(self.media_host, kind=offered.kind.lower())
            elif not outcome.accepted and existing is not None:
                existing.close()
                existing = None
            ports.append(existing)
            key = call.keys[index] if index < len(call.keys) else None
            if outcome.crypto is not None and key is None:
                key = endpoint_sdp.new_crypto(outcome.crypto.tag)
            keys.append(key if outcome.crypto is not None else None)
        call.media = ports
        call.keys = keys
        call.sdp_version += 1 if call.local_sdp is not None else 0
        return endpoint_sdp.answer(
            offer,
            outcomes,
            [p.port if p else None for p in ports],
            self.media_host,
            session_id=call.session_id,
            version=call.sdp_version,
            keys=keys,
        )

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
        try:
            if offer is not None:
                call.remote_sdp = offer
                call.local_sdp = await self._answer(call, offer)
            else:
                # Delayed offer: we offer in the 2xx, the answer comes in the ACK.
                call.local_sdp = await self._offer(call, video=self.config.video)
                call.awaiting_answer = True
        except ProtocolError as error:
            _close_media(call)
            self.stack.respond(transaction, error.status_hint, error.message, to_tag=tag)
            self._finish(call, f"{error.status_hint} {error.message}")
            return
        body = bytes(call.local_sdp)
        if transaction.state is not ServerState.PROCEEDING:
            _close_media(call)  # cancelled while we were binding ports
            return
        ringing = response_for(request, 180, to_tag=tag, contact=contact)
        dialog = Dialog.create_uas(request, ringing)
        call.dialog = dialog
        call.invite_tx = transaction
        call.ringing = True
        self.dialogs.add(dialog, source if isinstance(source, Hop) else self.hop_for(request.uri))
        self.calls[dialog.id] = call
        self.incoming.put_nowait(call)
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

    async def _reinvite(self, call: Call, transaction: ServerTransaction, request: Request) -> None:
        try:
            offer = _sdp_of(request)
        except ProtocolError:
            self.stack.respond(transaction, 400, "Unable to decode SDP")
            return
        contact = self.contact(call.transport)
        if offer is None:
            # Re-INVITE without SDP: offer what we have (same version: nothing changed).
            body = bytes(call.local_sdp) if call.local_sdp is not None else b""
            call.awaiting_answer = bool(body)
        else:
            try:
                answer = await self._answer(call, offer)
            except ProtocolError as error:
                self.stack.respond(transaction, error.status_hint, error.message)
                return
            call.remote_sdp = offer
            call.local_sdp = answer
            body = bytes(answer)
            logger.info("[%s] re-INVITE: media now %s", call.call_id, ", ".join(call.directions))
        if transaction.state is not ServerState.PROCEEDING and transaction.state is not (
            ServerState.TRYING
        ):
            return
        ok = response_for(
            request, 200, contact=contact, body=body, content_type=SDP if body else None
        )
        self.stack.send_response(transaction, ok)
        call.confirmed.clear()
        call.state = CallState.ANSWERED
        if offer is not None:
            self._start_media(call)  # both descriptions are known: no need to await the ACK

    # -- internals ------------------------------------------------------------------------

    def _start_media(self, call: Call) -> None:
        """Point every port at the peer and (re)start or stop sending per direction."""
        if call.state is CallState.ENDED or call.local_sdp is None or call.remote_sdp is None:
            return
        apply_media(
            call.media,
            call.local_sdp,
            call.remote_sdp,
            send=self.config.send_media,
            latch=self.config.latch,
            call_id=call.call_id,
        )

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
            "call %s %s %s over %s: %s (setup %s, %d RTP packets in, %d out)",
            call.call_id,
            "to" if call.outgoing else "from",
            call.peer,
            call.transport.value,
            result,
            setup,
            call.rtp_packets,
            call.rtp_sent,
        )


def target_uri(target: str) -> URI:
    """``3002@video.example.com`` or ``sip:...`` as a SIP URI (ValueError when it is neither)."""
    text = target.strip()
    if not text.lower().startswith(("sip:", "sips:")):
        text = f"sip:{text}"
    try:
        return URI.parse(text)
    except ProtocolError as error:
        raise ValueError(f"cannot call {target!r}: {error.message}") from None


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
