"""The issue-14 SIPp scenario files (early media, UPDATE, session timer, 100rel) checked
against SIPp stand-ins for the gateway (tests/data/sipp/standin/), so that a failure in the
gateway's own tests of these features is the gateway's, not the scenario's.

Each pairing runs both SIPps over TCP on loopback as the gateway tests do; both must count
their call successful. Negative runs show the scenarios' checks bite: a CUCM scenario fails
its call when the INVITE lacks the option tag it relies on. The early-media run also checks
that the RTP CUCM plays after its 183 arrives before the 200.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import pytest

from tests.gateway.conftest import Scenario, counters, run_scenario, serve_scenario
from tests.peers.procs import LOOPBACK
from tests.peers.sipp import SippResult

pytestmark = pytest.mark.peer

PCAP = Path("/usr/share/sip-tester/dtmf_2833_0.pcap")


def pair(tmp_path: Path, uas: str, uac: str, *, uas_keys: Mapping[str, str] = {},
         uac_keys: Mapping[str, str] = {}, timeout: float = 30.0) -> tuple[SippResult, SippResult]:
    """Run ``uac`` against ``uas`` (files under tests/data/sipp); (uas, uac) results."""
    served_config = Scenario(uas, keys=dict(uas_keys), trace_messages=True,
                             global_timeout=timeout, extra=("-reconnect_close", "false"))
    with serve_scenario(served_config, tmp_path) as served:
        assert served.port is not None
        caller = run_scenario(
            Scenario(uac, remote=(LOOPBACK, served.port), service="3001", keys=dict(uac_keys),
                     trace_messages=True, global_timeout=timeout, duration_ms=200),
            tmp_path, timeout=timeout + 10)
        callee = served.result(timeout)
    return callee, caller


def assert_both_succeeded(callee: SippResult, caller: SippResult) -> None:
    context = f"--- UAS ---\n{callee.describe()}\n--- UAC ---\n{caller.describe()}"
    assert counters(callee)["successful"] == 1 and counters(callee)["failed"] == 0, context
    assert counters(caller)["successful"] == 1 and counters(caller)["failed"] == 0, context


def received_at(messages: str, start_line: str) -> list[datetime]:
    """When SIPp received messages whose first line starts with ``start_line``."""
    out = []
    for m in re.finditer(r"-{10,} (\S+ \S+)\n\S+ message received \[\d+\] bytes :\n\n(.*)\n",
                         messages):
        if m[2].startswith(start_line):
            out.append(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f"))
    return out


def test_early_media_183_then_200_with_rtp_before_the_answer(tmp_path: Path) -> None:
    if not PCAP.exists():
        pytest.skip(f"{PCAP} missing (sip-tester ships it)")
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind((LOOPBACK, 0))
    rtp.settimeout(0.2)
    arrivals: list[datetime] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                data, _ = rtp.recvfrom(2048)
            except TimeoutError:
                continue
            if len(data) >= 12 and data[0] >> 6 == 2:  # RTP version 2
                arrivals.append(datetime.now())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        callee, caller = pair(
            tmp_path, "cucm_uas_early_media.xml", "standin/gw_uac_early_media.xml",
            uac_keys={"rtp_ip": LOOPBACK, "rtp_port": str(rtp.getsockname()[1]),
                      "supported": "timer"})
    finally:
        stop.set()
        thread.join(5)
        rtp.close()
    assert_both_succeeded(callee, caller)
    (progress,) = received_at(caller.messages, "SIP/2.0 183 ")
    answered = received_at(caller.messages, "SIP/2.0 200 ")[0]
    assert arrivals, "no RTP during early media"
    assert all(progress <= t < answered for t in arrivals), (progress, arrivals, answered)
    assert (answered - progress).total_seconds() >= 1.4


def test_update_with_sdp_mid_call_is_answered(tmp_path: Path) -> None:
    callee, caller = pair(tmp_path, "cucm_uas_update.xml", "standin/gw_uac_update.xml",
                          uac_keys={"supported": "timer"})
    assert_both_succeeded(callee, caller)
    assert re.search(r"^UPDATE sip:alice\.parkes@", caller.messages, re.M)


def test_reliable_183_is_pracked(tmp_path: Path) -> None:
    callee, caller = pair(tmp_path, "cucm_uas_100rel.xml", "standin/gw_uac_100rel.xml",
                          uac_keys={"supported": "100rel, timer"})
    assert_both_succeeded(callee, caller)
    assert re.search(r"^RAck: 1 1 INVITE", callee.messages, re.M)


def test_100rel_scenario_fails_an_invite_without_100rel_support(tmp_path: Path) -> None:
    callee, _caller = pair(tmp_path, "cucm_uas_100rel.xml", "standin/gw_uac_100rel.xml",
                           uac_keys={"supported": "timer"}, timeout=8.0)
    assert counters(callee)["successful"] == 0, callee.describe()


def test_session_timer_refreshes_are_answered_with_refresher_uac(tmp_path: Path) -> None:
    callee, caller = pair(tmp_path, "cucm_uas_session_timer.xml",
                          "standin/gw_uac_session_timer.xml",
                          uas_keys={"refresh_ms": "300"}, uac_keys={"supported": "timer"})
    assert_both_succeeded(callee, caller)
    refreshes = re.findall(r"^(INVITE|UPDATE) sip:alice\.parkes@.*$\n(?:.*\n)*?Session-Expires: "
                           r"90;refresher=uac", caller.messages, re.M)
    assert refreshes == ["INVITE", "UPDATE", "UPDATE"], caller.messages[-3000:]


def test_session_timer_scenario_fails_an_invite_without_timer_support(tmp_path: Path) -> None:
    callee, _caller = pair(tmp_path, "cucm_uas_session_timer.xml",
                           "standin/gw_uac_session_timer.xml",
                           uas_keys={"refresh_ms": "300"}, uac_keys={"supported": "100rel"},
                           timeout=8.0)
    assert counters(callee)["successful"] == 0, callee.describe()


def test_session_that_is_not_refreshed_takes_the_bye(tmp_path: Path) -> None:
    started = time.monotonic()
    callee, caller = pair(tmp_path, "cucm_uas_session_timer_stops.xml",
                          "standin/gw_uac_session_timer_bye.xml", uac_keys={"supported": "timer"})
    assert_both_succeeded(callee, caller)
    assert time.monotonic() - started < 20  # the stand-in's BYE came at once
    assert re.search(r"^Session-Expires: 90;refresher=uas", caller.messages, re.M)


def test_fe_call_cleared_by_the_gateway(tmp_path: Path) -> None:
    callee, caller = pair(tmp_path, "standin/gw_uas_fe_cleared.xml", "lync_fe_uac_cleared.xml")
    assert_both_succeeded(callee, caller)


@pytest.mark.parametrize("standin", ["standin/gw_uas_fe_update.xml",
                                     "standin/gw_uas_fe_reinvite.xml"])
def test_fe_answers_a_relayed_offer_then_holds_and_hangs_up(tmp_path: Path, standin: str) -> None:
    callee, caller = pair(tmp_path, standin, "lync_fe_uac_update.xml")
    assert_both_succeeded(callee, caller)
