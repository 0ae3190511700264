"""Admission of a new INVITE (pure checks, no side effects) and where its callee's INVITE
goes; and the bridge rewrite a :class:`~gateway.calls.actions.Rewrite` names."""

from __future__ import annotations

from dataclasses import replace

from gateway.calls.actions import BridgeOp
from gateway.calls.dialogs import Route
from gateway.calls.refusals import Refusal, rewrite_ip_from
from gateway.calls.services import CallServices
from gateway.config import MICROSOFT_ZONE
from gateway.leg import SideAgent
from gateway.metrics import RefusalReason
from gateway.routing import RouteDecision, RouteRefusal, alias_to_uri
from gateway.sdp_bridge import SdpBridge
from gateway.session_timer import UasAnswer
from gateway.views import LegSide
from media.sdp import SessionDescription
from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Request
from sip.uri import Params

__all__ = ["NO_TIMER", "admit", "asks_timer", "option_tags", "route_of", "run_rewrite"]


def admit(services: CallServices, active_calls: int, agent: SideAgent, request: Request
          ) -> Refusal | RouteDecision:
    """The admission checks (no side effects but the log)."""
    if services.draining:
        return Refusal(503, "Service Unavailable: gateway shutting down",
                       RefusalReason.DRAINING, (("Retry-After", "30"),))
    source = services.source_zone(agent.side, request)
    result = services.router.route_request(
        request, source_zone=source, identity=services.identity)
    if isinstance(result, RouteRefusal):
        metric = {404: RefusalReason.NO_ROUTE, 482: RefusalReason.LOOP,
                  483: RefusalReason.TOO_MANY_HOPS}.get(result.status)
        return Refusal(result.status, result.reason, metric)
    target_side = (LegSide.MICROSOFT if result.zone == MICROSOFT_ZONE else LegSide.VIDEO)
    if target_side is agent.side:
        return Refusal(404, f"Not Found: {result.alias} routes back to the "
                            f"{agent.side.value} side", RefusalReason.NO_ROUTE)
    limit = services.config.b2bua.max_calls
    if active_calls >= limit:
        return Refusal(503, f"Service Unavailable: call limit of {limit} reached",
                       RefusalReason.MAX_CALLS,
                       (("Retry-After", str(services.retry_after)),))
    return result


def route_of(services: CallServices, agent: SideAgent, request: Request,
             decision: RouteDecision) -> Route:
    """Where the callee's INVITE goes, and its From and To."""
    target = decision.targets[0]
    out_side = LegSide.MICROSOFT if target.zone == MICROSOFT_ZONE else LegSide.VIDEO
    uri = replace(alias_to_uri(target.alias, request.uri), params=Params(), headers=())
    from_ = request.from_
    if out_side is LegSide.MICROSOFT:
        from_ = rewrite_ip_from(from_, services.config.system.domain)
    return Route(services.agents[out_side], services.zone_hops(target.zone), uri, from_,
                  Address(uri, request.to.display_name), target.max_forwards)


async def run_rewrite(bridge: SdpBridge, op: BridgeOp, sdp: SessionDescription | None
                     ) -> SessionDescription | None:
    if op is BridgeOp.DELAYED_OFFER:
        return await bridge.delayed_offer()
    if op is BridgeOp.PLAIN_VIDEO_OFFER:
        return bridge.plain_video_offer()
    if sdp is None:
        raise ProtocolError(f"{op.value} needs an SDP", 500)
    if op is BridgeOp.MICROSOFT_OFFER:
        return await bridge.microsoft_offer(sdp)
    if op is BridgeOp.VIDEO_OFFER:
        return await bridge.video_offer(sdp)
    if op is BridgeOp.VIDEO_ANSWER:
        return await bridge.video_answer(sdp)
    if op is BridgeOp.MICROSOFT_ANSWER:
        return await bridge.microsoft_answer(sdp)
    if op is BridgeOp.DELAYED_VIDEO_OFFER:
        return bridge.delayed_video_offer(sdp)
    if op is BridgeOp.FINAL_ANSWER:
        return await bridge.final_answer(sdp)
    if op is BridgeOp.VIDEO_REANSWER or op is BridgeOp.MICROSOFT_REANSWER:
        await bridge.reanswer(microsoft=op is BridgeOp.MICROSOFT_REANSWER, answer=sdp)
        return None
    await bridge.delayed_video_answer(sdp)
    return None


NO_TIMER = UasAnswer(None)


def asks_timer(message: Request) -> bool:
    """The request carries Session-Expires or Min-SE (with ``enabled=False`` our policy
    sets no timer otherwise, so there is nothing to parse)."""
    headers = message.headers
    return any(name in headers for name in ("Session-Expires", "x", "Min-SE"))


def option_tags(request: Request, header: str) -> set[str]:
    return {tag.strip().lower() for tag in request.headers.getlist(header) if tag.strip()}


