"""The SIP transport limits of each side, counted on /metrics and /status (issue 12).

A running ``gateway run``: an oversized request over TCP to the video-side listener gets 413
and counts ``oversized`` on the video side; a peer that speaks plain text to the Microsoft
side's TLS listener counts ``tls_failed`` on the Microsoft side. Each count shows on both
``/metrics`` (``gateway_sip_transport_events_total{side,reason}``) and ``/status``
(``transport``), and on that side only.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import RunningGateway, require_peers, run_gateway

pytestmark = pytest.mark.peer

WAIT = 15.0
REASONS = {"refused", "evicted", "message_deadline", "slow_reader", "idle", "oversized",
           "tls_failed"}
SERIES = re.compile(
    r'^gateway_sip_transport_events_total\{reason="(\w+)",side="(\w+)"\} ([0-9.e+]+)$', re.M)


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    with run_gateway(pki, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def transport_metrics(gateway: RunningGateway) -> dict[tuple[str, str], float]:
    """``{(side, reason): value}`` from GET /metrics."""
    text = gateway.metrics()
    return {(side, reason): float(value) for reason, side, value in SERIES.findall(text)}


def wait_metric(gateway: RunningGateway, side: str, reason: str) -> dict[tuple[str, str], float]:
    deadline = time.monotonic() + WAIT
    seen = transport_metrics(gateway)
    while seen.get((side, reason), 0.0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = transport_metrics(gateway)
    assert seen.get((side, reason), 0.0) >= 1, (
        f"/metrics never counted {side} {reason} within {WAIT:g} s: {seen}\n{gateway.log()}")
    return seen


def oversized_options(size: int) -> bytes:
    """An OPTIONS declaring a body of ``size`` bytes (sent whole: the listener passes over it)."""
    head = (
        f"OPTIONS sip:gateway@127.0.2.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-oversized\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p\r\n"
        f"To: <sip:gateway@127.0.2.1>\r\nCall-ID: oversized-probe\r\nCSeq: 1 OPTIONS\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    return head + b"x" * size


def test_every_reason_of_both_sides_is_exported_from_the_start(gateway: RunningGateway) -> None:
    seen = transport_metrics(gateway)
    assert {reason for _, reason in seen} == REASONS
    assert {side for side, _ in seen} == {"microsoft", "video"}
    status = gateway.status()["transport"]
    assert set(status) == {"microsoft", "video"}
    assert all(set(counts) == REASONS for counts in status.values())


def test_oversized_message_on_the_video_side_is_counted(gateway: RunningGateway) -> None:
    before = transport_metrics(gateway)
    with socket.create_connection(gateway.video_tcp, timeout=WAIT) as probe:
        probe.sendall(oversized_options(70_000))  # over the default 64 KiB limit
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = probe.recv(4096)
            assert chunk, f"connection closed before an answer: {reply!r}"
            reply += chunk
    assert reply.startswith(b"SIP/2.0 413 "), reply[:200]
    seen = wait_metric(gateway, "video", "oversized")
    assert seen[("video", "oversized")] == before[("video", "oversized")] + 1
    assert seen[("microsoft", "oversized")] == before[("microsoft", "oversized")]
    status = gateway.status()["transport"]
    assert status["video"]["oversized"] == seen[("video", "oversized")]


def test_failed_tls_handshake_on_the_microsoft_side_is_counted(gateway: RunningGateway) -> None:
    before = transport_metrics(gateway)
    with socket.create_connection(gateway.microsoft, timeout=WAIT) as probe:
        probe.sendall(b"OPTIONS sip:gateway SIP/2.0\r\n\r\n")  # plain text to a TLS listener
        try:
            while probe.recv(4096):
                pass  # the gateway closes it (a TLS alert may come first)
        except ConnectionResetError:
            pass
    seen = wait_metric(gateway, "microsoft", "tls_failed")
    assert seen[("microsoft", "tls_failed")] == before[("microsoft", "tls_failed")] + 1
    assert seen[("video", "tls_failed")] == before[("video", "tls_failed")]
    status = gateway.status()["transport"]
    assert status["microsoft"]["tls_failed"] == seen[("microsoft", "tls_failed")]
