"""Issue 14's call-control features against SIPp over the gateway's real listeners
(`gateway run`, the FE's mutual TLS through stunnel, CUCM over TCP):

- early media: CUCM answers 183 with SDP, plays RTP, then 200: the FE gets a 183 with the
  answer rewritten for Microsoft, and the gateway's video side receives media while the
  call is still ringing (before the 200);
- UPDATE with SDP mid-call from CUCM: relayed to Microsoft as an offer, answered back in
  the UPDATE's 200;
- session timers (RFC 4028): CUCM answers "Session-Expires: 90;refresher=uas", "Min-SE:
  90" and refreshes (re-INVITE, UPDATE, UPDATE), each answered with the session kept; a
  CUCM that stops refreshing gets the gateway's BYE when the session expires, and so does
  the FE;
- 100rel: CUCM's reliable 183 ("Require: 100rel", RSeq) is PRACKed; CUCM calling with
  "Require: 100rel" gets the FE's 180 (or 183 with SDP) reliably, PRACKs it, and only
  then the 200 (the gateway as UAS of RFC 3262).
The scenario files come from tests/data/sipp (checked against SIPp stand-ins in
tests/gateway/test_sipp_scenario_files.py).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import (
    FE_HOST,
    RunningGateway,
    Scenario,
    counters,
    cucm_behind_fe_tunnel,
    idle,
    require_peers,
    run_gateway,
    run_scenario,
    serve_scenario,
    tls_files,
)
from tests.peers.procs import LOOPBACK
from tests.peers.sipp import SippResult
from tests.peers.stunnel import stunnel_server

pytestmark = pytest.mark.peer

PCAP = Path("/usr/share/sip-tester/dtmf_2833_0.pcap")
SETTLE = 15.0


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    # SIPp playing the FE does no ICE: the session-timer call must outlive ICE's timeout.
    with run_gateway(pki, tmp_path_factory.mktemp("gateway"),
                     overrides=["b2bua.ice_timeout=120"]) as running:
        yield running


def fe_call(gateway: RunningGateway, pki: LabPKI, tmp_path: Path, cucm_file: str, *,
            fe_file: str = "lync_fe_uac.xml", duration_ms: int = 300,
            cucm_keys: dict[str, str] | None = None, timeout: float = 60.0
            ) -> tuple[SippResult, SippResult, str]:
    """The FE (SIPp, mutual TLS) calls 3001; SIPp plays CUCM with ``cucm_file``. Returns
    (FE result, CUCM result, context for assertion messages)."""
    with cucm_behind_fe_tunnel(gateway, pki, tmp_path, file=cucm_file,
                               keys=cucm_keys, trace_messages=True,
                               global_timeout=timeout) as (served, tunnel):
        caller = run_scenario(
            Scenario(fe_file, remote=(tunnel.host, tunnel.port), service="3001",
                     duration_ms=duration_ms, trace_messages=True,
                     global_timeout=timeout),
            tmp_path, timeout=timeout + 10)
        callee = served.result(timeout)
    context = f"{caller.describe()}\n--- CUCM ---\n{callee.describe()}\n{gateway.log()}"
    return caller, callee, context


def cucm_call(gateway: RunningGateway, pki: LabPKI, tmp_path: Path, cucm_file: str, *,
              fe_file: str, cucm_keys: dict[str, str] | None = None
              ) -> tuple[SippResult, SippResult, str]:
    """The other way from ``fe_call``: SIPp plays CUCM with ``cucm_file`` and calls
    alice.parkes; SIPp plays the FE with ``fe_file`` behind stunnel (TLS). Returns
    (CUCM result, FE result, context for assertion messages)."""
    fe = Scenario(fe_file, trace_messages=True,
                  keys={"fe_host": FE_HOST, "fe_port": str(gateway.ports.fe)},
                  extra=("-reconnect_close", "false"))
    with (serve_scenario(fe, tmp_path) as served,
          stunnel_server(tmp_path, connect=(LOOPBACK, served.port or 0),
                         tls=tls_files(pki, "fe"), host=FE_HOST, port=gateway.ports.fe)):
        caller = run_scenario(
            Scenario(cucm_file, remote=gateway.video_tcp, service="alice.parkes",
                     duration_ms=300, trace_messages=True, keys=cucm_keys or {}),
            tmp_path)
        callee = served.result(30)
    context = f"{caller.describe()}\n--- FE ---\n{callee.describe()}\n{gateway.log()}"
    return caller, callee, context


def both_succeeded(caller: SippResult, callee: SippResult, context: str) -> None:
    assert counters(caller)["successful"] == 1 and counters(caller)["failed"] == 0, context
    assert counters(callee)["successful"] == 1 and counters(callee)["failed"] == 0, context


def received(messages: str, start: str) -> list[str]:
    """The messages SIPp received whose first line starts with ``start``."""
    blocks = re.split(r"\n(?=-{10,} )", messages)
    return [b for b in blocks if re.search(r"message received", b)
            and re.search(rf"^{re.escape(start)}", b, re.M)]


def test_early_media_183_with_sdp_is_relayed_and_media_flows_before_the_200(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    if not PCAP.exists():
        pytest.skip(f"{PCAP} missing (sip-tester ships it)")
    ringing_media: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # /status while the call rings: video-side packets already in
        while not stop.is_set():
            for call in gateway.status()["calls"]:
                if call["state"] != "ringing":
                    continue
                for leg in call["legs"]:
                    if leg["side"] == "video":
                        ringing_media.append(sum(m["packets_in"] for m in leg["media"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_early_media.xml")
    finally:
        stop.set()
        watcher.join(5)
    both_succeeded(caller, callee, context)
    (progress,) = received(caller.messages, "SIP/2.0 183 ")
    # The callee's early answer, rewritten for Microsoft (ICE candidates of ours).
    assert "Content-Type: application/sdp" in progress and "a=candidate" in progress, progress
    assert ringing_media and max(ringing_media) > 0, (ringing_media, context)
    gateway.wait_status(idle, SETTLE, "no call and no port after early media")


def test_early_media_from_microsoft_reaches_the_video_caller_as_plain_sdp(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """The other way: CUCM calls, the FE (our INVITE says ms-early-media) answers 183 with
    its SDP, then 200; CUCM gets a 183 with one plain SDP (the rewrite toward the video
    side: no ICE, no a=crypto on its RTP/AVP lines) before the 200."""
    caller, callee, context = cucm_call(gateway, pki, tmp_path, "cucm_uac.xml",
                                        fe_file="lync_fe_uas_early_media.xml")
    both_succeeded(caller, callee, context)
    (progress,) = received(caller.messages, "SIP/2.0 183 ")
    assert "Content-Type: application/sdp" in progress, progress
    assert re.search(r"^m=audio \d+ RTP/AVP ", progress, re.M), progress
    assert "a=candidate" not in progress and "a=ice-" not in progress, progress
    gateway.wait_status(idle, SETTLE, "no call and no port after early media from the FE")


def test_update_with_sdp_mid_call_is_relayed_to_microsoft_and_answered(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_update.xml",
                                      fe_file="lync_fe_uac_update.xml", duration_ms=2000)
    both_succeeded(caller, callee, context)
    # The FE got the relayed offer (a re-INVITE: what the FE takes mid-call).
    assert received(caller.messages, "INVITE sip:"), context
    gateway.wait_status(idle, SETTLE, "no call and no port after the UPDATE")


def test_session_timer_refreshed_by_cucm_keeps_the_call_up(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_session_timer.xml",
                                      duration_ms=2500, cucm_keys={"refresh_ms": "500"})
    both_succeeded(caller, callee, context)  # CUCM checks each refresh's 200
    answers = received(callee.messages, "SIP/2.0 200 ")
    kept = [a for a in answers if re.search(r"^Session-Expires: *90;refresher=uac", a, re.M)]
    assert len(kept) == 3, context
    gateway.wait_status(idle, SETTLE, "no call and no port after the refreshed call")


def test_session_timer_not_refreshed_clears_the_call_with_bye_on_both_legs(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    started = time.monotonic()
    caller, callee, context = fe_call(gateway, pki, tmp_path,
                                      "cucm_uas_session_timer_stops.xml",
                                      fe_file="lync_fe_uac_cleared.xml", timeout=100.0)
    both_succeeded(caller, callee, context)  # each got the gateway's BYE in time
    elapsed = time.monotonic() - started
    assert 55.0 <= elapsed < 80.0, (elapsed, context)  # due at 90 - min(32, 30) = 60 s
    (bye,) = received(callee.messages, "BYE sip:")
    assert re.search(r"^Reason: SIP ;cause=408", bye, re.M), bye
    gateway.wait_status(idle, SETTLE, "no call and no port after the expiry")


def test_reliable_183_from_the_video_side_is_pracked(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    caller, callee, context = fe_call(gateway, pki, tmp_path, "cucm_uas_100rel.xml")
    both_succeeded(caller, callee, context)
    (prack,) = received(callee.messages, "PRACK sip:")
    assert re.search(r"^RAck: 1 \d+ INVITE", prack, re.M), prack
    gateway.wait_status(idle, SETTLE, "no call and no port after the reliable 183")


@pytest.mark.parametrize(("fe_file", "status"), [("lync_fe_uas.xml", "180"),
                                                 ("lync_fe_uas_early_media.xml", "183")])
def test_video_caller_requiring_100rel_gets_reliable_provisionals_and_connects(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path, fe_file: str, status: str
) -> None:
    """CUCM calls with "Require: 100rel" (RFC 3262 §3): the FE's 180 (or 183 with SDP)
    reaches CUCM with Require: 100rel and RSeq, CUCM PRACKs it and gets 200, and the 200
    to the INVITE comes only after that (the scenario fails on any other order)."""
    caller, callee, context = cucm_call(
        gateway, pki, tmp_path, "cucm_uac_100rel_hold.xml", fe_file=fe_file,
        cucm_keys={"domain": "example.com", "caller": "3001",
                   "caller_domain": "video.example.com"})
    both_succeeded(caller, callee, context)
    (reliable,) = received(caller.messages, f"SIP/2.0 {status} ")
    assert re.search(r"^Require: *100rel", reliable, re.M), reliable
    assert re.search(r"^RSeq: *\d+", reliable, re.M), reliable
    if status == "183":
        assert "Content-Type: application/sdp" in reliable, reliable
    (prack_ok,) = [m for m in received(caller.messages, "SIP/2.0 200 ")
                   if re.search(r"^CSeq: *2 PRACK", m, re.M)]
    gateway.wait_status(idle, SETTLE, "no call and no port after the PRACKed call")
