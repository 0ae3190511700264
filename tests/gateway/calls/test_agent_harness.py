"""Call control through the real adapter and side agents, in memory (agent_harness): the
SIP each peer receives, byte-encoded, with the clock moved by hand."""

from __future__ import annotations

from gateway.views import LegSide
from media.sdp import parse_sdp
from tests.gateway.calls.agent_harness import CUCM, Harness, run
from tests.gateway.test_controller import plain_answer
from tests.gateway.test_runtime import lync_offer

MS = LegSide.MICROSOFT
TARGET = "3001@video.example.com"


def test_basic_call_microsoft_to_video_and_bye() -> None:
    async def scenario(h: Harness) -> None:
        content_type, offer = lync_offer()
        pending = h.fe.invite(TARGET, h.hop(MS), offer, content_type)
        await h.settle()
        tx, invite = h.cucm.take()
        assert invite.body and parse_sdp(invite.body).media
        h.cucm.answer(tx, invite, 180)
        callee = h.cucm.answer(tx, invite, 200,
                               body=plain_answer(parse_sdp(invite.body), CUCM.host, 50000))
        await h.settle()
        assert h.fe.statuses()[-1] == 200 and h.fe.responses()[-1].body
        assert 180 in h.fe.statuses()
        assert h.cucm.requests("ACK"), "the gateway ACKs the callee's 200"
        h.fe.confirm(pending, h.hop(MS))
        await h.settle()
        assert len(h.controller.calls) == 1 and callee is not None
        bye = h.fe.bye(h.fe.dialogs.for_response(pending.final.result()))  # type: ignore[arg-type]
        await h.settle()
        assert bye.final.result().status == 200
        assert len(h.cucm.requests("BYE")) == 1
        assert not h.controller.calls
        assert h.services.sessions[0].closed

    run(scenario)
