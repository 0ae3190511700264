"""Call control: admission of new INVITEs and the relay between the two legs of each call.

A new INVITE (from either side) is checked in this order, each refusal clean (nothing set
up, no port kept): draining (503), routing (482 loop, 483 hops, 404 no rule), the target
must be on the other side of the B2BUA (404), capacity (503 + Retry-After), a usable body
(400/415), media ports (503), encryption policy and codecs (488). Then the outbound leg's
INVITE goes out with a rewritten body and everything that comes back is relayed: 1xx
(ring), the final answer (connect / fail), then ACK, BYE (with Reason), re-INVITE (hold,
resume, voice to video) and REFER from the video side (the Microsoft client as the object
of a transfer), CANCEL (487), and the failures the gateway detects itself: ICE failure
and a 2xx never ACKed (64*T1) clear both legs with a BYE carrying a Reason.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gateway.call import Call, CallEvent, CallState, EndedCall, Outcome
from gateway.config import MICROSOFT_ZONE, MediaEncryption, ZoneConfig
from gateway.im_session import NO_BROKER, is_im_session
from gateway.leg import Leg, LegRole, SideAgent, reason_header
from gateway.metrics import CallResult, RefusalReason
from gateway.routing import RouteDecision, RouteRefusal, alias_of, alias_to_uri
from gateway.sdp_bridge import (
    BadAnswer,
    SdpBridge,
    TooManyMediaLines,
    sdp_of,
    video_security_for,
)
from gateway.status import LegSide
from media.events import MediaEvent, MediaFailed
from media.ms_dialect import EncryptionMismatch
from media.port_pool import PortPoolExhausted
from media.rewrite import NoCommonCodec
from media.rtp_leg import LatchMode, LatchSettings
from media.sdp import SessionDescription
from media.session import MediaSession, MediaSettings, StreamCounters
from sip.errors import ProtocolError, RemoteProtocolError
from sip.headers import Address
from sip.message import Request, Response
from sip.stack import ClientRequest, Hop, SipTimeoutError
from sip.transaction_server import ServerState, ServerTransaction
from sip.uri import Params
from sip.useragent import response_for

if TYPE_CHECKING:
    from gateway.runtime import Gateway

__all__ = [
    "ICE_FAILURE_TEXT",
    "CallController",
    "Refusal",
    "rewrite_ip_from",
]

logger = logging.getLogger(__name__)

ICE_FAILURE_TEXT = "failed to get media connectivity"
"""The Reason text of the BYEs sent when ICE toward Microsoft fails."""
BROKER_METHODS = frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO"})
EXPECTED_ERRORS = (ProtocolError, OSError)
"""What a call's set-up and offer/answer may legitimately raise (bad or refused SDP, no port,
a socket error), each mapped to its SIP status by ``_media_refusal``. Anything else is a
coding error: logged with its traceback and the call failed once with 500
(``_fail_on_bug``), never turned into a quiet 488."""
SIPFRAG = "message/sipfrag;version=2.0"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A new INVITE refused before anything was set up."""

    status: int
    reason: str
    """Reason phrase (says why)."""
    metric: RefusalReason | None = None
    """Counter to bump."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers (Retry-After)."""


def rewrite_ip_from(address: Address, domain: str) -> Address:
    """A From holding only an IP address (``<sip:10.10.2.1>``) becomes routable:
    the IP is kept as the user part, at our SIP domain (``sip:10.10.2.1@video.example.com``).

    Microsoft answers 488 to a From without a user@domain; keeping the IP as the user
    still shows the lab engineer which device called.
    """
    uri = address.uri
    if uri.user is not None or not uri.host:
        return address
    try:
        ipaddress.ip_address(uri.host.strip("[]"))
    except ValueError:
        return address
    new_uri = replace(uri, user=uri.host.strip("[]"), host=domain, port=None, params=Params())
    return replace(address, uri=new_uri)


