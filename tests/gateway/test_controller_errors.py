"""Coding errors vs protocol errors in call control (issue 14, the part its redesign keeps).

A coding error (here a TypeError injected into the SDP bridge: the thing under test is the
controller's error handling, not the bridge) is logged with its traceback, fails the call
with exactly one 500, clears the other leg with a BYE and gives every port back. A
protocol error from the same place keeps its own status and logs no traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway.sdp_bridge import SdpBridge
from media.sdp import SessionDescription
from sip.errors import RemoteProtocolError
from tests.gateway.test_runtime import WAIT, Lab, make_lab, only_call, wait_for

__all__ = ["make_lab"]  # the fixture, re-exported for pytest


def sent(lab: Lab, status: int) -> float:
    """How many responses with ``status`` the gateway sent (its own metrics)."""
    for family in lab.gateway.metrics.registry.collect():
        for sample in family.samples:
            if (sample.name == "gateway_sip_messages_total"
                    and sample.labels.get("direction") == "sent"
                    and sample.labels.get("method_or_status") == str(status)):
                return float(sample.value)
    return 0.0


def tracebacks(caplog: pytest.LogCaptureFixture, kind: type[BaseException]) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.exc_info is not None and isinstance(record.exc_info[1], kind)]


async def test_coding_error_in_the_answer_fails_the_call_once_with_500(
    make_lab: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lab: Lab = await make_lab()

    async def broken(self: SdpBridge, answer: SessionDescription) -> SessionDescription:
        raise TypeError("injected coding error")

    monkeypatch.setattr(SdpBridge, "video_answer", broken)
    caplog.set_level(logging.INFO)
    call, response = await lab.fe.call("3001@video.example.com")
    assert call is None and response.status == 500, response
    assert "gateway fault" in response.reason
    # The callee had answered: its leg is cleared with a BYE carrying the 500.
    await wait_for(lambda: bool(lab.endpoint.finished), "the callee's leg ended")
    (video_call,) = lab.endpoint.finished
    assert video_call.result == "completed (BYE from peer)", video_call.result
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call gone, ports back")
    assert sent(lab, 500) == 1.0
    assert tracebacks(caplog, TypeError), caplog.text
    assert "injected coding error" in caplog.text and "Traceback" in caplog.text
    ended = lab.gateway.controller.ended[-1]
    assert ended.outcome.result.value == "failed"


async def test_coding_error_in_a_reinvite_gets_500_and_clears_the_call(
    make_lab: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lab: Lab = await make_lab()
    call, response = await lab.fe.call("3001@video.example.com")
    assert call is not None and response.status == 200
    video_call = only_call(lab.endpoint)
    await asyncio.wait_for(video_call.confirmed.wait(), WAIT)

    async def broken(self: SdpBridge, offer: SessionDescription) -> SessionDescription:
        raise TypeError("injected coding error in a re-INVITE")

    monkeypatch.setattr(SdpBridge, "microsoft_offer", broken)
    hold = await lab.fe.reinvite(call, "sendonly")
    assert hold.status == 500, hold
    await asyncio.wait_for(video_call.ended.wait(), WAIT)
    await asyncio.wait_for(call.ended.wait(), WAIT)  # the FE's leg got a BYE too
    assert call.bye is not None and "cause=500" in (call.bye.headers.get("Reason") or "")
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call gone, ports back")
    assert sent(lab, 500) == 1.0
    assert tracebacks(caplog, TypeError), caplog.text


async def test_protocol_error_keeps_its_status_and_logs_no_traceback(
    make_lab: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lab: Lab = await make_lab()

    async def refused(self: SdpBridge, answer: SessionDescription) -> SessionDescription:
        raise RemoteProtocolError("Not Acceptable Here: injected refusal", 488)

    monkeypatch.setattr(SdpBridge, "video_answer", refused)
    call, response = await lab.fe.call("3001@video.example.com")
    assert call is None and response.status == 488, response
    assert response.reason == "Not Acceptable Here: injected refusal"
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call gone, ports back")
    assert sent(lab, 500) == 0.0
    assert not [r for r in caplog.records if r.exc_info is not None], caplog.text
