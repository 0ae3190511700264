"""An in-memory B2BUA: one :class:`gateway.calls.call.Call` between a scripted caller and
callee, a fake bridge standing in for ``SdpBridge`` + ``MediaSession`` (the thing under test
is call control, not the rewrite), and a clock driven by hand. No sockets, no loop.

Rewrites are held until :meth:`B2bua.finish_rewrite` (so a CANCEL or BYE can arrive while
the "ports are being bound"), unless ``auto`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.calls.actions import (
    BridgeOp,
    CallAction,
    Ended,
    Rewrite,
    Role,
    ToLeg,
)
from gateway.calls.call import Call
from gateway.calls.events import SipAction, SipInput
from gateway.views import LegSide
from media.sdp import SessionDescription, parse_sdp

__all__ = ["B2bua", "sdp"]


def sdp(tag: str, kinds: tuple[str, ...] = ("audio",)) -> SessionDescription:
    """A small SDP whose origin user names where it came from (``tag``)."""
    lines = ["v=0", f"o={tag} 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    for index, kind in enumerate(kinds):
        lines += [f"m={kind} {40000 + 2 * index} RTP/AVP 0", "a=rtpmap:0 PCMU/8000"]
    return parse_sdp(("\r\n".join(lines) + "\r\n").encode())


@dataclass
class B2bua:
    inbound: LegSide = LegSide.MICROSOFT
    hops: int = 1
    best_effort: bool = False
    early_media: bool = True
    auto: bool = True
    """Run each rewrite as soon as it is asked for."""
    now: float = 0.0
    call: Call = field(init=False)
    sent: list[tuple[Role, SipAction]] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    """Every rewrite asked for, in order."""
    pending: Rewrite | None = None
    fail_next: BaseException | None = None
    """The next rewrite raises this."""
    others: list[CallAction] = field(default_factory=list)
    """Every action that is neither SIP nor a rewrite (Started, Connected, Ended...)."""

    def __post_init__(self) -> None:
        self.call = Call("call-1", self.now, self.inbound, target_zone="CUCM",
                         hops=self.hops, best_effort=self.best_effort,
                         early_media=self.early_media)

    # -- driving ----------------------------------------------------------------------------

    def tick(self, seconds: float) -> None:
        self.now += seconds

    def invite(self, offer: SessionDescription | None) -> None:
        self.run(self.call.invite(offer, self.now))

    def caller(self, event: SipInput) -> None:
        self.run(self.call.sip(Role.UAS, event, self.now))

    def callee(self, event: SipInput) -> None:
        self.run(self.call.sip(Role.UAC, event, self.now))

    def finish_rewrite(self) -> None:
        rewrite, self.pending = self.pending, None
        assert rewrite is not None, "no rewrite pending"
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            self.run(self.call.rewrite_failed(error, self.now))
            return
        self.run(self.call.rewritten(_fake_bridge(rewrite), self.now))

    def run(self, actions: list[CallAction]) -> None:
        for action in actions:
            if isinstance(action, ToLeg):
                self.sent.append((action.role, action.action))
            elif isinstance(action, Rewrite):
                assert self.pending is None, "one rewrite at a time"
                self.rewrites.append(action)
                self.pending = action
                if self.auto:
                    self.finish_rewrite()
            else:
                self.others.append(action)

    # -- looking -----------------------------------------------------------------------------

    def to(self, role: Role) -> list[str]:
        """What went to ``role``'s peer, by action name."""
        return [type(a).__name__ for r, a in self.sent if r is role]

    def last(self, role: Role) -> SipAction:
        return [a for r, a in self.sent if r is role][-1]

    @property
    def ended(self) -> list[Ended]:
        return [a for a in self.others if isinstance(a, Ended)]


def _fake_bridge(rewrite: Rewrite) -> SessionDescription | None:
    """What the bridge would hand back: an SDP whose origin names the operation."""
    if rewrite.op in (BridgeOp.DELAYED_VIDEO_ANSWER, BridgeOp.VIDEO_REANSWER,
                      BridgeOp.MICROSOFT_REANSWER):
        return None
    kinds = tuple(m.kind for m in rewrite.sdp.media) if rewrite.sdp else ("audio", "video")
    return sdp(rewrite.op.value, kinds)
