"""The gateway as UAS of RFC 3262 toward a video caller requiring 100rel, in memory with
the clock driven by hand: ``ReliableUas`` (what the adapter keeps per call) fed with the
caller leg's actions of a real ``Call`` (``harness.B2bua``), the way the adapter feeds it."""

from __future__ import annotations

import pytest

from gateway.calls.actions import Role
from gateway.calls.events import PrackTimeout, ResponseIn, SendAnswer, SendProvisional
from gateway.calls.reliable_uas import ReliableUas, wants_reliable
from gateway.views import LegSide
from sip.errors import ParseError
from sip.message import Request, Response, parse_message
from sip.useragent import response_for
from tests.gateway.calls.harness import B2bua, sdp

UAS, UAC = Role.UAS, Role.UAC
T1 = 0.5


def invite(require: str | None = "100rel") -> Request:
    lines = ["INVITE sip:alice@example.com SIP/2.0",
             "Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKcucm1",
             "Max-Forwards: 70", "From: <sip:3001@video.example.com>;tag=cucm",
             "To: <sip:alice@example.com>", "Call-ID: rel-1@127.0.0.1", "CSeq: 1 INVITE",
             "Contact: <sip:3001@127.0.0.1:5060;transport=tcp>"]
    if require is not None:
        lines.append(f"Require: {require}")
    message = parse_message(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode())
    assert isinstance(message, Request)
    return message


def prack(rseq: int | str, cseq: int = 1) -> Request:
    lines = ["PRACK sip:gateway@127.0.0.1 SIP/2.0",
             "Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKcucm2",
             "Max-Forwards: 70", "From: <sip:3001@video.example.com>;tag=cucm",
             "To: <sip:alice@example.com>;tag=gw", "Call-ID: rel-1@127.0.0.1",
             "CSeq: 2 PRACK", f"RAck: {rseq} {cseq} INVITE", "Content-Length: 0", "", ""]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def one_xx(request: Request, action: SendProvisional) -> Response:
    body = bytes(action.sdp) if action.sdp is not None else b""
    return response_for(request, action.status, to_tag="gw", body=body,
                        content_type="application/sdp" if body else None)


class Caller:
    """The adapter's part: the caller leg's SIP actions through ``ReliableUas``."""

    def __init__(self, b2bua: B2bua) -> None:
        self.b2bua = b2bua
        self.request = invite()
        self.reliable: ReliableUas[SendAnswer] = ReliableUas(self.request, t1=T1)
        self.wire: list[Response | SendAnswer] = []
        self.seen = 0

    def pump(self) -> None:
        actions = [a for r, a in self.b2bua.sent if r is UAS][self.seen:]
        self.seen += len(actions)
        for action in actions:
            if isinstance(action, SendProvisional) and action.status > 100:
                self.wire += self.reliable.provisional(one_xx(self.request, action),
                                                       self.b2bua.now)
            elif isinstance(action, SendAnswer):
                if not self.reliable.hold_answer(action):
                    self.wire.append(action)
                    self.reliable.final_sent()

    def tick_to(self, when: float) -> None:
        """Run the retransmission timer at each deadline up to ``when``."""
        while (deadline := self.reliable.deadline()) is not None and deadline <= when:
            self.b2bua.now = deadline
            self.wire += self.reliable.fire(deadline)
            if self.reliable.timed_out:
                self.b2bua.caller(PrackTimeout())
                self.pump()
                return
        self.b2bua.now = when


def ringing() -> tuple[B2bua, Caller]:
    b2bua = B2bua(inbound=LegSide.VIDEO, auto=True)
    caller = Caller(b2bua)
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(183, "Session Progress", sdp("callee")))
    caller.pump()
    return b2bua, caller


def test_only_require_makes_provisionals_reliable() -> None:
    assert wants_reliable(invite("100rel"))
    assert wants_reliable(invite("timer, 100rel"))
    assert not wants_reliable(invite(None))  # Supported: 100rel alone: we choose not to


