"""Call-control behaviour the issue-14 redesign must keep, judged by SIPp over the gateway's
real listeners (`gateway run`, the FE's mutual TLS through stunnel, CUCM over TCP):

- Require: an option tag the gateway does not implement gets 420 with Unsupported naming it
  (RFC 3261 §8.2.2.3), from the video side and from the Microsoft side. ``timer``
  (RFC 4028) is implemented and taken on both; ``100rel`` (RFC 3262) is taken on the video
  side (the gateway sends its 1xx reliably, test_sipp_call_features.py) and still gets 420
  on the Microsoft side (no reliable 1xx toward Microsoft).
- A callee answering audio + video with only m=audio (RFC 3264 §6) makes the caller get
  502 naming the callee's fault, and the callee's leg is ACKed and cleared with BYE.
- A best_effort zone whose peer refuses the SRTP offer (488) gets the INVITE again with
  plain RTP, and the call completes (no 488 reaches Microsoft).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import (
    CUCM_HOST,
    RunningGateway,
    Scenario,
    counters,
    cucm_behind_fe_tunnel,
    fe_tunnel,
    idle,
    require_peers,
    run_gateway,
    run_scenario,
)
from tests.peers.procs import free_port_both
from tests.peers.sipp import SippResult

pytestmark = pytest.mark.peer

BEST_EFFORT_HOST = "127.0.3.7"
SETTLE = 15.0


def best_effort_tables(port: int) -> str:
    """A second CUCM zone with media_encryption = "best_effort", reached by 5xxx."""
    return f"""
[[zones]]
name = "Best Effort CUCM"
type = "neighbor"
peers = ["{BEST_EFFORT_HOST}"]
port = {port}
transport = "tcp"
hop_count = 15
monitor = false
media_encryption = "best_effort"

[[search_rules]]
name = "Route to the best-effort zone"
priority = 90
pattern_type = "regex"
pattern = '(5\\d{{3}})@video\\.example\\.com'
target = "Best Effort CUCM"
"""


@pytest.fixture(scope="module")
def best_effort_port() -> int:
    return free_port_both(BEST_EFFORT_HOST)


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory,
            best_effort_port: int) -> Iterator[RunningGateway]:
    require_peers()
    with run_gateway(pki, tmp_path_factory.mktemp("gateway"),
                     b2bua_tables=best_effort_tables(best_effort_port)) as running:
        yield running


def final_responses(messages: str, status: int) -> list[str]:
    """The traced `SIP/2.0 <status> ...` messages (start line and headers)."""
    blocks = re.split(r"\n(?=-{5,}|\S.*message (?:sent|received))", messages)
    return [b for b in blocks if re.search(rf"^SIP/2\.0 {status} ", b, re.M)]


def assert_420_naming(caller: SippResult, gateway: RunningGateway, tag: str) -> None:
    """The caller's call completed on a 420 whose Unsupported names ``tag``."""
    context = f"{caller.describe()}\n{gateway.log()}"
    assert counters(caller)["successful"] == 1, context
    refusals = final_responses(caller.messages, 420)
    assert refusals and re.search(rf"^Unsupported: *{re.escape(tag)} *$", refusals[0],
                                  re.M | re.I), context


# -- 420 Bad Extension -------------------------------------------------------------------


def video_require_call(gateway: RunningGateway, tmp_path: Path, tag: str) -> SippResult:
    """SIPp plays CUCM and calls alice.parkes with "Require: ``tag``" on the video side."""
    return run_scenario(
        Scenario("require_uac.xml", remote=gateway.video_tcp, local_host=CUCM_HOST,
                 service="alice.parkes", trace_messages=True,
                 keys={"require": tag, "domain": "example.com", "caller": "3001",
                       "caller_domain": "video.example.com"}),
        tmp_path)


@pytest.mark.parametrize("tag", ["foo", "replaces"])
def test_video_side_require_gets_420_naming_the_tag(
    gateway: RunningGateway, tmp_path: Path, tag: str
) -> None:
    caller = video_require_call(gateway, tmp_path, tag)
    assert_420_naming(caller, gateway, tag)
    gateway.wait_status(idle, SETTLE, "nothing set up for a 420")


