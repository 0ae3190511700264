"""REFER from the video side: the gateway carries out the transfer of the Microsoft client.

The video party that REFERs (``Refer-To: 3002``) is replaced by a new video leg: a plain
offer (from what Microsoft sends now) goes to the target, its answer is re-offered to
Microsoft in a re-INVITE, and the old video leg gets NOTIFYs (100, then the outcome) and a
BYE. The call holds still meanwhile (``Call.begin_transfer``: a re-INVITE gets 491); the
new leg and the Microsoft leg run their machines like any other (``Try`` / ``Update``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import replace

from gateway.call import ActiveCall
from gateway.calls.actions import CallAction, Role
from gateway.calls.events import (
    Disconnect,
    LegAction,
    ResponseIn,
    SendAck,
    SendBye,
    Timeout,
    Try,
    Update,
    reason_header,
)
from gateway.calls.leg_machine import LegMachine
from gateway.calls.refusals import EXPECTED_ERRORS, media_refusal
from gateway.calls.services import CallServices
from gateway.calls.uac_leg import UacLeg
from gateway.config import MICROSOFT_ZONE
from gateway.leg import Leg, LegRole
from gateway.routing import RouteDecision, RouteRefusal, alias_of, alias_to_uri
from gateway.sdp_bridge import sdp_of
from gateway.views import LegSide
from media.sdp import SessionDescription
from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Request, Response
from sip.stack import SipTimeoutError
from sip.transaction_server import ServerTransaction
from sip.uri import Params

Step = Callable[[ActiveCall, Callable[[], list[CallAction]], str], object]
"""The adapter's way of running an input through a call and carrying out its actions."""

__all__ = ["refer"]

logger = logging.getLogger(__name__)

SIPFRAG = "message/sipfrag;version=2.0"


async def refer(services: CallServices, step: Step, active: ActiveCall, leg: Leg,
                tx: ServerTransaction, request: Request) -> None:
    """Answer a REFER on ``leg`` and carry the transfer out."""
    stack = leg.agent.stack
    role = Role.UAS if leg is active.inbound else Role.UAC
    ms_role = role.other
    ms_leg = active.outbound if role is Role.UAS else active.inbound
    if leg.side is not LegSide.VIDEO or ms_leg is None:
        stack.respond(tx, 403, "Forbidden: only the video side may transfer")
        return
    try:
        refer_to = Address.parse(request.headers.get("Refer-To") or "")
    except ProtocolError:
        stack.respond(tx, 400, "Bad Request: missing or malformed Refer-To")
        return
    decision = services.router.route(alias_of(refer_to.uri))
    if isinstance(decision, RouteRefusal) or decision.zone == MICROSOFT_ZONE:
        stack.respond(tx, 403, f"Forbidden: cannot transfer to {alias_of(refer_to.uri)}")
        return
    if not active.core.begin_transfer():
        stack.respond(tx, 491, "Request Pending")
        return
    stack.respond(tx, 202, "Accepted")
    new: tuple[Leg, LegMachine] | None = None
    try:
        new = await _transfer(services, active, leg, ms_leg, ms_role, refer_to, decision)
    except Exception as error:  # noqa: BLE001 - the coding-error guard of the call
        active.core.end_transfer(None, role)
        now = asyncio.get_running_loop().time()
        step(active, functools.partial(
            active.core.fault, error, "transferring the call", now), "transferring the call")
        return
    if new is None:
        active.core.end_transfer(None, role)
        return
    new_leg, machine = new
    if role is Role.UAS:
        active.inbound = new_leg
    else:
        active.outbound = new_leg
    active.core.end_transfer(machine, role)