class CallController:
    """Admits new calls and relays everything between the legs of each one."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.calls: dict[str, Call] = {}
        """Active calls by id (the inbound leg's Call-ID)."""
        self.ended: collections.deque[EndedCall] = collections.deque(maxlen=100)
        """Summaries of the last 100 ended calls, for tests and logs."""
        self._bridges: dict[str, SdpBridge] = {}
        self._counted: set[str] = set()
        self._delayed: set[str] = set()
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.call_ended = asyncio.Event()
        """Set each time a call ends (cleared by whoever waits on it)."""

    # -- LegOwner: the agents' callbacks -------------------------------------------------

    def screen(self, agent: SideAgent, transaction: ServerTransaction, request: Request) -> bool:
        """Trusted hosts on the Microsoft side, then the broker; True to go on."""
        if agent.side is not LegSide.MICROSOFT:
            return True
        source = transaction.source
        host = source.host if isinstance(source, Hop) else str(source)
        broker = self.gateway.broker
        # IM&P nodes send in-dialog requests (IM sessions, NOTIFY) back through the broker.
        from_node = broker is not None and broker.routed_from_node(host, request)
        refusal = None if from_node else self.gateway.trusted.check(host, request.method)
        if refusal is not None:
            if request.method == "INVITE":
                self.gateway.metrics.call_refused(RefusalReason.UNTRUSTED_HOST)
            if refusal.answer:
                agent.stack.respond(transaction, refusal.status, refusal.reason)
            return False
        if broker is not None and broker.handles(request):
            self._spawn(broker.forward(transaction, request, source))
            return False
        if is_im_session(request):  # never a call; without a broker there is no IM&P
            agent.stack.respond(transaction, *NO_BROKER)
            return False
        return True

    def on_new_request(
        self, agent: SideAgent, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        if request.method == "INVITE":
            return self._invite(agent, transaction, request)
        if request.method == "OPTIONS":
            agent.answer_options(transaction)
        elif request.method in BROKER_METHODS and agent.side is LegSide.MICROSOFT:
            agent.stack.respond(transaction, 501, "Not Implemented: the SIP broker is off")
        else:
            agent.stack.respond(transaction, 501)
        return None

    def on_dialog_request(
        self, leg: Leg, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        call = leg.call
        stack = leg.agent.stack
        if call is None or call.ended:
            stack.respond(transaction, 481)
            return None
        method = request.method
        if method == "BYE":
            stack.respond(transaction, 200)
            leg.forget()
            text = f"BYE from the {leg.side.value} side"
            self._clear(call, CallEvent.DISCONNECT, Outcome(CallResult.COMPLETED, text),
                        reason=_reason_of(request) or reason_header(200, text), skip=leg)
            return None
        if method == "INVITE":
            return self._reinvite(call, leg, transaction, request)
        if method == "REFER":
            return self._refer(call, leg, transaction, request)
        if method == "OPTIONS":
            leg.agent.answer_options(transaction)
        elif method in ("INFO", "NOTIFY", "UPDATE") and not request.body:
            stack.respond(transaction, 200)
        else:
            stack.respond(transaction, 501)
        return None

    def on_ack(self, leg: Leg, ack: Request) -> None:
        call = leg.call
        if call is None or call.ended:
            return
        if call.call_id in self._delayed and leg is call.inbound:
            self._delayed.discard(call.call_id)
            self._spawn(self._guarded(call, self._delayed_answer(call, ack),
                                      "applying the ACK's answer"))
            return
        if call.can(CallEvent.CONFIRM):
            call.handle(CallEvent.CONFIRM)

    def on_cancel(self, agent: SideAgent, transaction: ServerTransaction) -> None:
        call = next((c for c in self.calls.values() if c.inbound.server_tx is transaction), None)
        if call is None:
            if transaction.state in (ServerState.TRYING, ServerState.PROCEEDING):
                agent.stack.respond(transaction, 487)
            return
        call.inbound.reject(487)
        outbound = call.outbound
        if outbound is not None and outbound.client is not None:
            outbound.client.cancel()
        self._clear(call, CallEvent.DISCONNECT, Outcome(CallResult.CANCELLED, "cancelled"))

    def on_ack_timeout(self, leg: Leg) -> None:
        call = leg.call
        if call is None or call.ended:
            leg.bye(reason_header(408, "no ACK for the 2xx"))
            return
        call.log().warning("no ACK for our 2xx within 64*T1: clearing the call")
        self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, "no ACK (64*T1)"),
                    reason=reason_header(408, "no ACK received"))

    # -- new INVITE --------------------------------------------------------------------------

    def admit(self, agent: SideAgent, request: Request) -> Refusal | RouteDecision:
        """The admission checks (no side effects but the log)."""
        gateway = self.gateway
        if gateway.draining:
            return Refusal(503, "Service Unavailable: gateway shutting down",
                           RefusalReason.DRAINING, (("Retry-After", "30"),))
        source = gateway.source_zone(agent.side, request)
        result = gateway.router.route_request(
            request, source_zone=source, identity=gateway.identity)
        if isinstance(result, RouteRefusal):
            metric = {404: RefusalReason.NO_ROUTE, 482: RefusalReason.LOOP,
                      483: RefusalReason.TOO_MANY_HOPS}.get(result.status)
            return Refusal(result.status, result.reason, metric)
        target_side = (LegSide.MICROSOFT if result.zone == MICROSOFT_ZONE else LegSide.VIDEO)
        if target_side is agent.side:
            return Refusal(404, f"Not Found: {result.alias} routes back to the "
                                f"{agent.side.value} side", RefusalReason.NO_ROUTE)
        limit = gateway.config.b2bua.max_calls
        if len(self.calls) >= limit:
            return Refusal(503, f"Service Unavailable: call limit of {limit} reached",
                           RefusalReason.MAX_CALLS, (("Retry-After", str(gateway.retry_after)),))
        return result

    async def _invite(self, agent: SideAgent, tx: ServerTransaction, request: Request) -> None:
        gateway = self.gateway
        loop = asyncio.get_running_loop()
        source = tx.source if isinstance(tx.source, Hop) else gateway.hop_of(tx.source)
        inbound = Leg(agent.side, agent, LegRole.UAS, request.call_id, source, request,
                      server_tx=tx)
        decision = self.admit(agent, request)
        if isinstance(decision, Refusal):
            self._refuse(inbound, decision)
            return
        if request.call_id in self.calls:
            self.gateway.metrics.call_refused(RefusalReason.CALL_ID_IN_USE)
            agent.stack.respond(tx, 482, "Loop Detected: Call-ID already in a call")
            return
        try:
            offer = sdp_of(request)
        except ProtocolError as error:
            self._refuse(inbound, _sdp_refusal(error))
            return
        if offer is None and agent.side is LegSide.MICROSOFT:
            self._refuse(inbound, Refusal(488, "Not Acceptable Here: INVITE without SDP",
                                          RefusalReason.NO_SDP))
            return
        video_zone = (gateway.source_zone(agent.side, request) if agent.side is LegSide.VIDEO
                      else decision.zone)
        zone = gateway.config.zone(video_zone) if video_zone is not None else None
        try:
            security = video_security_for(
                zone.media_encryption if zone is not None else MediaEncryption.AUTO,
                offer if agent.side is LegSide.VIDEO else None)
        except ProtocolError as error:
            self._refuse(inbound, Refusal(_status(error, 488), error.message,
                                          RefusalReason.ZONE_ENCRYPTION))
            return
        call = Call(request.call_id, loop.time(), inbound)
        inbound.call = call
        self.calls[call.call_id] = call  # counted against max_calls from here on
        session = MediaSession(call.call_id, gateway.pool, self._media_settings(zone),
                               on_event=lambda event: self._media_event(call, event))
        call.media = session
        bridge = SdpBridge(session, gateway.encryption, security)
        self._bridges[call.call_id] = bridge
        try:
            if agent.side is LegSide.MICROSOFT:
                assert offer is not None
                out_sdp = await bridge.microsoft_offer(offer)
            elif offer is not None:
                out_sdp = await bridge.video_offer(offer)
            else:
                out_sdp = await bridge.delayed_offer()
                self._delayed.add(call.call_id)
        except Exception as error:  # noqa: BLE001 - every failure must refuse cleanly
            if call.ended:
                # CANCELled (or the gateway stopped) during set-up: the session's close
                # made prepare fail; whoever ended the call owns the teardown.
                await self._discard(call)
                return
            refusal = _media_refusal(error)
            if not isinstance(error, EXPECTED_ERRORS):
                call.log().error("media set-up failed: coding error", exc_info=error)
            # Ports back before the refusal leaves: the caller may retry at once.
            await self._discard(call)
            self._refuse(inbound, refusal)
            return
        if call.ended or not inbound.pending:
            await self._discard(call)  # CANCELled while the ports were being bound
            return
        self._counted.add(call.call_id)
        gateway.metrics.call_started()
        best_effort = (agent.side is LegSide.MICROSOFT and zone is not None
                       and zone.media_encryption is MediaEncryption.BEST_EFFORT)
        try:
            await self._place(call, decision, out_sdp, plain_fallback=best_effort)
        except Exception as error:  # noqa: BLE001 - the coding-error guard of the call
            self._fail_on_bug(call, error, "placing the call")

    async def _place(self, call: Call, decision: RouteDecision, sdp: SessionDescription, *,
                     plain_fallback: bool = False) -> None:
        """Send the outbound INVITE (to each of the zone's peers in turn while unreachable)
        and relay its outcome. ``plain_fallback``: a best-effort zone's callee refusing our
        SRTP offer with 488 gets the same INVITE again with plain RTP."""
        gateway = self.gateway
        inbound = call.inbound
        request = inbound.invite
        target = decision.targets[0]
        out_side = LegSide.MICROSOFT if target.zone == MICROSOFT_ZONE else LegSide.VIDEO
        agent = gateway.agents[out_side]
        hops = gateway.zone_hops(target.zone)
        uri = replace(alias_to_uri(target.alias, request.uri), params=Params(), headers=())
        from_ = request.from_
        if out_side is LegSide.MICROSOFT:
            from_ = rewrite_ip_from(from_, gateway.config.system.domain)
        to = Address(uri, request.to.display_name)
        response: Response | None = None
        for index, hop in enumerate(hops):
            invite = agent.new_invite(uri, hop, from_=from_, to=to,
                                      max_forwards=target.max_forwards, body=bytes(sdp))
            outbound = Leg(out_side, agent, LegRole.UAC, invite.call_id, hop, invite, call=call)
            outbound.local_sdp = sdp
            call.outbound = outbound
            try:
                outbound.client = agent.stack.start_request(
                    invite, hop, on_provisional=functools.partial(self._ring, call, outbound))
                response = await outbound.client.response()
            except SipTimeoutError as error:
                outbound.client = None
                if error.transport_error and index < len(hops) - 1 and not call.ended:
                    call.log().warning("%s unreachable, trying the next peer", hop)
                    continue
                if not call.ended:
                    status = 503 if error.transport_error else 408
                    if error.transport_error:
                        text = f"Service Unavailable: {target.zone} unreachable"
                    else:
                        text = f"Request Timeout: no answer from {target.zone}"
                    inbound.reject(status, text)
                    self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, text))
                return
            break
        assert response is not None and call.outbound is not None
        if plain_fallback and response.status == 488 and not call.ended:
            bridge = self._bridges[call.call_id]
            if bridge.offers_srtp_to_video:
                retried = await self._offer_plain(call, call.outbound, bridge, target.zone)
                if retried is None:
                    return
                response = retried
        await self._final(call, call.outbound, response)

    async def _offer_plain(self, call: Call, refused: Leg, bridge: SdpBridge,
                           zone: str) -> Response | None:
        """Best Effort: the video side refused our SRTP offer; the same INVITE (same Call-ID,
        CSeq + 1) with plain RTP. None when the call ended meanwhile or the retry got no
        answer (then the call is cleared here)."""
        sdp = bridge.plain_video_offer()
        invite = refused.agent.retry_invite(refused.invite, refused.hop, bytes(sdp))
        refused.invite = invite
        refused.local_sdp = sdp
        refused.last_status = None
        call.log().info("%s refused SRTP (488): offering plain RTP (best effort)", zone)
        try:
            refused.client = refused.agent.stack.start_request(
                invite, refused.hop, on_provisional=functools.partial(self._ring, call, refused))
            return await refused.client.response()
        except SipTimeoutError as error:
            refused.client = None
            if not call.ended:
                status = 503 if error.transport_error else 408
                text = (f"Service Unavailable: {zone} unreachable" if error.transport_error
                        else f"Request Timeout: no answer from {zone}")
                call.inbound.reject(status, text)
                self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, text))
            return None

    def _ring(self, call: Call, outbound: Leg, response: Response) -> None:
        outbound.last_status = response.status
        if call.ended or call.outbound is not outbound or response.status == 100:
            return
        if call.can(CallEvent.RING):
            call.handle(CallEvent.RING)
        call.inbound.provisional(response.status, response.reason)

    async def _final(self, call: Call, outbound: Leg, response: Response) -> None:
        outbound.last_status = response.status
        inbound = call.inbound
        if not 200 <= response.status < 300:
            outbound.client = None
            if call.ended:
                return
            inbound.reject(response.status, response.reason, _relayed_headers(response))
            result = CallResult.CANCELLED if response.status == 487 else CallResult.REJECTED
            self._clear(call, CallEvent.FAIL,
                        Outcome(result, f"{response.status} {response.reason}"))
            return
        try:
            outbound.accept(response)
        except ProtocolError as error:
            call.log().warning("unusable 2xx: %s", error.message)
            inbound.reject(502, "Bad Gateway: unusable 2xx from the called side")
            self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, error.message))
            return
        if call.ended:
            outbound.bye(reason_header(487, "call cancelled"))
            return
        bridge = self._bridges[call.call_id]
        try:
            answer = sdp_of(response)
            if answer is None:
                raise ProtocolError("the 2xx carries no SDP answer", 488)
            outbound.remote_sdp = answer
            if call.call_id in self._delayed:
                back = bridge.delayed_video_offer(answer)
            elif inbound.side is LegSide.MICROSOFT:
                back = await bridge.video_answer(answer)
            else:
                back = await bridge.microsoft_answer(answer)
        except EXPECTED_ERRORS as error:
            if call.ended:
                return  # cancelled meanwhile: whoever ended the call cleared it
            refusal = _callee_refusal(error)
            call.log().warning("answer cannot be relayed: %s", refusal.reason)
            outbound.bye(reason_header(refusal.status, refusal.reason))
            inbound.reject(refusal.status, refusal.reason)
            self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, refusal.reason))
            return
        if call.ended or not inbound.pending:
            outbound.bye(reason_header(487, "call cancelled"))
            return
        inbound.answer(back)
        call.handle(CallEvent.CONNECT)
        call.connected_at = asyncio.get_running_loop().time()
        self.gateway.metrics.call_connected(call.connected_at - call.started_at)
        call.log().debug("connected %s -> %s", inbound.remote_text, outbound.remote_text)

    async def _delayed_answer(self, call: Call, ack: Request) -> None:
        try:
            answer = sdp_of(ack)
            if answer is None:
                raise ProtocolError("the ACK carries no SDP answer to our offer", 488)
            call.inbound.remote_sdp = answer
            await self._bridges[call.call_id].delayed_video_answer(answer)
        except EXPECTED_ERRORS as error:
            refusal = _media_refusal(error)
            self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, refusal.reason),
                        reason=reason_header(refusal.status, refusal.reason))
            return
        if call.can(CallEvent.CONFIRM):
            call.handle(CallEvent.CONFIRM)

    # -- in-call requests -----------------------------------------------------------------

    async def _reinvite(
        self, call: Call, leg: Leg, tx: ServerTransaction, request: Request
    ) -> None:
        try:
            await self._relay_reinvite(call, leg, tx, request)
        except Exception as error:  # noqa: BLE001 - the coding-error guard of the call
            self._fail_on_bug(call, error, "relaying a re-INVITE", tx=(leg, tx))

    async def _relay_reinvite(
        self, call: Call, leg: Leg, tx: ServerTransaction, request: Request
    ) -> None:
        stack = leg.agent.stack
        other = call.leg_for(leg)
        if call.state is not CallState.CONNECTED or other is None or call.call_id in self._busy:
            stack.respond(tx, 491, "Request Pending")
            return
        try:
            offer = sdp_of(request)
        except ProtocolError as error:
            stack.respond(tx, _status(error, 400), error.message)
            return
        if offer is None:
            # No new offer: answer with what we last sent (the answer comes in the ACK and
            # changes nothing we relay).
            self._answer_in_dialog(leg, tx, request, leg.local_sdp)
            return
        self._busy.add(call.call_id)
        bridge = self._bridges[call.call_id]
        try:
            try:
                if leg.side is LegSide.MICROSOFT:
                    out_offer = await bridge.microsoft_offer(offer)
                else:
                    out_offer = await bridge.video_offer(offer)
            except EXPECTED_ERRORS as error:
                bridge.pending = None
                refusal = _media_refusal(error)
                stack.respond(tx, refusal.status, refusal.reason)
                return
            response = await self._in_dialog_invite(other, out_offer)
            if response is None or not 200 <= response.status < 300:
                bridge.pending = None
                status = 500 if response is None else response.status
                reason = "no answer from the other side" if response is None else response.reason
                stack.respond(tx, status, reason)
                return
            try:
                answer = sdp_of(response)
                if answer is None:
                    raise ProtocolError("re-INVITE 2xx without SDP", 488)
                other.remote_sdp = answer
                if leg.side is LegSide.MICROSOFT:
                    back = await bridge.video_answer(answer)
                else:
                    back = await bridge.microsoft_answer(answer)
            except EXPECTED_ERRORS as error:
                bridge.pending = None
                refusal = _media_refusal(error)
                stack.respond(tx, refusal.status, refusal.reason)
                return
            leg.remote_sdp = offer
            self._answer_in_dialog(leg, tx, request, back)
            call.log().info("re-INVITE from the %s side: %s", leg.side.value,
                            ", ".join(m.direction for m in back.media))
        finally:
            self._busy.discard(call.call_id)

    async def _in_dialog_invite(self, leg: Leg, sdp: SessionDescription) -> Response | None:
        """Send a re-INVITE with ``sdp`` on ``leg``; ACK a 2xx. None on timeout."""
        assert leg.dialog is not None
        request, hop = leg.agent.dialog_request(
            leg.dialog, "INVITE", body=bytes(sdp), content_type="application/sdp")
        pending = leg.agent.stack.start_request(request, hop)
        try:
            response = await pending.response()
        except SipTimeoutError:
            return None
        leg.dialog.receive_response(request, response)
        if 200 <= response.status < 300:
            leg.agent.send_ack(leg.dialog, pending.transaction)
            leg.local_sdp = sdp
        return response

    def _answer_in_dialog(self, leg: Leg, tx: ServerTransaction, request: Request,
                          sdp: SessionDescription | None) -> None:
        body = bytes(sdp) if sdp is not None else b""
        response = response_for(request, 200, contact=leg.agent.contact(leg.hop.transport),
                                body=body, content_type="application/sdp" if body else None)
        leg.agent.stack.send_response(tx, response)
        if sdp is not None:
            leg.local_sdp = sdp

    async def _refer(self, call: Call, leg: Leg, tx: ServerTransaction, request: Request) -> None:
        """REFER from the video side: we carry out the transfer of the Microsoft client."""
        stack = leg.agent.stack
        ms_leg = call.leg_for(leg)
        if leg.side is not LegSide.VIDEO or ms_leg is None:
            stack.respond(tx, 403, "Forbidden: only the video side may transfer")
            return
        if call.state is not CallState.CONNECTED or call.call_id in self._busy:
            stack.respond(tx, 491, "Request Pending")
            return
        try:
            refer_to = Address.parse(request.headers.get("Refer-To") or "")
        except ProtocolError:
            stack.respond(tx, 400, "Bad Request: missing or malformed Refer-To")
            return
        decision = self.gateway.router.route(alias_of(refer_to.uri))
        if isinstance(decision, RouteRefusal) or decision.zone == MICROSOFT_ZONE:
            stack.respond(tx, 403, f"Forbidden: cannot transfer to {alias_of(refer_to.uri)}")
            return
        self._busy.add(call.call_id)
        stack.respond(tx, 202, "Accepted")
        try:
            await self._transfer(call, leg, ms_leg, refer_to, decision)
        except Exception as error:  # noqa: BLE001 - the coding-error guard of the call
            self._fail_on_bug(call, error, "transferring the call")
        finally:
            self._busy.discard(call.call_id)

    async def _transfer(self, call: Call, old: Leg, ms_leg: Leg, refer_to: Address,
                        decision: RouteDecision) -> None:
        self._notify(old, "SIP/2.0 100 Trying", active=True)
        bridge = self._bridges[call.call_id]
        target = decision.targets[0]
        agent = old.agent
        hop = self.gateway.zone_hops(target.zone)[0]
        uri = replace(alias_to_uri(target.alias, refer_to.uri), params=Params(), headers=())
        try:
            offer = bridge.video_offer_for_transfer()
        except ProtocolError as error:
            self._notify(old, f"SIP/2.0 500 {error.message}", active=False)
            return
        ms_party = ms_leg.invite.from_ if ms_leg.role is LegRole.UAS else ms_leg.invite.to
        invite = agent.new_invite(uri, hop, from_=ms_party, to=Address(uri),
                                  max_forwards=target.max_forwards, body=bytes(offer))
        new = Leg(LegSide.VIDEO, agent, LegRole.UAC, invite.call_id, hop, invite, call=call)
        new.local_sdp = offer
        new.client = agent.stack.start_request(invite, hop)
        try:
            response = await new.client.response()
        except SipTimeoutError as error:
            bridge.pending = None
            self._notify(old, "SIP/2.0 408 Request Timeout", active=False)
            call.log().warning("transfer target did not answer: %s", error)
            return
        if not 200 <= response.status < 300:
            bridge.pending = None
            self._notify(old, f"SIP/2.0 {response.status} {response.reason}", active=False)
            return
        new.accept(response)
        try:
            answer = sdp_of(response)
            if answer is None:
                raise ProtocolError("transfer target answered without SDP", 488)
            new.remote_sdp = answer
            ms_offer = bridge.reoffer_to_microsoft(answer)
            ms_response = await self._in_dialog_invite(ms_leg, ms_offer)
            if ms_response is None or not 200 <= ms_response.status < 300:
                raise ProtocolError("the Microsoft side refused the re-INVITE", 488)
            ms_answer = sdp_of(ms_response)
            if ms_answer is None:
                raise ProtocolError("Microsoft re-INVITE answer without SDP", 488)
            ms_leg.remote_sdp = ms_answer
            await bridge.microsoft_reanswer(ms_answer)
        except EXPECTED_ERRORS as error:
            bridge.pending = None
            refusal = _media_refusal(error)
            new.bye(reason_header(refusal.status, refusal.reason))
            self._notify(old, f"SIP/2.0 {refusal.status} {refusal.reason}", active=False)
            return
        if call.inbound is old:
            call.inbound = new
        else:
            call.outbound = new
        old.call = None
        self._notify(old, "SIP/2.0 200 OK", active=False)
        old.bye(reason_header(200, "call transferred"))
        call.log().info("transferred the %s side to %s", ms_leg.side.value, uri)

    def _notify(self, leg: Leg, sipfrag: str, *, active: bool) -> None:
        state = "active;expires=60" if active else "terminated;reason=noresource"
        try:
            leg.request("NOTIFY", body=f"{sipfrag}\r\n".encode(), content_type=SIPFRAG,
                        headers=(("Event", "refer"), ("Subscription-State", state)))
        except ProtocolError as error:
            logger.warning("[%s] cannot NOTIFY: %s", leg.call_id, error.message)

    # -- coding errors --------------------------------------------------------------------

    async def _guarded(self, call: Call, work: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await work
        except Exception as error:  # noqa: BLE001 - the coding-error guard of the call
            self._fail_on_bug(call, error, what)

    def _fail_on_bug(self, call: Call, error: Exception, what: str, *,
                     tx: tuple[Leg, ServerTransaction] | None = None) -> None:
        """A coding error (anything but ``EXPECTED_ERRORS``) while ``what``: logged with its
        traceback; the pending request (the caller's INVITE, or ``tx``) gets one 500 and
        the call is cleared (BYE with Reason, CANCEL, media closed, ports released)."""
        call.log().error("%s failed: coding error", what, exc_info=error)
        text = f"Server Internal Error: gateway fault while {what}"
        if tx is not None:
            leg, transaction = tx
            if transaction.state in (ServerState.TRYING, ServerState.PROCEEDING):
                leg.agent.stack.respond(transaction, 500, text)
        if call.ended:
            return
        call.inbound.reject(500, text)
        outbound = call.outbound
        if outbound is not None and outbound.client is not None:
            outbound.client.cancel()
            outbound.client = None
        bridge = self._bridges.get(call.call_id)
        if bridge is not None:
            bridge.pending = None
        self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, text),
                    reason=reason_header(500, text))

    # -- media --------------------------------------------------------------------------

    def _media_event(self, call: Call, event: MediaEvent) -> None:
        if isinstance(event, MediaFailed) and not call.ended:
            call.log().warning("%s stream %d: %s", event.kind, event.stream, event.reason)
            if not call.inbound.confirmed and call.inbound.pending:
                call.inbound.reject(488, f"Not Acceptable Here: {ICE_FAILURE_TEXT}")
            self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, ICE_FAILURE_TEXT),
                        reason=reason_header(503, ICE_FAILURE_TEXT))

    # -- teardown -------------------------------------------------------------------------

    def clear(self, call: Call, text: str, cause: int = 503) -> list[ClientRequest]:
        """Clear ``call`` from the gateway's side (drain): BYE or refuse each leg; returns
        the BYEs (and CANCELled INVITEs) still on their way."""
        call.inbound.reject(cause, f"Service Unavailable: {text}")
        pending = []
        outbound = call.outbound
        if outbound is not None and outbound.client is not None:
            pending.append(outbound.client)
            outbound.client.cancel()
        pending += self._clear(call, CallEvent.FAIL, Outcome(CallResult.FAILED, text),
                               reason=reason_header(cause, text))
        return pending

    def _clear(self, call: Call, event: CallEvent, outcome: Outcome, *,
               reason: tuple[str, str] | None = None,
               skip: Leg | None = None) -> list[ClientRequest]:
        """End the call: BYE the legs still up (not ``skip``), close media, count it."""
        if not call.end(event, outcome):
            return []
        byes = []
        for leg in (call.inbound, call.outbound):
            if leg is None or leg is skip:
                continue
            if leg.confirmed:
                bye = leg.bye(reason)
                if bye is not None:
                    byes.append(bye)
            else:
                leg.forget()
        call.log().info("call ended: %s; %s", outcome.reason, _call_summary(call))
        self._spawn(self._discard(call))
        return byes

    async def _discard(self, call: Call) -> None:
        """Forget the call and give its media back (also for refused calls). One teardown
        per call: a second caller (the set-up path after a CANCEL) waits for the first."""
        if call.torn_down is not None:
            await asyncio.shield(call.torn_down)
            return
        done = call.torn_down = asyncio.get_running_loop().create_future()
        try:
            await self._teardown(call)
        finally:
            done.set_result(None)

    async def _teardown(self, call: Call) -> None:
        if not call.ended:
            call.end(CallEvent.FAIL, Outcome(CallResult.FAILED, "refused"))
        self._bridges.pop(call.call_id, None)
        self._delayed.discard(call.call_id)
        if call.call_id in self._counted:
            self._counted.discard(call.call_id)
            assert call.outcome is not None
            self.gateway.metrics.call_ended(call.outcome.result)
        counters: tuple[StreamCounters, ...] = ()
        if call.media is not None:
            try:
                await call.media.close()
            except Exception:
                call.log().exception("closing media failed")
            counters = call.media.counters()
        # Gone from the active calls only once its ports are back in the pool.
        self.calls.pop(call.call_id, None)
        self.gateway.metrics.set_media_ports_in_use(self.gateway.pool.ports_in_use)
        assert call.outcome is not None
        self.ended.append(EndedCall(call.call_id, call.outcome, call.started_at,
                                    call.connected_at, asyncio.get_running_loop().time(),
                                    counters))
        self.call_ended.set()

    def _media_settings(self, zone: ZoneConfig | None) -> MediaSettings:
        """The gateway's media settings with the latching of the call's video zone."""
        b2bua = self.gateway.config.b2bua
        mode = b2bua.media_latching
        if zone is not None and zone.media_latching is not None:
            mode = zone.media_latching
        latch = LatchSettings(LatchMode(mode.value), b2bua.media_relatch_after)
        settings = self.gateway.media_settings
        return settings if settings.latch == latch else replace(settings, latch=latch)

    def _refuse(self, leg: Leg, refusal: Refusal) -> None:
        logger.info("refused INVITE %s from %s: %d %s", leg.call_id, leg.remote_text,
                    refusal.status, refusal.reason)
        if refusal.metric is not None:
            self.gateway.metrics.call_refused(refusal.metric)
        leg.reject(refusal.status, refusal.reason, refusal.headers)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("call task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Drop every call (no signalling) and wait for the background work."""
        for call in list(self.calls.values()):
            if call.end(CallEvent.FAIL, Outcome(CallResult.FAILED, "gateway stopped")):
                await self._discard(call)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)


