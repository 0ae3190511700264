"""A B2BUA call (sans-IO): the caller's leg, the callee's leg, and the events between them.

Each leg machine reports leg events (``Try``, ``Ring``, ``Connect``, ``Update``,
``Confirm``, ``Disconnect``, ``Fail``); :class:`Call` decides what the other leg is asked,
and asks the SDP bridge (Microsoft <-> standard rewrite, media session) on the way with a
:class:`Rewrite` action. The bridge is the only slow part (ports bound, ICE gathered), so
a rewrite's result comes back as its own input (:meth:`Call.rewritten`,
:meth:`Call.rewrite_failed`); one rewrite is in flight at a time, and whatever arrives
meanwhile (CANCEL, BYE, a crossing re-INVITE) is handled by the tables as usual. Nothing
here does I/O or reads a clock: ``now`` is passed in, actions come out, and
``gateway.calls.adapter`` carries them out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.calls.actions import (
    BridgeOp,
    CallAction,
    CallState,
    Connected,
    Count,
    Ended,
    Outcome,
    Phase,
    ResetBridge,
    Rewrite,
    Role,
    Started,
    ToLeg,
)
from gateway.calls.events import (
    Confirm,
    Connect,
    Disconnect,
    Emit,
    Fail,
    InviteIn,
    LegAction,
    LegEvent,
    Ring,
    SipInput,
    Timeout,
    Try,
    Update,
    Withdraw,
    reason_header,
)
from gateway.calls.leg_machine import LegMachine, LegState
from gateway.calls.refusals import (
    EXPECTED_ERRORS,
    callee_final,
    callee_refusal,
    media_refusal,
)
from gateway.calls.uac_leg import UacLeg
from gateway.calls.uas_leg import UasLeg
from gateway.metrics import CallResult
from gateway.session_timer import Session
from gateway.views import LegSide
from media.sdp import SessionDescription
from sip.errors import ProtocolError

__all__ = ["Call"]

logger = logging.getLogger(__name__)


_UAS_PENDING = (LegState.TRYING, LegState.RINGING, LegState.EARLY_MEDIA)


class Call:
    """One call: two leg machines, the phase of the call between them, the outcome."""

    def __init__(self, call_id: str, started_at: float, inbound: LegSide, *,
                 target_zone: str = "", hops: int = 1, best_effort: bool = False,
                 early_media: bool = True) -> None:
        self.call_id = call_id
        self.started_at = started_at
        self.inbound_side = inbound
        self.outbound_side = LegSide.VIDEO if inbound is LegSide.MICROSOFT else LegSide.MICROSOFT
        self.target_zone = target_zone
        self.hops = hops
        """How many peers the target zone has (tried in turn while unreachable)."""
        self.hop_index = 0
        self.best_effort = best_effort
        """A refused SRTP offer to the video side is made again with plain RTP."""
        self.early_media = early_media
        """The caller takes SDP in a 1xx (early media): a video caller always (RFC 3261
        §13.2.1), Microsoft when its INVITE supports ``ms-early-media`` or ``100rel``."""
        self.early_callee: SessionDescription | None = None
        """The callee's early answer (183 with SDP), as received."""
        self.early_back: SessionDescription | None = None
        """That answer rewritten, as sent to the caller in our 183."""
        self._early_status: tuple[int, str] = (183, "Session Progress")
        self._deferred: list[tuple[Role, LegEvent]] = []
        """Leg events that came while the early answer was being rewritten."""
        self.uas: LegMachine = UasLeg()
        """The inbound leg (a UAC machine after a transfer of the caller's side)."""
        self.uac: LegMachine | None = None
        """The outbound leg."""
        self.phase: Phase | None = None
        self.delayed = False
        """The caller's INVITE had no SDP: we offered toward Microsoft; the answer for the
        caller is our 2xx's offer and the caller's answer comes in its ACK."""
        self.offer: SessionDescription | None = None
        """What we offered the callee."""
        self.updater: Role | None = None
        """The leg whose re-INVITE is being relayed."""
        self.connected_at: float | None = None
        self.outcome: Outcome | None = None
        self.counted = False
        self.withdrawn = False
        """The updater CANCELled its re-INVITE while its offer was being rewritten."""
        self._timeout: Timeout | None = None
        """The callee leg's INVITE timed out (the ``Fail`` it reports is ours, not the
        callee's)."""

    # -- views ------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def state(self) -> CallState:
        if self.ended:
            return CallState.DISCONNECTED
        if self.phase in (Phase.ANSWERED, Phase.DELAYED_ANSWER):
            return CallState.CONNECTING
        if self.connected_at is not None:
            return CallState.CONNECTED
        if self.uas.state in (LegState.RINGING, LegState.EARLY_MEDIA):
            return CallState.RINGING
        return CallState.TRYING

    @property
    def connected(self) -> bool:
        """Both legs up and no offer/answer or transfer under way."""
        return self.phase is Phase.CONNECTED

    def machine(self, role: Role) -> LegMachine:
        if role is Role.UAS:
            return self.uas
        if self.uac is None:
            raise ProtocolError("the call has no callee leg yet", 500)
        return self.uac

    def side(self, role: Role) -> LegSide:
        return self.inbound_side if role is Role.UAS else self.outbound_side

    # -- inputs -------------------------------------------------------------------------------

    def invite(self, sdp: SessionDescription | None, now: float,
               session: Session | None = None) -> list[CallAction]:
        """The caller's INVITE, admitted (``session``: the timer our 2xx will set)."""
        return self.sip(Role.UAS, InviteIn(sdp, session), now)

    def sip(self, role: Role, event: SipInput, now: float) -> list[CallAction]:
        """What ``role``'s dialog received."""
        if role is Role.UAC and isinstance(event, Timeout):
            self._timeout = event
        return self._run(role, self.machine(role).handle(event, now), now)

    def rewritten(self, sdp: SessionDescription | None, now: float) -> list[CallAction]:
        """The bridge's result for the last :class:`Rewrite`."""
        phase = self.phase
        if phase is Phase.OFFER or phase is Phase.RETRY:
            return self._place(sdp, now, retry=phase is Phase.RETRY)
        if phase is Phase.EARLY_ANSWER:
            self.phase = Phase.PLACING
            self.early_back = sdp
            status, reason = self._early_status
            actions = self._ask(Role.UAS, Ring(status, reason, sdp), now)
            deferred, self._deferred = self._deferred, []
            for role, event in deferred:
                actions += self._on_event(role, event, now)
            return actions
        if phase is Phase.ANSWER:
            self.phase = Phase.ANSWERED
            actions = self._ask(Role.UAS, Connect(sdp), now)
            self.connected_at = now
            return [*actions, Connected(now)]
        if phase is Phase.DELAYED_ANSWER or phase is Phase.REANSWER:
            self.phase = Phase.CONNECTED
            return []
        if phase is Phase.UPDATE_OFFER and self.withdrawn:
            # CANCELled before it went on: the offer is dropped, the re-INVITE gets 487.
            assert self.updater is not None
            self.withdrawn = False
            self.phase = Phase.CONNECTED
            return [ResetBridge(), *self._ask(self.updater, Fail(487, "Request Terminated"),
                                              now)]
        if phase is Phase.UPDATE_OFFER:
            assert self.updater is not None
            self.phase = Phase.UPDATE_WAIT
            return self._ask(self.updater.other, Update(sdp), now)
        if phase is Phase.UPDATE_ANSWER:
            assert self.updater is not None
            self.phase = Phase.CONNECTED
            logger.info("[%s] re-INVITE from the %s side: %s", self.call_id,
                        self.side(self.updater).value,
                        ", ".join(m.direction for m in sdp.media) if sdp else "-")
            return self._ask(self.updater, Connect(sdp), now)
        return []  # the call ended while the bridge worked: whoever ended it cleared it

    def rewrite_failed(self, error: BaseException, now: float) -> list[CallAction]:
        """The bridge refused (``EXPECTED_ERRORS``: mapped to a status) or broke (anything
        else: a coding error, one 500)."""
        phase = self.phase
        if phase is Phase.ENDED or phase is None:
            return []
        if not isinstance(error, EXPECTED_ERRORS):
            what = {Phase.OFFER: "setting up media", Phase.ANSWER: "placing the call",
                    Phase.EARLY_ANSWER: "relaying early media",
                    Phase.DELAYED_ANSWER: "applying the ACK's answer",
                    Phase.REANSWER: "applying the ACK's answer"}.get(
                phase, "relaying a re-INVITE")
            return self.fault(error, what, now)
        if phase in (Phase.OFFER, Phase.RETRY):
            refusal = media_refusal(error)
            actions: list[CallAction] = [] if refusal.metric is None else [Count(refusal.metric)]
            actions += self._ask(Role.UAS, Fail(refusal.status, refusal.reason), now)
            return actions + self._end(CallResult.FAILED, "refused", None, now)
        if phase is Phase.ANSWER or phase is Phase.EARLY_ANSWER:
            refusal = callee_refusal(error)
            logger.warning("[%s] answer cannot be relayed: %s", self.call_id, refusal.reason)
            actions = self._ask(Role.UAS, Fail(refusal.status, refusal.reason), now)
            reason = reason_header(refusal.status, refusal.reason)
            return actions + self._end(CallResult.FAILED, refusal.reason, reason, now)
        if phase is Phase.DELAYED_ANSWER or phase is Phase.REANSWER:
            # The ACK's answer cannot be used: the session is broken, BYE both legs.
            refusal = media_refusal(error)
            return self._end(CallResult.FAILED, refusal.reason,
                             reason_header(refusal.status, refusal.reason), now)
        # a re-INVITE's offer or answer: refused, the call goes on with what it had
        refusal = media_refusal(error)
        assert self.updater is not None
        self.phase = Phase.CONNECTED
        return [ResetBridge(), *self._ask(self.updater, Fail(refusal.status, refusal.reason),
                                          now)]

    def media_failed(self, text: str, now: float) -> list[CallAction]:
        """ICE toward Microsoft failed: clear both legs with a Reason."""
        if self.ended:
            return []
        actions: list[CallAction] = []
        if self.uas.state in _UAS_PENDING:
            actions += self._ask(Role.UAS, Fail(488, f"Not Acceptable Here: {text}"), now)
        return actions + self._end(CallResult.FAILED, text, reason_header(503, text), now)

    def clear(self, text: str, cause: int, now: float) -> list[CallAction]:
        """Clear the call from the gateway's side (drain)."""
        if self.ended:
            return []
        actions: list[CallAction] = []
        if self.uas.state in _UAS_PENDING:
            actions += self._ask(Role.UAS, Fail(cause, f"Service Unavailable: {text}"), now)
        return actions + self._end(CallResult.FAILED, text, reason_header(cause, text), now)

    def fault(self, error: BaseException, what: str, now: float) -> list[CallAction]:
        """A coding error while ``what``: logged with its traceback; the pending request
        (the caller's INVITE, or the re-INVITE being relayed) gets one 500, the call is
        cleared (CANCEL or BYE with Reason cause 500, media closed, ports released)."""
        logger.error("[%s] %s failed: coding error", self.call_id, what, exc_info=error)
        text = f"Server Internal Error: gateway fault while {what}"
        if self.ended:
            return []
        actions: list[CallAction] = [ResetBridge()]
        for role in (Role.UAS, Role.UAC):
            leg = self.uas if role is Role.UAS else self.uac
            if leg is not None and leg.state in (*_UAS_PENDING, LegState.UPDATING) \
                    and leg.can(Fail(500, text)):
                actions += self._safely(role, Fail(500, text), now)
        return actions + self._end(CallResult.FAILED, text, reason_header(500, text), now)

    # -- transfer (REFER: the adapter runs it, the call only holds still meanwhile) ------------

    def begin_transfer(self) -> bool:
        if not self.connected:
            return False
        self.phase = Phase.TRANSFER
        return True

    def end_transfer(self, new_leg: LegMachine | None, replaced: Role) -> None:
        """The transfer is over; ``new_leg`` (connected) replaces the ``replaced`` leg."""
        if self.ended:
            return
        self.phase = Phase.CONNECTED
        if new_leg is None:
            return
        if replaced is Role.UAC:
            self.uac = new_leg
        else:
            # The video side was the caller: the new video party takes the inbound leg's
            # place; its machine is a UAC one, which shares the in-call rows.
            self.uas = new_leg

    # -- leg events -------------------------------------------------------------------------

    def _run(self, role: Role, leg_actions: Sequence[LegAction], now: float
             ) -> list[CallAction]:
        actions: list[CallAction] = []
        for action in leg_actions:
            if isinstance(action, Emit):
                actions += self._on_event(role, action.event, now)
            else:
                actions.append(ToLeg(role, action))
        return actions

    def _ask(self, role: Role, event: LegEvent, now: float) -> list[CallAction]:
        return self._run(role, self.machine(role).handle(event, now), now)

    def _safely(self, role: Role, event: LegEvent, now: float) -> list[CallAction]:
        try:
            return self._ask(role, event, now)
        except ProtocolError:
            logger.exception("[%s] %s leg refused %s while clearing", self.call_id,
                             role.value, type(event).__name__)
            return []

    def _on_event(self, role: Role, event: LegEvent, now: float) -> list[CallAction]:
        if isinstance(event, Try):  # the caller's INVITE
            self.phase = Phase.OFFER
            if event.sdp is None:
                self.delayed = True
                return [Rewrite(BridgeOp.DELAYED_OFFER, None)]
            op = (BridgeOp.MICROSOFT_OFFER if self.inbound_side is LegSide.MICROSOFT
                  else BridgeOp.VIDEO_OFFER)
            return [Rewrite(op, event.sdp)]
        if isinstance(event, Ring):
            return self._ring(event, now)
        if isinstance(event, Connect):
            return self._connect(role, event, now)
        if isinstance(event, Fail):
            return self._fail(role, event, now)
        if isinstance(event, Confirm):
            return self._confirm(role, event, now)
        if isinstance(event, Update):
            return self._update(role, event, now)
        if isinstance(event, Disconnect):
            return self._disconnect(role, event, now)
        if isinstance(event, Withdraw):
            return self._withdraw(role, now)
        raise ProtocolError(f"unexpected leg event {event!r}", 500)

    def _place(self, sdp: SessionDescription | None, now: float, *, retry: bool
               ) -> list[CallAction]:
        if retry:
            logger.info("[%s] %s refused SRTP (488): offering plain RTP (best effort)",
                        self.call_id, self.target_zone)
        self.offer = sdp
        self.phase = Phase.PLACING
        actions: list[CallAction] = []
        if not self.counted and not retry:
            self.counted = True
            actions.append(Started())
        if self.uac is None or self.uac.state is not LegState.FAILED:
            self.uac = UacLeg()
        return actions + self._ask(Role.UAC, Try(sdp), now)

    def _ring(self, event: Ring, now: float) -> list[CallAction]:
        if self.phase is not Phase.PLACING or self.uas.state not in _UAS_PENDING:
            return []
        if (event.sdp is not None and self.early_media and self.early_callee is None
                and not self.delayed):
            # Early media: the 183's SDP is the answer; rewritten and applied like the 2xx's
            # would be, so media flows before the call is answered.
            self.phase = Phase.EARLY_ANSWER
            self.early_callee = event.sdp
            self._early_status = (event.status, event.reason)
            return [Rewrite(self._answer_op(), event.sdp)]
        return self._ask(Role.UAS, Ring(event.status, event.reason), now)

    def _answer_op(self) -> BridgeOp:
        if self.delayed:
            return BridgeOp.DELAYED_VIDEO_OFFER
        if self.inbound_side is LegSide.MICROSOFT:
            return BridgeOp.VIDEO_ANSWER
        return BridgeOp.MICROSOFT_ANSWER

    def _connect(self, role: Role, event: Connect, now: float) -> list[CallAction]:
        if self.phase is Phase.UPDATE_WAIT and self.updater is not None \
                and role is self.updater.other:
            if event.sdp is None:
                self.phase = Phase.CONNECTED
                return [ResetBridge(), *self._ask(
                    self.updater, Fail(488, "re-INVITE 2xx without SDP"), now)]
            self.phase = Phase.UPDATE_ANSWER
            op = (BridgeOp.VIDEO_ANSWER if self.side(self.updater) is LegSide.MICROSOFT
                  else BridgeOp.MICROSOFT_ANSWER)
            return [Rewrite(op, event.sdp)]
        # the callee answered our INVITE
        assert role is Role.UAC
        if self.phase is Phase.EARLY_ANSWER:
            self._deferred.append((role, event))
            return []
        if self.ended or self.uas.state not in _UAS_PENDING:
            return self._end(CallResult.CANCELLED, "cancelled",
                             reason_header(487, "call cancelled"), now)
        if event.sdp is None and self.early_back is not None:
            event = Connect(self.early_callee)  # the answer came in the 183
        if event.sdp is None:
            return self._answer_unusable(
                ProtocolError("the 2xx carries no SDP answer", 488), now)
        if self.early_back is not None:
            if self.early_callee is not None and bytes(event.sdp) == bytes(self.early_callee):
                # The 2xx repeats the early answer (RFC 3261 §13.2.1): media runs already.
                self.phase = Phase.ANSWERED
                self.connected_at = now
                return [*self._ask(Role.UAS, Connect(self.early_back), now), Connected(now)]
            self.phase = Phase.ANSWER
            return [Rewrite(BridgeOp.FINAL_ANSWER, event.sdp)]
        self.phase = Phase.ANSWER
        return [Rewrite(self._answer_op(), event.sdp)]

    def _answer_unusable(self, error: ProtocolError, now: float) -> list[CallAction]:
        self.phase = Phase.ANSWER
        return self.rewrite_failed(error, now)

    def _fail(self, role: Role, event: Fail, now: float) -> list[CallAction]:
        if self.machine(role).state is LegState.DISCONNECTING:
            # The leg ended itself with a BYE: our 2xx never ACKed, or its session timer
            # expired (RFC 4028 §10). The other leg is cleared with the same cause.
            logger.warning("[%s] the %s leg ended: %s; clearing the call", self.call_id,
                           self.side(role).value, event.reason)
            return self._end(CallResult.FAILED, event.reason,
                             reason_header(event.status, event.reason), now)
        if self.phase is Phase.UPDATE_WAIT and self.updater is not None \
                and role is self.updater.other:
            self.phase = Phase.CONNECTED
            return [ResetBridge(), *self._ask(self.updater, Fail(event.status, event.reason),
                                              now)]
        if self.ended:
            return []
        timeout, self._timeout = self._timeout, None
        if timeout is not None and timeout.transport_error and self.hop_index + 1 < self.hops:
            logger.warning("[%s] peer %d of %s unreachable, trying the next one",
                           self.call_id, self.hop_index + 1, self.target_zone)
            self.hop_index += 1
            self.uac = None
            return self._place(self.offer, now, retry=False)
        if event.status == 488 and self.best_effort:
            self.best_effort = False  # once
            self.phase = Phase.RETRY
            return [Rewrite(BridgeOp.PLAIN_VIDEO_OFFER, None)]
        if timeout is not None:
            status = 503 if timeout.transport_error else 408
            text = (f"Service Unavailable: {self.target_zone} unreachable" if status == 503
                    else f"Request Timeout: no answer from {self.target_zone}")
            actions = self._ask(Role.UAS, Fail(status, text), now)
            return actions + self._end(CallResult.FAILED, text, None, now)
        if event.status == 503 and self.hop_index + 1 < self.hops:
            # RFC 3263 §4.3: a 503 sends the request to the zone's next peer.
            logger.warning("[%s] peer %d of %s answered 503, trying the next one",
                           self.call_id, self.hop_index + 1, self.target_zone)
            self.hop_index += 1
            self.uac = None
            return self._place(self.offer, now, retry=False)
        status, reason, headers = callee_final(event.status, event.reason, event.headers)
        actions = self._ask(Role.UAS, Fail(status, reason, headers), now)
        result = CallResult.CANCELLED if event.status == 487 else CallResult.REJECTED
        return actions + self._end(result, f"{event.status} {event.reason}", None, now)

    def _confirm(self, role: Role, event: Confirm, now: float) -> list[CallAction]:
        if self.phase is Phase.CONNECTED:
            # The ACK of our 2xx to a re-INVITE without SDP answers the offer that 2xx made:
            # the peer's media may have moved (CUCM reconnecting after a transfer or a
            # resume), so the answer is applied. No answer in the ACK: media stays as it is.
            if event.sdp is None:
                return []
            self.phase = Phase.REANSWER
            logger.info("[%s] the %s side answered our offer in its ACK: media follows it",
                        self.call_id, self.side(role).value)
            op = (BridgeOp.VIDEO_REANSWER if self.side(role) is LegSide.VIDEO
                  else BridgeOp.MICROSOFT_REANSWER)
            return [Rewrite(op, event.sdp)]
        if self.phase is not Phase.ANSWERED:
            return []
        if self.delayed:
            if event.sdp is None:
                return self._end(CallResult.FAILED, "the ACK carries no SDP answer to our offer",
                                 reason_header(488, "the ACK carries no SDP answer to our "
                                                    "offer"), now)
            self.phase = Phase.DELAYED_ANSWER
            return [Rewrite(BridgeOp.DELAYED_VIDEO_ANSWER, event.sdp)]
        self.phase = Phase.CONNECTED
        return []

    def _update(self, role: Role, event: Update, now: float) -> list[CallAction]:
        other = self.uac if role is Role.UAS else self.uas
        if not self.connected or other is None or other.state is not LegState.CONNECTED:
            return self._ask(role, Fail(491, "Request Pending"), now)
        if event.sdp is None:
            # No new offer: answer with what we last sent (the answer comes in the ACK and
            # changes nothing we relay).
            return self._ask(role, Connect(None), now)
        self.updater = role
        self.withdrawn = False
        self.phase = Phase.UPDATE_OFFER
        op = (BridgeOp.MICROSOFT_OFFER if self.side(role) is LegSide.MICROSOFT
              else BridgeOp.VIDEO_OFFER)
        return [Rewrite(op, event.sdp)]

    def _withdraw(self, role: Role, now: float) -> list[CallAction]:
        """The updater CANCELled its re-INVITE (RFC 3261 §9): cancel the relayed one, whose
        487 then comes back as the refusal; while the offer is still being rewritten, drop
        it once written. Once the other side has answered, the answer wins (§9.2)."""
        if self.updater is not role:
            return []
        if self.phase is Phase.UPDATE_OFFER:
            self.withdrawn = True
            return []
        other = role.other
        if self.phase is Phase.UPDATE_WAIT and self.machine(other).can(Withdraw()):
            return self._ask(other, Withdraw(), now)
        return []

    def _disconnect(self, role: Role, event: Disconnect, now: float) -> list[CallAction]:
        if event.cancelled:
            return self._end(CallResult.CANCELLED, "cancelled", None, now)
        text = f"BYE from the {self.side(role).value} side"
        if role is Role.UAC and self.uas.state in _UAS_PENDING:
            # The callee answered and hung up before its 2xx reached the caller: the call
            # never connected (``_end`` answers the caller's INVITE 480).
            return self._end(CallResult.FAILED, f"{text} before the caller was answered",
                             event.reason or reason_header(200, text), now)
        return self._end(CallResult.COMPLETED, text,
                         event.reason or reason_header(200, text), now)

    def _end(self, result: CallResult, text: str, reason: tuple[str, str] | None,
             now: float) -> list[CallAction]:
        """End the call once: ask each leg still up to disconnect, then ``Ended``."""
        if self.ended:
            return []
        self.phase = Phase.ENDED
        self.outcome = Outcome(result, text)
        actions: list[CallAction] = []
        if self.uas.state in _UAS_PENDING:
            # The caller's INVITE is still unanswered (the callee hung up while its 2xx was
            # being relayed): it gets a final response, never silence (RFC 3261 §13.3.1).
            headers = (reason,) if reason is not None and reason[1].startswith("Q.850") else ()
            actions += self._safely(Role.UAS, Fail(
                480, f"Temporarily Unavailable: the call ended before it was answered "
                     f"({text})", headers), now)
        for role in (Role.UAS, Role.UAC):
            leg = self.uas if role is Role.UAS else self.uac
            if leg is None or leg.state in _UAS_PENDING and role is Role.UAS:
                continue
            event = Disconnect(text, reason)
            if leg.can(event):
                actions += self._safely(role, event, now)
        return [*actions, Ended(self.outcome)]
