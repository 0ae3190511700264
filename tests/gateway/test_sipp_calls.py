"""Acceptance: calls through `gateway run` between SIPp playing the Lync FE and SIPp playing
Unified CM behind the neighbor zone (issue 5, "Tests that must pass").

- FE -> CUCM: SIPp (lync_fe_uac.xml: multipart SDP, ms-* headers) over TCP into an stunnel
  client that does mutual TLS with the "fe" certificate to the B2BUA's Microsoft listener
  (checking the gateway's cluster FQDN); the gateway routes 3001@video.example.com to the
  CUCM zone, where SIPp (cucm_uas.xml) fails the call if the INVITE or re-INVITE is
  multipart or carries ICE. The FE holds (re-INVITE sendonly) and hangs up.
- CUCM -> FE: SIPp (cucm_uac.xml) into the video listener over TCP 5060 or TLS 5061
  (stunnel client with the "cucm" certificate); the gateway routes alice.parkes@example.com
  to the Microsoft destination, an stunnel server presenting the "fe" certificate and
  requiring the gateway's, in front of SIPp (lync_fe_uas.xml). CUCM holds and hangs up.

Every count comes from SIPp's statistics on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import (
    FE_HOST,
    RunningGateway,
    Scenario,
    counters,
    cucm_behind_fe_tunnel,
    require_peers,
    run_gateway,
    run_scenario,
    serve_scenario,
    tls_files,
)
from tests.peers.procs import LOOPBACK
from tests.peers.sipp import SippResult
from tests.peers.stunnel import stunnel_client, stunnel_server

pytestmark = pytest.mark.peer

CALLS = 3
RATE = 5
UAC_TIMEOUT = 60.0
UAS_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    with run_gateway(pki, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def _context(gateway: RunningGateway, *results: SippResult, tunnel_log: str = "") -> str:
    parts = [r.describe() for r in results]
    parts.append("--- gateway log (tail) ---\n" + gateway.log())
    if tunnel_log:
        parts.append("--- stunnel log (tail) ---\n" + tunnel_log[-3000:])
    return "\n".join(parts)


def _assert_all_ok(
    gateway: RunningGateway, caller: SippResult, answered: SippResult, tunnel_log: str = ""
) -> None:
    context = _context(gateway, caller, answered, tunnel_log=tunnel_log)
    assert counters(caller) == {
        "successful": CALLS,
        "failed": 0,
        "incoming": 0,
        "outgoing": CALLS,
    }, context
    assert counters(answered)["incoming"] == CALLS, context
    assert counters(answered)["successful"] == CALLS, context
    assert counters(answered)["failed"] == 0, context
    assert gateway.peer.poll() is None, "the gateway exited:\n" + context


def test_lync_fe_calls_cucm_over_mutual_tls(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    with cucm_behind_fe_tunnel(gateway, pki, tmp_path, calls=CALLS) as (served, tunnel):
        caller = run_scenario(
            Scenario(
                "lync_fe_uac.xml",
                calls=CALLS,
                remote=(tunnel.host, tunnel.port),
                service="3001",
                rate=RATE,
                limit=CALLS,
                duration_ms=500,
                global_timeout=UAC_TIMEOUT - 10,
            ),
            tmp_path,
            timeout=UAC_TIMEOUT,
        )
        answered = served.result(UAS_TIMEOUT)
        tunnel_log = tunnel.log()
    _assert_all_ok(gateway, caller, answered, tunnel_log)
    # stunnel checked the gateway's certificate against the cluster FQDN.
    assert "Certificate accepted" in tunnel_log, tunnel_log


@pytest.mark.parametrize("video_transport", ["tcp", "tls"])
def test_cucm_calls_lync_fe(
    video_transport: str, gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    fe = Scenario(
        "lync_fe_uas.xml",
        calls=CALLS,
        keys={"fe_host": FE_HOST, "fe_port": str(gateway.ports.fe)},
        extra=("-reconnect_close", "false"),
    )
    with (
        serve_scenario(fe, tmp_path) as served,
        stunnel_server(
            tmp_path,
            connect=(LOOPBACK, served.port or 0),
            tls=tls_files(pki, "fe"),
            host=FE_HOST,
            port=gateway.ports.fe,
        ) as fe_tunnel,
    ):
        cucm = Scenario(
            "cucm_uac.xml",
            calls=CALLS,
            service="alice.parkes",
            rate=RATE,
            limit=CALLS,
            duration_ms=500,
            global_timeout=UAC_TIMEOUT - 10,
        )
        if video_transport == "tcp":
            caller = run_scenario(
                replace(cucm, remote=gateway.video_tcp),
                tmp_path,
                timeout=UAC_TIMEOUT,
            )
        else:
            with stunnel_client(
                tmp_path,
                connect=gateway.video_tls,
                ca=pki.ca_cert,
                check_host="exp01.video.example.com",
                tls=tls_files(pki, "cucm"),
            ) as cucm_tunnel:
                caller = run_scenario(
                    replace(cucm, remote=(cucm_tunnel.host, cucm_tunnel.port)),
                    tmp_path,
                    timeout=UAC_TIMEOUT,
                )
        answered = served.result(UAS_TIMEOUT)
        tunnel_log = fe_tunnel.log()
    _assert_all_ok(gateway, caller, answered, tunnel_log)
    # The FE's stunnel required and verified the gateway's client certificate.
    assert "Certificate accepted" in tunnel_log and "exp01.video.example.com" in tunnel_log, (
        tunnel_log
    )
