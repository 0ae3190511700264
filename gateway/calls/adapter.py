"""The asyncio adapter of call control: SIP from the side agents into the call machines,
their actions out as SIP, bridge rewrites awaited, media torn down.

New INVITEs are admitted here, each refusal clean (nothing set up, no port kept): draining
(503), routing (482 loop, 483 hops, 404 no rule), the target must be on the other side of
the B2BUA (404), capacity (503 + Retry-After), a usable body (400/415), encryption policy
(488); then media ports (503) and codecs (488) while the bridge writes the offer. From
then on every decision is :class:`gateway.calls.call.Call`'s; this module only carries
out its actions (``_execute``). REFER from the video side (the Microsoft client as the
object of a transfer) lives in ``gateway.calls.transfer``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.call import ActiveCall, EndedCall
from gateway.calls.actions import (
    CallAction,
    Connected,
    Count,
    Ended,
    ResetBridge,
    Rewrite,
    Role,
    Started,
    ToLeg,
)
from gateway.calls.admission import NO_TIMER, admit, asks_timer, option_tags, route_of, run_rewrite
from gateway.calls.call import Call
from gateway.calls.dialogs import CallRun, DialogActions
from gateway.calls.events import (
    AckIn,
    AckTimeout,
    ByeIn,
    CancelIn,
    SendInvite,
    SendReject,
    SipInput,
    reason_header,
)
from gateway.calls.refusals import (
    ICE_FAILURE_TEXT,
    Refusal,
    sdp_refusal,
    status_of,
)
from gateway.calls.services import CallServices
from gateway.calls.transfer import refer
from gateway.config import MediaEncryption
from gateway.im_session import NO_BROKER, is_im_session
from gateway.leg import Leg, LegRole, SideAgent
from gateway.metrics import RefusalReason
from gateway.routing import RouteDecision
from gateway.sdp_bridge import SdpBridge, sdp_of, video_security_for
from gateway.session_timer import Reject, TimerPolicy, uas_negotiate
from gateway.views import LegSide
from media.events import MediaEvent, MediaFailed
from media.rewrite import VideoSecurity
from media.session import StreamCounters
from sip.errors import ParseError, ProtocolError
from sip.message import Request
from sip.stack import ClientRequest, Hop
from sip.transaction_server import ServerState, ServerTransaction

__all__ = ["CallController", "Refusal"]

logger = logging.getLogger(__name__)

BROKER_METHODS = frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO"})


class CallController(DialogActions):
    """Admits new calls and carries out their machines' actions (the agents' owner)."""

    def __init__(self, services: CallServices) -> None:
        self.services = services
        b2bua = services.config.b2bua
        self._policy = TimerPolicy(interval=b2bua.session_expires, min_se=b2bua.min_se,
                                   enabled=False)
        """RFC 4028 on both sides: a timer when the peer asks for one (or answers ours)."""
        self._timers: dict[tuple[str, Role], tuple[float, asyncio.TimerHandle]] = {}
        self._inline: list[Coroutine[Any, Any, None]] | None = None
        """While a coroutine runs an input: the waits it led to (a rewrite, our INVITE's
        answer), run in that coroutine rather than in a task each."""
        self.calls: dict[str, ActiveCall] = {}
        """Active calls by id (the inbound leg's Call-ID)."""
        self.ended: collections.deque[EndedCall] = collections.deque(maxlen=100)
        """Summaries of the last 100 ended calls, for tests and logs."""
        self._runs: dict[str, CallRun] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.call_ended = asyncio.Event()
        """Set each time a call ends (cleared by whoever waits on it)."""

    # -- LegOwner: the agents' callbacks -------------------------------------------------

    def screen(self, agent: SideAgent, transaction: ServerTransaction, request: Request) -> bool:
        """Trusted hosts on the Microsoft side, then the broker; True to go on."""
        if agent.side is not LegSide.MICROSOFT:
            return True
        services = self.services
        source = transaction.source
        host = source.host if isinstance(source, Hop) else str(source)
        broker = services.broker
        # IM&P nodes send in-dialog requests (IM sessions, NOTIFY) back through the broker.
        from_node = broker is not None and broker.routed_from_node(host, request)
        refusal = None if from_node else services.trusted.check(host, request.method)
        if refusal is not None:
            if request.method == "INVITE":
                services.metrics.call_refused(RefusalReason.UNTRUSTED_HOST)
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
        elif request.method == "OPTIONS":
            agent.answer_options(transaction)
        elif request.method in BROKER_METHODS and agent.side is LegSide.MICROSOFT:
            agent.stack.respond(transaction, 501, "Not Implemented: the SIP broker is off")
        else:
            agent.stack.respond(transaction, 501)
        return None

    def on_dialog_request(
        self, leg: Leg, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        active = leg.call
        stack = leg.agent.stack
        role = _role_of(active, leg) if active is not None else None
        if active is None or active.core.ended or role is None:
            stack.respond(transaction, 481)
            return None
        method = request.method
        if method == "BYE":
            stack.respond(transaction, 200)
            self._input(active, role, ByeIn(_reason_of(request)), "handling a BYE")
        elif method == "INVITE" or method == "UPDATE":
            self._reinvite(active, role, transaction, request)
        elif method == "PRACK":
            self._prack(active, role, leg, transaction, request)
        elif method == "REFER":
            return refer(self.services, self._step, active, leg, transaction, request)
        elif method == "OPTIONS":
            leg.agent.answer_options(transaction)
        elif method in ("INFO", "NOTIFY") and not request.body:
            stack.respond(transaction, 200)
        elif method == "INFO":
            self._info(active, role, leg, transaction, request)
        else:
            stack.respond(transaction, 501)
        return None

    def on_ack(self, leg: Leg, ack: Request) -> None:
        active = leg.call
        role = _role_of(active, leg) if active is not None else None
        if active is None or active.core.ended or role is None:
            return
        try:
            sdp = sdp_of(ack)
        except ProtocolError as error:
            logger.warning("[%s] unusable SDP in ACK: %s", active.call_id, error.message)
            sdp = None
        if sdp is not None:
            leg.remote_sdp = sdp
        self._input(active, role, AckIn(sdp), "applying the ACK")

    def on_cancel(self, agent: SideAgent, transaction: ServerTransaction) -> None:
        active = next((c for c in self.calls.values() if c.inbound.server_tx is transaction),
                      None)
        if active is None:
            # A CANCEL of a re-INVITE being relayed: the relayed one is cancelled and its
            # answer (487, or a 2xx that won) answers this one (RFC 3261 §9.2).
            for call_id, run in self._runs.items():
                for role, pending in run.reinvites.items():
                    if pending[0] is transaction and call_id in self.calls:
                        self._input(self.calls[call_id], role, CancelIn(),
                                    "handling a CANCEL of a re-INVITE")
                        return
            if transaction.state in (ServerState.TRYING, ServerState.PROCEEDING):
                agent.stack.respond(transaction, 487)
            return
        self._input(active, Role.UAS, CancelIn(), "handling a CANCEL")

    def on_ack_timeout(self, leg: Leg) -> None:
        active = leg.call
        role = _role_of(active, leg) if active is not None else None
        if active is None or active.core.ended or role is None:
            leg.bye(reason_header(408, "no ACK for the 2xx"))
            return
        self._input(active, role, AckTimeout(), "handling a missing ACK")

    # -- new INVITE --------------------------------------------------------------------------

    def admit(self, agent: SideAgent, request: Request) -> Refusal | RouteDecision:
        """The admission checks (no side effects but the log)."""
        return admit(self.services, len(self.calls), agent, request)

    async def _invite(self, agent: SideAgent, tx: ServerTransaction, request: Request) -> None:
        if tx.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return  # CANCELled (487 sent) before this task ran: nothing to set up
        services = self.services
        now = asyncio.get_running_loop().time()
        source = tx.source if isinstance(tx.source, Hop) else services.hop_of(tx.source)
        inbound = Leg(agent.side, agent, LegRole.UAS, request.call_id, source, request,
                      server_tx=tx)
        decision = self.admit(agent, request)
        if isinstance(decision, Refusal):
            self._refuse(inbound, decision)
            return
        if request.call_id in self.calls:
            services.metrics.call_refused(RefusalReason.CALL_ID_IN_USE)
            agent.stack.respond(tx, 482, "Loop Detected: Call-ID already in a call")
            return
        try:
            offer = sdp_of(request)
        except ProtocolError as error:
            self._refuse(inbound, sdp_refusal(error))
            return
        if offer is None and agent.side is LegSide.MICROSOFT:
            self._refuse(inbound, Refusal(488, "Not Acceptable Here: INVITE without SDP",
                                          RefusalReason.NO_SDP))
            return
        video_zone = (services.source_zone(agent.side, request) if agent.side is LegSide.VIDEO
                      else decision.zone)
        zone = services.config.zone(video_zone) if video_zone is not None else None
        try:
            security = video_security_for(
                zone.media_encryption if zone is not None else MediaEncryption.AUTO,
                offer if agent.side is LegSide.VIDEO else None)
        except ProtocolError as error:
            self._refuse(inbound, Refusal(status_of(error, 488), error.message,
                                          RefusalReason.ZONE_ENCRYPTION))
            return
        try:
            negotiated = (uas_negotiate(request, self._policy) if asks_timer(request)
                          else NO_TIMER)
        except ParseError as error:
            self._refuse(inbound, Refusal(400, f"Bad Request: {error.message}"))
            return
        if isinstance(negotiated, Reject):
            self._refuse(inbound, Refusal(negotiated.status, negotiated.reason,
                                          headers=negotiated.headers))
            return
        inbound.timer_headers = negotiated.headers
        route = route_of(self.services, agent, request, decision)
        best_effort = (agent.side is LegSide.MICROSOFT and zone is not None
                       and zone.media_encryption is MediaEncryption.BEST_EFFORT
                       and security is VideoSecurity.SRTP)
        # Microsoft takes SDP in a 1xx only when its INVITE says so (Lync: ms-early-media).
        early_media = agent.side is LegSide.VIDEO or bool(
            option_tags(request, "Supported") & {"ms-early-media", "100rel"})
        core = Call(request.call_id, now, agent.side, target_zone=decision.targets[0].zone,
                    hops=len(route.hops), best_effort=best_effort, early_media=early_media)
        active = ActiveCall(core, inbound)
        inbound.call = active
        self.calls[active.call_id] = active  # counted against max_calls from here on
        self._runs[active.call_id] = CallRun(route)
        session = services.media_session(
            active.call_id, zone, lambda event: self._media_event(active, event))
        active.media = session
        active.bridge = SdpBridge(session, services.encryption, security)
        await self._step_inline(active, lambda: core.invite(offer, now, negotiated.session),
                                "setting up the call")

    # -- feeding the call ------------------------------------------------------------------

    async def _ainput(self, active: ActiveCall, role: Role, event: SipInput, what: str
                      ) -> None:
        """``_input`` from a coroutine: the rewrite it leads to runs in it (no new task)."""
        now = asyncio.get_running_loop().time()
        await self._step_inline(active, lambda: active.core.sip(role, event, now), what)

    async def _step_inline(self, active: ActiveCall, step: Callable[[], list[CallAction]],
                           what: str) -> None:
        outer, self._inline = self._inline, []
        try:
            self._step(active, step, what)
            waits = self._inline
        finally:
            self._inline = outer
        for wait in waits:
            await wait

    def _later(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the coroutine handling the current input, else in a task."""
        if self._inline is not None:
            self._inline.append(coroutine)
        else:
            self._spawn(coroutine)

    def _input(self, active: ActiveCall, role: Role, event: SipInput, what: str) -> None:
        now = asyncio.get_running_loop().time()
        self._step(active, lambda: active.core.sip(role, event, now), what)

    def _step(self, active: ActiveCall, step: Callable[[], list[CallAction]], what: str
              ) -> list[ClientRequest]:
        """Run one input through the call; a coding error (a missing table entry is one)
        fails the call once with 500 instead of escaping into the SIP stack."""
        try:
            actions = step()
        except Exception as error:  # noqa: BLE001 - the coding-error guard of the call
            now = asyncio.get_running_loop().time()
            try:
                actions = active.core.fault(error, what, now)
            except Exception:  # noqa: BLE001 - the machines are beyond use: drop the call
                logger.exception("[%s] clearing after a fault failed", active.call_id)
                actions = []
                self._spawn(self._discard(active))
        pending = self._execute(active, actions)
        self._arm(active)
        return pending

    def _execute(self, active: ActiveCall, actions: list[CallAction]) -> list[ClientRequest]:
        """Carry out the call's actions in order; returns the BYEs and CANCELled INVITEs
        still on their way (a drain waits for them)."""
        pending: list[ClientRequest] = []
        if active.outbound is None and any(isinstance(a, Ended) for a in actions) and any(
                isinstance(a, ToLeg) and isinstance(a.action, SendReject)
                and a.action.status != 487 for a in actions):
            # Refused before the callee was called: ports back before the refusal leaves,
            # so the caller may retry at once.
            self._spawn(self._refuse_after_teardown(active, actions))
            return pending
        for action in actions:
            if isinstance(action, ToLeg) and isinstance(action.action, SendInvite):
                self._send_invite(active, action.action)
            elif isinstance(action, ToLeg):
                leg = active.inbound if action.role is Role.UAS else active.outbound
                if leg is None:
                    raise ProtocolError(f"no {action.role.value} leg for {action.action!r}", 500)
                sent = self._sip(active, action.role, leg, action.action)
                if sent is not None:
                    pending.append(sent)
            elif isinstance(action, Rewrite):
                self._later(self._rewrite(active, action))
            elif isinstance(action, ResetBridge):
                if active.bridge is not None:
                    active.bridge.pending = None
            elif isinstance(action, Started):
                self.services.metrics.call_started()
            elif isinstance(action, Connected):
                self.services.metrics.call_connected(action.at - active.core.started_at)
            elif isinstance(action, Count):
                self.services.metrics.call_refused(action.metric)
            elif isinstance(action, Ended):
                logger.info("[%s] call ended: %s; %s", active.call_id, action.outcome.reason,
                            _summary(active))
                self._spawn(self._discard(active))
        return pending

    async def _refuse_after_teardown(self, active: ActiveCall, actions: list[CallAction]
                                     ) -> None:
        await self._discard(active)
        for action in actions:
            if isinstance(action, ToLeg) and action.role is Role.UAS:
                self._sip(active, Role.UAS, active.inbound, action.action)
            elif isinstance(action, Count):
                self.services.metrics.call_refused(action.metric)
        for action in actions:
            if isinstance(action, ToLeg) and isinstance(action.action, SendReject):
                logger.info("refused INVITE %s from %s: %d %s", active.call_id,
                            active.inbound.remote_text, action.action.status,
                            action.action.reason)

    # -- the bridge ----------------------------------------------------------------------------

    async def _rewrite(self, active: ActiveCall, rewrite: Rewrite) -> None:
        bridge = active.bridge
        assert bridge is not None
        try:
            result = await run_rewrite(bridge, rewrite.op, rewrite.sdp)
        except Exception as error:  # noqa: BLE001 - the call maps it (or fails with 500)
            now = asyncio.get_running_loop().time()
            await self._step_inline(
                active, functools.partial(active.core.rewrite_failed, error, now),
                "rewriting SDP")
            return
        now = asyncio.get_running_loop().time()
        await self._step_inline(active, lambda: active.core.rewritten(result, now),
                                "relaying SDP")

    # -- media ---------------------------------------------------------------------------------

    def _media_event(self, active: ActiveCall, event: MediaEvent) -> None:
        if isinstance(event, MediaFailed) and not active.core.ended:
            logger.warning("[%s] %s stream %d: %s", active.call_id, event.kind, event.stream,
                           event.reason)
            now = asyncio.get_running_loop().time()
            self._step(active, lambda: active.core.media_failed(ICE_FAILURE_TEXT, now),
                       "clearing after ICE failure")

    # -- teardown -------------------------------------------------------------------------

    def clear(self, active: ActiveCall, text: str, cause: int = 503) -> list[ClientRequest]:
        """Clear a call from the gateway's side (drain): BYE or refuse each leg; returns
        the BYEs (and CANCELled INVITEs) still on their way."""
        now = asyncio.get_running_loop().time()
        return self._step(active, lambda: active.core.clear(text, cause, now), "draining")

    async def _discard(self, active: ActiveCall) -> None:
        """Forget the call and give its media back (also for refused calls). One teardown
        per call: a second caller waits for the first."""
        if active.torn_down is not None:
            await asyncio.shield(active.torn_down)
            return
        done = active.torn_down = asyncio.get_running_loop().create_future()
        try:
            await self._teardown(active)
        finally:
            done.set_result(None)

    async def _teardown(self, active: ActiveCall) -> None:
        core = active.core
        if not core.ended:
            core.clear("gateway stopped", 503, asyncio.get_running_loop().time())
        self._runs.pop(active.call_id, None)
        for role in Role:
            armed = self._timers.pop((active.call_id, role), None)
            if armed is not None:
                armed[1].cancel()
        counters: tuple[StreamCounters, ...] = ()
        if active.media is not None:
            try:
                await active.media.close()
            except Exception:  # noqa: BLE001 - the ports must still be accounted for
                logger.exception("[%s] closing media failed", active.call_id)
            counters = active.media.counters()
        if core.counted:
            assert core.outcome is not None
            self.services.metrics.call_ended(core.outcome.result)
        # Gone from the active calls only once its ports are back in the pool.
        self.calls.pop(active.call_id, None)
        self.services.metrics.set_media_ports_in_use(self.services.pool.ports_in_use)
        assert core.outcome is not None
        self.ended.append(EndedCall(active.call_id, core.outcome, core.started_at,
                                    core.connected_at, asyncio.get_running_loop().time(),
                                    counters))
        self.call_ended.set()

    def _refuse(self, leg: Leg, refusal: Refusal) -> None:
        logger.info("refused INVITE %s from %s: %d %s", leg.call_id, leg.remote_text,
                    refusal.status, refusal.reason)
        if refusal.metric is not None:
            self.services.metrics.call_refused(refusal.metric)
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
        for active in list(self.calls.values()):
            core = active.core
            if not core.ended:  # no signalling: the legs go with the stacks
                core.clear("gateway stopped", 503, asyncio.get_running_loop().time())
            await self._discard(active)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)


def _role_of(active: ActiveCall, leg: Leg) -> Role | None:
    if leg is active.inbound:
        return Role.UAS
    if leg is active.outbound:
        return Role.UAC
    return None


def _reason_of(request: Request) -> tuple[str, str] | None:
    value = request.headers.get("Reason")
    return ("Reason", value) if value else None


def _summary(active: ActiveCall) -> str:
    """The rest of the one INFO line a call logs: who, and how long it was up."""
    outbound = active.outbound
    core = active.core
    route = f"{active.inbound.remote_text} -> {outbound.remote_text if outbound else '-'}"
    if core.connected_at is None:
        return f"{route}, never connected"
    up = asyncio.get_running_loop().time() - core.connected_at
    return f"{route}, connected after {core.connected_at - core.started_at:.3f} s, up {up:.1f} s"
