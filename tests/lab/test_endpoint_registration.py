"""The endpoint's registration recovers by itself: when the Unified CM restarts (its
connection drops, or a refresh goes unanswered), the endpoint registers again with backoff
and is reachable through the new CUCM within seconds."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from certs.pki import LabPKI
from lab.cisco.config import CucmConfig
from lab.cisco.cucm import Cucm
from lab.endpoint import Endpoint, EndpointConfig, ListenSpec, SipTarget
from lab.endpoint.registration import RETRY_MAX, retry_delay
from sip.timers import TimerSettings
from sip.transport import Transport
from tests.peers.procs import random_free_port

CUCM_HOST = "127.0.3.71"
EP1_HOST, EP2_HOST = "127.0.3.72", "127.0.3.73"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)
RECOVERY = 10.0
"""Seconds a re-registration may take after the new CUCM is up (backoff 1, 2, 4 s)."""


def test_retry_delay_backs_off_and_caps() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(20) == RETRY_MAX
    assert retry_delay(0) == 1.0


def cucm_config(pki: LabPKI, port: int, **overrides: Any) -> CucmConfig:
    return replace(
        CucmConfig(listen=(f"udp:{CUCM_HOST}:{port}", f"tcp:{CUCM_HOST}:{port}"),
                   certs=str(pki.directory), t1=0.05),
        **overrides)


@pytest.fixture
async def endpoints(pki: LabPKI) -> AsyncIterator[Callable[..., Any]]:
    started: list[Endpoint] = []

    async def make(user: str, host: str, registrar: SipTarget) -> Endpoint:
        endpoint = await Endpoint.start(EndpointConfig(
            aor=f"{user}@video.example.com",
            listen=(ListenSpec(Transport.UDP, host, 0), ListenSpec(Transport.TCP, host, 0)),
            certs=pki.directory, timers=FAST, registrar=registrar))
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        await endpoint.close()


async def wait_registered_at(node: Cucm, user: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while node.registrar.lookup(user, asyncio.get_running_loop().time()) is None:
            await asyncio.sleep(0.05)  # polling the registrar's table: it has no event


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.UDP])
async def test_endpoint_registers_again_after_cucm_restarts(
        pki: LabPKI, endpoints: Callable[..., Any], transport: Transport) -> None:
    port = random_free_port(CUCM_HOST, socket.SOCK_STREAM, socket.SOCK_DGRAM)
    # UDP has no connection to lose: the refresh (at 1 s of a 2 s binding) finds the loss.
    extra = {"max_expires": 2} if transport is Transport.UDP else {}
    first = await Cucm.start(cucm_config(pki, port, **extra))
    registrar = SipTarget(transport, CUCM_HOST, port)
    try:
        endpoint = await endpoints("3001", EP1_HOST, registrar)
        registration = endpoint.registration
        assert registration is not None and registration.count == 1
    finally:
        await first.close()
    # The loss is noticed (connection closed, or the refresh timed out).
    async with asyncio.timeout(RECOVERY):
        while registration.registered.is_set():
            await asyncio.sleep(0.05)
    registration.refreshed.clear()
    async with await Cucm.start(cucm_config(pki, port, **extra)) as second:
        await asyncio.wait_for(registration.refreshed.wait(), RECOVERY)
        assert registration.failures == 0 and registration.count >= 2
        await wait_registered_at(second, "3001", 1.0)
        # Reachable through the new CUCM: a call from 3002 connects with media.
        caller = await endpoints("3002", EP2_HOST, registrar)
        call = await caller.call("3001@video.example.com")
        await call.wait_connected(5)
        await call.wait_media(both_ways=True, min_packets=5, timeout=5)
        await call.hangup()
