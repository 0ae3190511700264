"""A party's control port (lab.control) on loopback: a call between two real endpoints,
placed and checked from outside them (both ways' media, hold/resume, hangup), the callee's
side found as the first call offered after the caller dialled, and bad requests answered
with an error while the server goes on serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from certs.pki import LabPKI
from lab.control import ControlError, ControlServer, RemoteParty
from lab.endpoint import Endpoint, EndpointConfig, ListenSpec
from lab.endpoint.cli import _Party
from sip.timers import TimerSettings
from sip.transport import Transport

A_HOST, B_HOST = "127.0.3.91", "127.0.3.92"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)


@pytest.fixture
async def pair(pki: LabPKI) -> AsyncIterator[tuple[RemoteParty, RemoteParty, Endpoint]]:
    endpoints = [await Endpoint.start(EndpointConfig(
        aor=f"{user}@video.example.com", listen=(ListenSpec(Transport.UDP, host, 0),),
        timers=FAST)) for user, host in (("3001", A_HOST), ("3002", B_HOST))]
    try:
        async with ControlServer(_Party(endpoints[0]), A_HOST, 0) as a, \
                ControlServer(_Party(endpoints[1]), B_HOST, 0) as b:
            yield RemoteParty(A_HOST, a.port), RemoteParty(B_HOST, b.port), endpoints[1]
    finally:
        for endpoint in endpoints:
            await endpoint.close()


async def test_a_call_placed_and_checked_through_control_ports(
        pair: tuple[RemoteParty, RemoteParty, Endpoint]) -> None:
    caller, callee, b = pair
    offered = int((await callee.status())["incoming"])
    udp = b.stack.listener(Transport.UDP)
    assert udp is not None
    call = await caller.call(f"sip:3002@{B_HOST}:{udp.port}", video=False)
    answered = callee.offered_after(offered)
    await call.wait_connected(5)
    for side in (call, answered):
        report = await side.wait_media(both_ways=True, min_packets=10, timeout=5)
        assert report.packets_received >= 10 and report.packets_sent >= 10
        assert report.streams == ("audio",)
    assert answered.call_id == call.call_id  # no B2BUA between them: the same Call-ID
    await call.hold()
    await call.resume()
    before = answered.media().packets_received
    await answered.wait_media(both_ways=False, min_packets=before + 10, timeout=5)
    await call.hangup()
    assert (await callee.status())["incoming"] == offered + 1


async def test_bad_requests_get_errors_and_the_server_goes_on(
        pair: tuple[RemoteParty, RemoteParty, Endpoint]) -> None:
    caller, _, _ = pair
    with pytest.raises(ControlError, match="unknown op"):
        await caller.rpc("dance")
    with pytest.raises(ControlError, match="no call handle"):
        await caller.rpc("hangup", handle="h999")
    with pytest.raises(ControlError, match="sends no MESSAGE"):
        await caller.message("imp@video.example.com", "hi", 1)
    reader, writer = await asyncio.open_connection(caller.host, caller.port)
    writer.write(b"{not json\n[1, 2]\n")
    answers = [json.loads(await reader.readline()) for _ in range(2)]
    writer.close()
    assert [a["ok"] for a in answers] == [False, False]
    assert "not JSON" in answers[0]["error"] and "JSON object" in answers[1]["error"]
    assert (await caller.status())["aor"] == "3001@video.example.com"