def _call_summary(call: Call) -> str:
    """The rest of the one INFO line a call logs: who, and how long it was up."""
    outbound = call.outbound
    route = f"{call.inbound.remote_text} -> {outbound.remote_text if outbound else '-'}"
    if call.connected_at is None:
        return f"{route}, never connected"
    up = asyncio.get_running_loop().time() - call.connected_at
    return f"{route}, connected after {call.connected_at - call.started_at:.3f} s, up {up:.1f} s"


def _status(error: ProtocolError, default: int) -> int:
    return error.status_hint if 400 <= error.status_hint <= 699 else default


def _sdp_refusal(error: ProtocolError) -> Refusal:
    """The refusal for an INVITE body that cannot be used."""
    if isinstance(error, TooManyMediaLines):
        return Refusal(488, error.message, RefusalReason.TOO_MANY_MEDIA_LINES)
    return Refusal(_status(error, 400), error.message, RefusalReason.BAD_SDP)


def _media_refusal(error: BaseException) -> Refusal:
    """The refusal for a failure while setting up or rewriting media."""
    if isinstance(error, TooManyMediaLines):
        return _sdp_refusal(error)
    if isinstance(error, PortPoolExhausted):
        return Refusal(503, f"Service Unavailable: {error.message}",
                       RefusalReason.PORT_POOL_EXHAUSTED)
    if isinstance(error, EncryptionMismatch):
        return Refusal(488, EncryptionMismatch.reason_phrase, RefusalReason.ENCRYPTION_MISMATCH)
    if isinstance(error, NoCommonCodec):
        return Refusal(488, f"Not Acceptable Here: {error.message}",
                       RefusalReason.NO_COMMON_CODEC)
    if isinstance(error, ProtocolError):
        return Refusal(_status(error, 500), error.message, RefusalReason.MEDIA_SETUP_FAILED)
    if isinstance(error, OSError):
        return Refusal(503, f"Service Unavailable: media ports: {error.strerror or error}",
                       RefusalReason.MEDIA_SETUP_FAILED)
    return Refusal(500, "Server Internal Error: media set-up failed",
                   RefusalReason.MEDIA_SETUP_FAILED)


def _callee_refusal(error: BaseException) -> Refusal:
    """The caller's answer when the callee's 2xx cannot be relayed: the callee's fault
    (an answer breaking RFC 3264, an SDP we cannot parse) is a 502 naming it, never the
    400 the caller would read as its own; codecs and encryption keep their 488."""
    if isinstance(error, BadAnswer):
        return Refusal(502, error.message, RefusalReason.MEDIA_SETUP_FAILED)
    refusal = _media_refusal(error)
    if isinstance(error, RemoteProtocolError) and refusal.status < 500 and refusal.status != 488:
        return Refusal(502, f"Bad Gateway: the called side's answer is unusable: "
                            f"{error.message}", RefusalReason.MEDIA_SETUP_FAILED)
    return refusal


def _reason_of(request: Request) -> tuple[str, str] | None:
    value = request.headers.get("Reason")
    return ("Reason", value) if value else None


def _relayed_headers(response: Response) -> tuple[tuple[str, str], ...]:
    """Headers of a final error worth passing on (Retry-After, Warning, Reason)."""
    keep = []
    for name in ("Retry-After", "Warning", "Reason"):
        value = response.headers.get(name)
        if value:
            keep.append((name, value))
    return tuple(keep)