async def _transfer(services: CallServices, active: ActiveCall, old: Leg, ms_leg: Leg,
                    ms_role: Role, refer_to: Address, decision: RouteDecision
                    ) -> tuple[Leg, LegMachine] | None:
    loop = asyncio.get_running_loop()
    _notify(old, "SIP/2.0 100 Trying", active=True)
    bridge = active.bridge
    assert bridge is not None
    target = decision.targets[0]
    agent = old.agent
    hop = services.zone_hops(target.zone)[0]
    uri = replace(alias_to_uri(target.alias, refer_to.uri), params=Params(), headers=())
    try:
        offer = bridge.video_offer_for_transfer()
    except ProtocolError as error:
        _notify(old, f"SIP/2.0 500 {error.message}", active=False)
        return None
    ms_party = ms_leg.invite.from_ if ms_leg.role is LegRole.UAS else ms_leg.invite.to
    invite = agent.new_invite(uri, hop, from_=ms_party, to=Address(uri),
                              max_forwards=target.max_forwards, body=bytes(offer))
    new = Leg(LegSide.VIDEO, agent, LegRole.UAC, invite.call_id, hop, invite, call=active)
    new.local_sdp = offer
    machine = UacLeg()
    _expect(machine.handle(Try(offer), loop.time()), "SendInvite")
    new.client = agent.stack.start_request(invite, hop)
    try:
        response = await new.client.response()
    except SipTimeoutError as error:
        machine.handle(Timeout(error.transport_error), loop.time())
        bridge.pending = None
        _notify(old, "SIP/2.0 408 Request Timeout", active=False)
        logger.warning("[%s] transfer target did not answer: %s", active.call_id, error)
        return None
    if not 200 <= response.status < 300:
        machine.handle(ResponseIn(response.status, response.reason), loop.time())
        bridge.pending = None
        _notify(old, f"SIP/2.0 {response.status} {response.reason}", active=False)
        return None
    new.confirm_uac(response, new.client.transaction)
    answer = sdp_of(response) if response.body else None
    for action in machine.handle(ResponseIn(response.status, response.reason, answer),
                                 loop.time()):
        if isinstance(action, SendAck):
            new.send_ack()
    ms_machine = active.core.machine(ms_role)
    try:
        if answer is None:
            raise ProtocolError("transfer target answered without SDP", 488)
        new.remote_sdp = answer
        ms_offer = bridge.reoffer_to_microsoft(answer)
        _expect(ms_machine.handle(Update(ms_offer), loop.time()), "SendReinvite")
        ms_response = await _in_dialog_invite(ms_leg, ms_offer)
        if ms_response is None:
            ms_machine.handle(Timeout(), loop.time())
            raise ProtocolError("the Microsoft side did not answer the re-INVITE", 488)
        ms_answer = sdp_of(ms_response) if 200 <= ms_response.status < 300 else None
        for action in ms_machine.handle(
                ResponseIn(ms_response.status, ms_response.reason, ms_answer), loop.time()):
            if isinstance(action, SendAck):
                ms_leg.send_ack()
        if not 200 <= ms_response.status < 300:
            raise ProtocolError("the Microsoft side refused the re-INVITE", 488)
        if ms_answer is None:
            raise ProtocolError("Microsoft re-INVITE answer without SDP", 488)
        ms_leg.remote_sdp = ms_answer
        await bridge.microsoft_reanswer(ms_answer)
    except EXPECTED_ERRORS as error:
        bridge.pending = None
        refusal = media_refusal(error)
        for action in machine.handle(Disconnect("transfer failed"), loop.time()):
            if isinstance(action, SendBye):
                new.bye(reason_header(refusal.status, refusal.reason))
        _notify(old, f"SIP/2.0 {refusal.status} {refusal.reason}", active=False)
        return None
    old.call = None
    _notify(old, "SIP/2.0 200 OK", active=False)
    old.bye(reason_header(200, "call transferred"))
    logger.info("[%s] transferred the %s side to %s", active.call_id, ms_leg.side.value, uri)
    return new, machine


def _expect(actions: list[LegAction], name: str) -> None:
    if not any(type(a).__name__ == name for a in actions):
        raise ProtocolError(f"the leg did not {name}: {actions!r}", 500)


async def _in_dialog_invite(leg: Leg, sdp: SessionDescription) -> Response | None:
    """Send a re-INVITE with ``sdp`` on ``leg`` and wait for its final answer (the caller
    ACKs a 2xx); None on timeout."""
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
        leg.ack_for = pending.transaction
        leg.local_sdp = sdp
    return response


def _notify(leg: Leg, sipfrag: str, *, active: bool) -> None:
    state = "active;expires=60" if active else "terminated;reason=noresource"
    try:
        leg.request("NOTIFY", body=f"{sipfrag}\r\n".encode(), content_type=SIPFRAG,
                    headers=(("Event", "refer"), ("Subscription-State", state)))
    except ProtocolError as error:
        logger.warning("[%s] cannot NOTIFY: %s", leg.call_id, error.message)

