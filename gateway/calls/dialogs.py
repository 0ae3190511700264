"""The SIP side of the legs: each SIP action of a leg machine carried out on its dialog, and
each SIP message of a dialog turned into the machine's input.

The part of the asyncio adapter (``gateway.calls.adapter``) that speaks SIP: our INVITE
(tried again after a 422 with the larger interval, RFC 4028 §7.3), the responses to it
(a reliable 1xx PRACKed, RFC 3262 §4; a 2xx's session timer read), re-INVITEs and UPDATEs
both ways, session refreshes, and the answers to the peer's re-INVITE or UPDATE.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.call import ActiveCall
from gateway.calls.actions import Role
from gateway.calls.events import (
    CancelReinvite,
    Forget,
    PrackTimeout,
    RefreshAnswered,
    RefreshIn,
    RefuseReinvite,
    ReinviteIn,
    ResponseIn,
    SendAck,
    SendAnswer,
    SendBye,
    SendCancel,
    SendInvite,
    SendPrack,
    SendProvisional,
    SendRefresh,
    SendReinvite,
    SendReject,
    SendUpdateAnswer,
    SendUpdateReject,
    SipAction,
    SipInput,
    Timeout,
    TimerFired,
    UpdateIn,
)
from gateway.calls.refusals import relayed_headers, status_of
from gateway.calls.reliable_uas import ReliableUas, wants_reliable
from gateway.leg import Leg, LegRole, SideAgent
from gateway.sdp_bridge import sdp_of
from gateway.session_timer import (
    Reject,
    TimerPolicy,
    interval_after_422,
    refresh_headers,
    request_headers,
    session_expires_of,
    uac_negotiate,
    uas_negotiate,
)
from gateway.views import LegSide
from media.sdp import SessionDescription
from sip.dialog import Dialog
from sip.errors import ParseError, ProtocolError
from sip.extensions import TAG_100REL, TAG_TIMER, allows, requires
from sip.headers import Address
from sip.message import Request, Response
from sip.reliable import ProvisionalAcceptor, ProvisionalKind, RAck
from sip.stack import ClientRequest, Hop, SipTimeoutError
from sip.transaction_server import ServerState, ServerTransaction
from sip.uri import URI
from sip.useragent import response_for

__all__ = ["CallRun", "DialogActions", "Route", "invite_headers"]

logger = logging.getLogger(__name__)

Header = tuple[str, str]

MEDIA_CONTROL = "application/media_control+xml"
"""RFC 5168 (picture fast update), the INFO body both Lync and Unified CM send mid-call
to ask the far encoder for a key frame: the one INFO body relayed to the other leg."""


def invite_headers(side: LegSide, policy: TimerPolicy) -> tuple[Header, ...]:
    """What our INVITE says it supports, and the session timer it asks for: toward the
    video side reliable provisionals (we PRACK) and session timers; toward Microsoft early
    media (Lync's ms-early-media: a 183 with SDP is applied and relayed) and timers, with
    no Session-Expires of ours (the FE keeps its own habits)."""
    if side is LegSide.VIDEO:
        return (("Supported", f"{TAG_100REL}, {TAG_TIMER}"), *request_headers(policy))
    return (("Supported", f"ms-early-media, {TAG_TIMER}"),)


def _same_session(offer: SessionDescription | None, current: SessionDescription | None) -> bool:
    """RFC 3264 §8: an SDP with the o= version of the current one changes nothing."""
    if offer is None or current is None:
        return False
    return (offer.origin.session_id, offer.origin.session_version) == (
        current.origin.session_id, current.origin.session_version)


@dataclass(frozen=True, slots=True)
class Route:
    """Where the callee's INVITE goes (one hop per peer of the target zone)."""

    agent: SideAgent
    hops: list[Hop]
    uri: URI
    from_: Address
    to: Address
    max_forwards: int


@dataclass(slots=True, eq=False)
class CallRun:
    """What the adapter keeps per call beside the call itself."""

    route: Route
    reinvites: dict[Role, tuple[ServerTransaction, Request, SessionDescription | None]] = \
        field(default_factory=dict)
    incoming: tuple[ServerTransaction, Request, SessionDescription | None] | None = None
    """The re-INVITE being handled now: answered at once (491, no offer) or kept in
    ``reinvites`` until the other side answers."""

    reoffers: dict[Role, ClientRequest] = field(default_factory=dict)
    """Our re-INVITE out on each leg (to CANCEL when its offerer withdraws)."""

    answer_headers: dict[Role, tuple[Header, ...]] = field(default_factory=dict)
    """Session-timer headers for the 2xx to the re-INVITE or UPDATE pending on a leg."""

    reliable: ReliableUas[SendAnswer] | None = None
    """The caller required 100rel: our 1xx to it are reliable (RFC 3262 §3)."""
    prack_timer: asyncio.TimerHandle | None = None

    def take(self, role: Role
             ) -> tuple[ServerTransaction, Request, SessionDescription | None] | None:
        """The re-INVITE an answer is for: the one waiting on ``role``, else the one in."""
        pending = self.reinvites.pop(role, None)
        if pending is None:
            pending, self.incoming = self.incoming, None
        return pending


class DialogActions:
    """Carries out leg machines' SIP actions (mixed into the call adapter)."""

    _runs: dict[str, CallRun]
    _policy: TimerPolicy
    _timers: dict[tuple[str, Role], tuple[float, asyncio.TimerHandle]]

    def _input(self, active: ActiveCall, role: Role, event: SipInput, what: str) -> None:
        raise NotImplementedError

    async def _ainput(self, active: ActiveCall, role: Role, event: SipInput, what: str
                      ) -> None:
        raise NotImplementedError

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        raise NotImplementedError

    def _later(self, coroutine: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    # -- SIP actions -------------------------------------------------------------------------

    def _sip(self, active: ActiveCall, role: Role, leg: Leg, action: SipAction
             ) -> ClientRequest | None:
        reliable = self._reliable(active, role, leg)
        if isinstance(action, SendProvisional):
            if reliable is not None and action.status > 100:
                self._send_reliable(active, leg, reliable, action)
            else:
                leg.provisional(action.status, action.reason or None, action.sdp)
        elif isinstance(action, SendAnswer):
            if reliable is not None and reliable.hold_answer(action):
                logger.debug("[%s] 2xx held for the PRACK", active.call_id)
                return None
            leg.answer(action.sdp, headers=leg.timer_headers)
            if reliable is not None:
                self._reliable_done(active, reliable)
        elif isinstance(action, SendReject):
            leg.reject(action.status, action.reason, action.headers)
            if reliable is not None:
                self._reliable_done(active, reliable)
                if leg.dialog is not None and not leg.confirmed:
                    leg.forget()  # the early dialog of our reliable 1xx
        elif isinstance(action, SendAck):
            leg.send_ack()
        elif isinstance(action, SendCancel):
            client = leg.client
            if client is not None:
                client.cancel()
                return client
        elif isinstance(action, CancelReinvite):
            reoffer = self._runs[active.call_id].reoffers.get(role)
            if reoffer is not None and not reoffer.final.done():
                reoffer.cancel()  # deferred by the layer until a provisional came (§9.1)
        elif isinstance(action, SendBye):
            return leg.bye(action.reason)
        elif isinstance(action, Forget):
            leg.forget()
        elif isinstance(action, SendPrack):
            self._send_prack(active, leg)
        elif isinstance(action, SendRefresh):
            self._send_refresh(active, role, leg)
        elif isinstance(action, SendReinvite):
            self._send_reinvite(active, role, leg, action.sdp)
        elif isinstance(action, SendUpdateAnswer):
            pending = self._runs[active.call_id].take(role)
            if pending is not None:
                tx, request, offer = pending
                if offer is not None:
                    leg.remote_sdp = offer
                headers = self._runs[active.call_id].answer_headers.pop(role, ())
                leg.answer_in_dialog(tx, request, action.sdp or leg.local_sdp, headers)
        elif isinstance(action, SendUpdateReject):
            pending = self._runs[active.call_id].take(role)
            if pending is not None and pending[0].state in (ServerState.TRYING,
                                                            ServerState.PROCEEDING):
                leg.agent.stack.respond(pending[0], action.status, action.reason)
        elif isinstance(action, RefuseReinvite):
            run = self._runs[active.call_id]
            incoming, run.incoming = run.incoming, None
            if incoming is not None:
                extra: tuple[Header, ...] = ()
                if action.retry_after:  # §14.2: "randomly chosen ... between 0 and 10 seconds"
                    extra = (("Retry-After", str(random.randint(0, 10))),)
                leg.agent.stack.respond(incoming[0], action.status, action.reason,
                                        headers=extra)
        return None

    def _send_invite(self, active: ActiveCall, action: SendInvite) -> None:
        route = self._runs[active.call_id].route
        body = bytes(action.sdp) if action.sdp is not None else b""
        if action.retry and active.outbound is not None:
            leg = active.outbound
            leg.invite = leg.agent.retry_invite(leg.invite, leg.hop, body)
            leg.last_status = None
        else:
            hop = route.hops[active.core.hop_index]
            invite = route.agent.new_invite(
                route.uri, hop, from_=route.from_, to=route.to,
                max_forwards=route.max_forwards, body=body,
                headers=invite_headers(route.agent.side, self._policy))
            leg = Leg(route.agent.side, route.agent, LegRole.UAC, invite.call_id, hop, invite,
                      call=active)
            active.outbound = leg
        leg.local_sdp = action.sdp
        client = leg.agent.stack.start_request(
            leg.invite, leg.hop, on_provisional=functools.partial(self._provisional, active, leg))
        leg.client = client
        self._later(self._final(active, leg, client))

    def _provisional(self, active: ActiveCall, leg: Leg, response: Response) -> None:
        if active.outbound is not leg:
            return
        leg.last_status = response.status
        reliable = False
        if response.status > 100 and "Require" in response.headers \
                and requires(response, TAG_100REL):
            if leg.acceptor is None or leg.acceptor.invite is not leg.invite:
                leg.acceptor = ProvisionalAcceptor(leg.invite)
            kind = leg.acceptor.classify(response)
            if kind is not ProvisionalKind.NEW:
                logger.debug("[%s] %s reliable %d dropped", active.call_id, kind.value,
                             response.status)
                return  # RFC 3262 §4: neither PRACKed nor processed again
            reliable = True
            leg.last_reliable = response
        try:
            sdp = sdp_of(response)
        except ProtocolError:
            sdp = None
        self._input(active, Role.UAC, ResponseIn(response.status, response.reason, sdp,
                                                 reliable=reliable),
                    "relaying a provisional answer")

    async def _final(self, active: ActiveCall, leg: Leg, client: ClientRequest) -> None:
        try:
            response = await client.response()
        except SipTimeoutError as error:
            if leg.client is client:
                leg.client = None
                self._input(active, Role.UAC, Timeout(error.transport_error),
                            "handling a timeout")
            return
        if leg.client is not client or active.outbound is not leg:
            return
        leg.client = None
        leg.last_status = response.status
        if response.status == 422 and self._retry_after_422(active, leg, response):
            return
        if not 200 <= response.status < 300:
            if leg.dialog is not None:
                leg.forget()  # the early dialog of a reliable 1xx
            self._input(active, Role.UAC, ResponseIn(response.status, response.reason,
                                                     headers=relayed_headers(response)),
                        "relaying the final answer")
            return
        try:
            leg.confirm_uac(response, client.transaction)
        except ProtocolError as error:
            logger.warning("[%s] unusable 2xx: %s", active.call_id, error.message)
            self._input(active, Role.UAC,
                        ResponseIn(502, "Bad Gateway: unusable 2xx from the called side"),
                        "relaying the final answer")
            return
        try:
            sdp = sdp_of(response)
        except ProtocolError as error:
            logger.warning("[%s] unusable SDP in the 2xx: %s", active.call_id, error.message)
            sdp = None
        leg.remote_sdp = sdp
        session = None
        if "Session-Expires" in response.headers or "x" in response.headers:
            leg.peer_allows_update = allows(response, "UPDATE") is True
            try:
                session = uac_negotiate(response)
            except ProtocolError as error:
                logger.warning("[%s] session timer of the 2xx ignored: %s", active.call_id,
                               error.message)
        await self._ainput(active, Role.UAC, ResponseIn(response.status, response.reason, sdp,
                                                        session=session),
                           "relaying the answer")

    def _retry_after_422(self, active: ActiveCall, leg: Leg, response: Response) -> bool:
        """RFC 4028 §7.3: a 422 names the shortest interval the callee takes; our INVITE
        goes again (CSeq + 1) with it. False when it cannot be retried (relay the 422)."""
        sent = session_expires_of(leg.invite)
        if sent is None or active.core.ended:
            return False
        try:
            interval = interval_after_422(response, sent.interval)
        except ProtocolError as error:
            logger.warning("[%s] 422 not retried: %s", active.call_id, error.message)
            return False
        retry = leg.agent.retry_invite(leg.invite, leg.hop, leg.invite.body)
        for name, value in request_headers(self._policy, interval=interval):
            retry.headers.set(name, value)
        leg.invite = retry
        logger.info("[%s] 422: calling again with Session-Expires %d", active.call_id,
                    interval)
        client = leg.agent.stack.start_request(
            retry, leg.hop, on_provisional=functools.partial(self._provisional, active, leg))
        leg.client = client
        self._later(self._final(active, leg, client))
        return True

    def _send_prack(self, active: ActiveCall, leg: Leg) -> None:
        """PRACK the reliable 1xx just reported, inside its early dialog (RFC 3262 §4)."""
        response = leg.last_reliable
        if response is None:
            raise ProtocolError("PRACK without a reliable provisional", 500)
        if leg.dialog is None:
            leg.dialog = Dialog.create_uac(leg.invite, response)
            leg.agent.adopt(leg)
        request, hop = leg.agent.dialog_request(
            leg.dialog, "PRACK", headers=(("RAck", str(RAck.of(response))),))
        leg.agent.stack.start_request(request, hop)

    # -- reliable provisionals to the caller (RFC 3262 §3) ---------------------------------

    def _reliable(self, active: ActiveCall, role: Role, leg: Leg
                  ) -> ReliableUas[SendAnswer] | None:
        """The 100rel state of the caller's leg when it required 100rel (video side only:
        the Microsoft side still refuses ``Require: 100rel`` with 420)."""
        if role is not Role.UAS or leg.side is not LegSide.VIDEO:
            return None
        run = self._runs.get(active.call_id)
        if run is None:
            return None
        if run.reliable is None and leg.pending and wants_reliable(leg.invite):
            run.reliable = ReliableUas(leg.invite, t1=leg.agent.stack.layer.settings.t1)
        return run.reliable

    def _send_reliable(self, active: ActiveCall, leg: Leg,
                       reliable: ReliableUas[SendAnswer], action: SendProvisional) -> None:
        if not leg.pending or leg.server_tx is None:
            return
        body = bytes(action.sdp) if action.sdp is not None else b""
        response = response_for(leg.invite, action.status, to_tag=leg.local_tag, body=body,
                                content_type="application/sdp" if body else None)
        if action.reason:
            response.reason = action.reason
        response.headers.add("Contact", leg.agent.contact(leg.hop.transport))
        if action.sdp is not None:
            leg.local_sdp = action.sdp
        loop = asyncio.get_running_loop()
        self._send_1xx(leg, reliable.provisional(response, loop.time()))
        self._arm_prack(active, leg, reliable)

    def _send_1xx(self, leg: Leg, responses: list[Response]) -> None:
        for response in responses:
            if leg.dialog is None:
                # The reliable 1xx makes an early dialog, in which the PRACK comes (§4).
                leg.dialog = Dialog.create_uas(
                    leg.invite, response, local_contact=leg.agent.contact(leg.hop.transport))
                leg.agent.adopt(leg)
            if leg.server_tx is not None and leg.pending:
                leg.agent.stack.send_response(leg.server_tx, response)

    def _arm_prack(self, active: ActiveCall, leg: Leg,
                   reliable: ReliableUas[SendAnswer]) -> None:
        run = self._runs.get(active.call_id)
        if run is None:
            return
        if run.prack_timer is not None:
            run.prack_timer.cancel()
            run.prack_timer = None
        deadline = reliable.deadline()
        if deadline is not None and not active.core.ended:
            run.prack_timer = asyncio.get_running_loop().call_at(
                deadline, self._prack_fired, active, leg, reliable)

    def _prack_fired(self, active: ActiveCall, leg: Leg,
                     reliable: ReliableUas[SendAnswer]) -> None:
        run = self._runs.get(active.call_id)
        if run is not None:
            run.prack_timer = None
        if active.core.ended or not leg.pending:
            return
        self._send_1xx(leg, reliable.fire(asyncio.get_running_loop().time()))
        if reliable.timed_out:
            logger.warning("[%s] no PRACK for our reliable 1xx", active.call_id)
            self._input(active, Role.UAS, PrackTimeout(), "waiting for a PRACK")
            return
        self._arm_prack(active, leg, reliable)

    def _reliable_done(self, active: ActiveCall, reliable: ReliableUas[SendAnswer]) -> None:
        reliable.final_sent()
        run = self._runs.get(active.call_id)
        if run is not None and run.prack_timer is not None:
            run.prack_timer.cancel()
            run.prack_timer = None

    def _prack(self, active: ActiveCall, role: Role, leg: Leg, tx: ServerTransaction,
               request: Request) -> None:
        """A PRACK from the caller: 200 when it acknowledges our reliable 1xx (the next
        queued 1xx, or the held 2xx, then goes), 481 for any other RAck."""
        run = self._runs.get(active.call_id)
        reliable = run.reliable if run is not None and role is Role.UAS else None
        if reliable is None:
            leg.agent.stack.respond(tx, 481, "Call/Transaction Does Not Exist: no reliable "
                                    "provisional awaits a PRACK")
            return
        try:
            status, responses, held = reliable.prack(request, asyncio.get_running_loop().time())
        except ParseError as error:
            leg.agent.stack.respond(tx, 400, f"Bad Request: {error.message}")
            return
        leg.agent.stack.respond(tx, status)
        if status != 200:
            return
        self._send_1xx(leg, responses)
        if held is not None and leg.pending:
            leg.answer(held.sdp, headers=leg.timer_headers)
            self._reliable_done(active, reliable)
            return
        self._arm_prack(active, leg, reliable)

    # -- session timers (RFC 4028) ---------------------------------------------------------

    def _arm(self, active: ActiveCall) -> None:
        """(Re)arm each leg's session timer at its machine's next deadline."""
        core = active.core
        if core.uas.timer is None and (core.uac is None or core.uac.timer is None) \
                and not self._timers:
            return
        loop = asyncio.get_running_loop()
        for role, machine in ((Role.UAS, active.core.uas), (Role.UAC, active.core.uac)):
            key = (active.call_id, role)
            timer = machine.timer if machine is not None else None
            deadline = timer.get_timer() if timer is not None and not active.core.ended \
                else None
            armed = self._timers.get(key)
            if armed is not None and armed[0] == deadline:
                continue
            if armed is not None:
                armed[1].cancel()
                del self._timers[key]
            if deadline is not None:
                handle = loop.call_at(deadline, self._timer_fired, active, role)
                self._timers[key] = (deadline, handle)

    def _timer_fired(self, active: ActiveCall, role: Role) -> None:
        self._timers.pop((active.call_id, role), None)
        if not active.core.ended:
            self._input(active, role, TimerFired(), "running the session timer")


    def _negotiate_refresh(self, active: ActiveCall, role: Role, leg: Leg,
                           tx: ServerTransaction, request: Request
                           ) -> tuple[Header, ...] | None:
        """A re-INVITE or UPDATE from the peer as a session refresh (RFC 4028 §9): its
        session goes to the leg's timer; returns the headers for our 2xx, or None when it
        was answered here (422, 400)."""
        machine = active.core.machine(role)
        timer = machine.timer
        if timer is None and session_expires_of(request) is None:
            return ()
        keep = timer.session.refresher_for(we_send=False) if timer is not None else None
        try:
            answer = uas_negotiate(request, self._policy, keep=keep)
        except ParseError as error:
            leg.agent.stack.respond(tx, 400, f"Bad Request: {error.message}")
            return None
        if isinstance(answer, Reject):
            leg.agent.stack.respond(tx, answer.status, answer.reason, headers=answer.headers)
            return None
        if answer.session is not None:
            self._input(active, role, RefreshIn(answer.session), "refreshing the session")
        return answer.headers

    def _send_refresh(self, active: ActiveCall, role: Role, leg: Leg) -> None:
        """Our refresh (we are the refresher): UPDATE when the peer allows it, else a
        re-INVITE with the SDP we last sent (RFC 4028 §7.4)."""
        timer = active.core.machine(role).timer
        if leg.dialog is None or timer is None:
            return
        headers = refresh_headers(timer.session, self._policy)
        if leg.peer_allows_update or leg.role is LegRole.UAS and allows(leg.invite, "UPDATE"):
            request, hop = leg.agent.dialog_request(leg.dialog, "UPDATE", headers=headers)
        else:
            body = bytes(leg.local_sdp) if leg.local_sdp is not None else b""
            request, hop = leg.agent.dialog_request(
                leg.dialog, "INVITE", body=body, headers=headers,
                content_type="application/sdp" if body else None)
        client = leg.agent.stack.start_request(request, hop)
        self._spawn(self._refresh_answer(active, role, leg, request, client))

    async def _refresh_answer(self, active: ActiveCall, role: Role, leg: Leg,
                              request: Request, client: ClientRequest) -> None:
        try:
            response = await client.response()
        except SipTimeoutError:
            response = None
        if active.core.ended or active.leg(role) is not leg or leg.dialog is None:
            return
        if response is None:
            self._input(active, role, RefreshAnswered(None), "refreshing the session")
            return
        leg.dialog.receive_response(request, response)
        session = None
        if 200 <= response.status < 300:
            if request.method == "INVITE":
                leg.ack_for = client.transaction
                leg.send_ack()
            try:
                session = uac_negotiate(response)
            except ProtocolError:
                session = None
        self._input(active, role, RefreshAnswered(response.status, session),
                    "refreshing the session")

    def _info(self, active: ActiveCall, role: Role, leg: Leg, tx: ServerTransaction,
              request: Request) -> None:
        """An INFO with a body: a media control request (RFC 5168) is relayed in the other
        leg's dialog and its final status returned (the far encoder is the one that can
        send a key frame); any other body gets 415 naming what we take. Statuses that
        would end this dialog's usage (RFC 5057: 408, 481) are not passed back as such."""
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type.lower() != MEDIA_CONTROL:
            leg.agent.stack.respond(tx, 415, headers=(("Accept", MEDIA_CONTROL),))
            return
        other = active.outbound if role.other is Role.UAC else active.inbound
        if other is None or other.dialog is None or not other.confirmed:
            leg.agent.stack.respond(tx, 500, "Server Internal Error: the other side's "
                                             "dialog is not up yet")
            return
        relayed, hop = other.agent.dialog_request(other.dialog, "INFO", body=request.body,
                                                  content_type=content_type)
        client = other.agent.stack.start_request(relayed, hop)
        self._spawn(self._info_answer(leg, tx, client))

    async def _info_answer(self, leg: Leg, tx: ServerTransaction, client: ClientRequest
                           ) -> None:
        try:
            response = await client.response()
        except SipTimeoutError:
            leg.agent.stack.respond(tx, 504, "Server Time-out: no answer from the other side")
            return
        if response.status in (408, 481):
            leg.agent.stack.respond(tx, 504, f"Server Time-out: the other side answered "
                                             f"{response.status} {response.reason}")
            return
        leg.agent.stack.respond(tx, response.status, response.reason)

    def _reinvite(self, active: ActiveCall, role: Role, tx: ServerTransaction,
                  request: Request) -> None:
        """A re-INVITE or UPDATE from the peer: a session refresh (answered here when it
        changes no SDP) and/or a new offer (relayed through the call)."""
        leg = active.leg(role)
        try:
            offer = sdp_of(request)
        except ProtocolError as error:
            leg.agent.stack.respond(tx, status_of(error, 400), error.message)
            return
        # RFC 4028 refreshes a session: none before the 2xx (an early UPDATE is no refresh).
        headers = (self._negotiate_refresh(active, role, leg, tx, request) if leg.confirmed
                   else ())
        if headers is None or active.core.ended:
            return
        if request.method == "UPDATE" and offer is None:
            leg.answer_in_dialog(tx, request, None, headers)
            return
        if session_expires_of(request) is not None and _same_session(offer, leg.remote_sdp):
            # A refresh re-INVITE repeating the current SDP: answered with ours, not relayed.
            leg.answer_in_dialog(tx, request, leg.local_sdp, headers)
            return
        run = self._runs[active.call_id]
        if headers:
            run.answer_headers[role] = headers
        run.incoming = (tx, request, offer)
        try:
            event = ReinviteIn(offer) if request.method == "INVITE" else UpdateIn(offer)
            self._input(active, role, event, "relaying a re-INVITE")
        finally:
            if run.incoming is not None:  # taken on: it waits for the other side's answer
                run.reinvites[role] = run.incoming
                run.incoming = None

    def _send_reinvite(self, active: ActiveCall, role: Role, leg: Leg,
                       sdp: SessionDescription | None) -> None:
        if leg.dialog is None:
            raise ProtocolError("re-INVITE needs a dialog", 500)
        body = bytes(sdp) if sdp is not None else b""
        request, hop = leg.agent.dialog_request(
            leg.dialog, "INVITE", body=body, content_type="application/sdp" if body else None)
        client = leg.agent.stack.start_request(request, hop)
        self._runs[active.call_id].reoffers[role] = client
        self._spawn(self._reinvite_answer(active, role, leg, request, client, sdp))

    async def _reinvite_answer(self, active: ActiveCall, role: Role, leg: Leg,
                               request: Request, client: ClientRequest,
                               sdp: SessionDescription | None) -> None:
        try:
            response = await client.response()
        except SipTimeoutError:
            if active.leg(role) is leg and not active.core.ended:
                self._input(active, role, Timeout(), "relaying a re-INVITE")
            return
        if active.leg(role) is not leg or active.core.ended or leg.dialog is None:
            return
        leg.dialog.receive_response(request, response)
        answer = None
        if 200 <= response.status < 300:
            leg.ack_for = client.transaction
            leg.local_sdp = sdp
            try:
                answer = sdp_of(response)
            except ProtocolError as error:
                logger.warning("[%s] unusable SDP in a re-INVITE 2xx: %s", active.call_id,
                               error.message)
            leg.remote_sdp = answer or leg.remote_sdp
        self._input(active, role, ResponseIn(response.status, response.reason, answer),
                    "relaying a re-INVITE")