@pytest.mark.parametrize("tag", ["timer", "100rel"])
def test_video_side_require_timer_is_taken(gateway: RunningGateway, tmp_path: Path,
                                           tag: str) -> None:
    """RFC 4028 and, on the video side, RFC 3262 are implemented: "Require: timer" or
    "Require: 100rel" is no reason to refuse; the INVITE goes on to routing (here to an FE
    that is not running: a 5xx, never a 420)."""
    caller = video_require_call(gateway, tmp_path, tag)
    context = f"{caller.describe()}\n{gateway.log()}"
    assert not final_responses(caller.messages, 420), context
    assert re.search(r"^SIP/2\.0 5\d\d ", caller.messages, re.M), context
    gateway.wait_status(idle, SETTLE, "nothing left of the refused call")


@pytest.mark.parametrize("tag", ["foo", "100rel"])
def test_microsoft_side_require_gets_420_naming_the_tag(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path, tag: str
) -> None:
    with fe_tunnel(gateway, pki, tmp_path) as tunnel:
        caller = run_scenario(
            Scenario("require_uac.xml", remote=(tunnel.host, tunnel.port), service="3001",
                     trace_messages=True,
                     keys={"require": tag, "domain": "video.example.com",
                           "caller": "alice.parkes", "caller_domain": "example.com"}),
            tmp_path)
    assert_420_naming(caller, gateway, tag)


# -- the callee's fault ---------------------------------------------------------------


def test_callee_answering_too_few_m_lines_gives_the_caller_502_and_is_cleared(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    with cucm_behind_fe_tunnel(gateway, pki, tmp_path,
                               file="cucm_uas_audio_only.xml") as (served, tunnel):
        caller = run_scenario(
            Scenario("lync_fe_uac_502.xml", remote=(tunnel.host, tunnel.port), service="3001",
                     trace_messages=True),
            tmp_path)
        callee = served.result(30)
    context = f"{caller.describe()}\n--- CUCM ---\n{callee.describe()}\n{gateway.log()}"
    assert counters(caller)["successful"] == 1, context
    # The CUCM leg got its ACK and then a BYE with Reason cause=502.
    assert counters(callee) == {"successful": 1, "failed": 0, "incoming": 1,
                                "outgoing": 0}, context
    refusal = final_responses(caller.messages, 502)
    assert refusal, context
    phrase = re.search(r"^SIP/2\.0 502 (.*)$", refusal[0], re.M)
    assert phrase is not None and "video side answered" in phrase[1], phrase
    assert phrase[1].endswith("with 1 (audio), against RFC 3264"), phrase[1]
    gateway.wait_status(idle, SETTLE, "no call and no port after the 502")


# -- Best Effort encryption ---------------------------------------------------------------


def test_best_effort_zone_offers_plain_rtp_after_the_srtp_offer_is_refused(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path, best_effort_port: int
) -> None:
    with cucm_behind_fe_tunnel(gateway, pki, tmp_path, file="cucm_uas_refuses_srtp.xml",
                               host=BEST_EFFORT_HOST, port=best_effort_port) as (served, tunnel):
        caller = run_scenario(
            Scenario("lync_fe_uac.xml", remote=(tunnel.host, tunnel.port), service="5001",
                     duration_ms=300),
            tmp_path)
        callee = served.result(30)
    context = f"{caller.describe()}\n--- CUCM ---\n{callee.describe()}\n{gateway.log()}"
    # Microsoft's call completed (200, hold, BYE): no 488 reached it.
    assert counters(caller) == {"successful": 1, "failed": 0, "incoming": 0,
                                "outgoing": 1}, context
    # The callee refused the SAVP offer, then took the AVP one (its checks fail otherwise).
    assert counters(callee)["successful"] == 1 and counters(callee)["failed"] == 0, context
    assert "offering plain RTP (best effort)" in gateway.peer.stderr(), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the best-effort call")