def test_the_183_is_reliable_and_retransmitted_with_t1_doubling() -> None:
    b2bua, caller = ringing()
    (first,) = caller.wire
    assert isinstance(first, Response) and first.status == 183
    assert first.headers.get("Require") == "100rel" and first.headers.get("RSeq")
    caller.tick_to(b2bua.now + 8 * T1)
    sent_at = [T1, 3 * T1, 7 * T1]  # intervals T1, 2*T1, 4*T1
    assert len(caller.wire) == 1 + len(sent_at)
    assert all(r is first or (isinstance(r, Response) and r.headers.get("RSeq")
                              == first.headers.get("RSeq")) for r in caller.wire)


def test_the_2xx_is_held_until_the_prack_and_then_sent() -> None:
    b2bua, caller = ringing()
    reliable_183 = caller.wire[0]
    assert isinstance(reliable_183, Response)
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    caller.pump()
    assert b2bua.to(UAS)[-1] == "SendAnswer"  # the call asked for it...
    assert not any(isinstance(w, SendAnswer) for w in caller.wire)  # ...it waits
    assert caller.reliable.held is not None
    # A PRACK for another RSeq does not release it (481).
    rseq = int(reliable_183.headers.get("RSeq") or 0)
    assert caller.reliable.prack(prack(rseq + 1), b2bua.now)[0] == 481
    status, more, held = caller.reliable.prack(prack(rseq), b2bua.now)
    assert (status, more) == (200, []) and isinstance(held, SendAnswer)
    assert caller.reliable.deadline() is None  # retransmissions stopped
    # A repeated PRACK is now unknown.
    assert caller.reliable.prack(prack(rseq), b2bua.now)[0] == 481


def test_a_prack_without_valid_rack_is_a_parse_error() -> None:
    _, caller = ringing()
    with pytest.raises(ParseError):
        caller.reliable.prack(prack("x"), 0.0)


def test_a_second_1xx_waits_for_the_first_ones_prack() -> None:
    b2bua = B2bua(inbound=LegSide.VIDEO, auto=True)
    caller = Caller(b2bua)
    b2bua.invite(sdp("caller"))
    b2bua.callee(ResponseIn(180, "Ringing"))
    b2bua.callee(ResponseIn(183, "Session Progress", sdp("callee")))
    caller.pump()
    assert [r.status for r in caller.wire if isinstance(r, Response)] == [180]
    rseq = int(caller.wire[0].headers.get("RSeq") or 0)  # type: ignore[union-attr]
    status, more, held = caller.reliable.prack(prack(rseq), b2bua.now)
    assert status == 200 and held is None
    (second,) = more
    assert second.status == 183 and second.headers.get("RSeq") == str(rseq + 1)


def test_no_prack_for_64_t1_fails_the_caller_with_504_and_cancels_the_callee() -> None:
    b2bua, caller = ringing()
    caller.tick_to(b2bua.now + 64 * T1 + 1)
    assert caller.reliable.timed_out
    # 1 + retransmissions at T1, 3, 7, 15, 31, 63 T1 (the next would be after 64*T1).
    assert len(caller.wire) == 7
    reject = b2bua.last(UAS)
    assert type(reject).__name__ == "SendReject" and reject.status == 504  # type: ignore[union-attr]
    assert b2bua.to(UAC)[-1] == "SendCancel"
    assert b2bua.ended


def test_no_prack_while_the_2xx_is_held_fails_the_caller_and_byes_the_callee() -> None:
    b2bua, caller = ringing()
    b2bua.callee(ResponseIn(200, "OK", sdp("callee")))
    caller.pump()
    assert caller.reliable.held is not None
    caller.tick_to(b2bua.now + 64 * T1 + 1)
    reject = b2bua.last(UAS)
    assert type(reject).__name__ == "SendReject" and reject.status == 504  # type: ignore[union-attr]
    assert b2bua.to(UAC)[-1] == "SendBye"
    assert b2bua.ended
