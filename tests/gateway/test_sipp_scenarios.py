"""The SIPp scenarios of tests/data/sipp checked against each other, without the gateway.

This proves the scenarios before they judge the gateway: the CUCM UAC and the Lync FE UAS
complete their calls (hold re-INVITE and BYE included); the CUCM UAS accepts a plain SDP
and *fails the call* when the INVITE is multipart (its check has teeth: it is what the
gateway acceptance tests rely on to say "the CUCM side never sees multipart").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.conftest import (
    Scenario,
    counters,
    require_peers,
    run_scenario,
    serve_scenario,
)
from tests.peers.procs import LOOPBACK

pytestmark = pytest.mark.peer
CALLS = 2


@pytest.fixture(autouse=True)
def _peers() -> None:
    require_peers()


def test_cucm_uac_against_lync_fe_uas(tmp_path: Path) -> None:
    uas = Scenario(
        "lync_fe_uas.xml",
        calls=CALLS,
        keys={"fe_host": "127.0.1.1", "fe_port": "5061"},
        extra=("-reconnect_close", "false"),
    )
    with serve_scenario(uas, tmp_path) as served:
        assert served.port is not None
        caller = run_scenario(
            Scenario(
                "cucm_uac.xml",
                calls=CALLS,
                remote=(LOOPBACK, served.port),
                service="alice.parkes",
                duration_ms=100,
            ),
            tmp_path,
        )
        answered = served.result(30)
    assert counters(caller) == {
        "successful": CALLS,
        "failed": 0,
        "incoming": 0,
        "outgoing": CALLS,
    }, caller.describe()
    assert counters(answered)["successful"] == CALLS, answered.describe()
    assert counters(answered)["failed"] == 0, answered.describe()


def test_cucm_uas_accepts_plain_sdp(tmp_path: Path) -> None:
    with serve_scenario(Scenario("cucm_uas.xml", calls=CALLS), tmp_path) as served:
        assert served.port is not None
        caller = run_scenario(
            Scenario(
                "cucm_uac.xml",
                calls=CALLS,
                remote=(LOOPBACK, served.port),
                service="3001",
                duration_ms=100,
            ),
            tmp_path,
        )
        answered = served.result(30)
    assert counters(caller)["successful"] == CALLS, caller.describe()
    assert counters(answered)["successful"] == CALLS, answered.describe()
    assert counters(answered)["failed"] == 0, answered.describe()


def test_cucm_uas_fails_a_multipart_invite(tmp_path: Path) -> None:
    # The FE UAC's INVITE sent raw (no gateway in between) is multipart/alternative.
    with serve_scenario(Scenario("cucm_uas.xml", calls=1), tmp_path) as served:
        assert served.port is not None
        caller = run_scenario(
            Scenario(
                "lync_fe_uac.xml",
                calls=1,
                remote=(LOOPBACK, served.port),
                service="3001",
                duration_ms=100,
            ),
            tmp_path,
        )
        answered = served.result(30)
    assert answered.stats is not None, answered.describe()
    assert answered.stats.failed == 1, answered.describe()
    failures = answered.stats.failures()
    assert (
        failures.get("FailedRegexpDoesntMatch(C)", 0)
        + failures.get("FailedRegexpShouldntMatch(C)", 0)
        >= 1
    ), answered.describe()
    assert "multipart" in answered.errors, answered.errors
    # The FE side itself is content: the answer was one SDP and the hold was answered.
    assert counters(caller)["successful"] == 1, caller.describe()


def test_bench_scenarios_against_each_other(tmp_path: Path) -> None:
    # The calls/s pair (bench/b2bua_cps.py): the UAC completes INVITE/ACK/BYE, and the UAS
    # keeps cucm_uas.xml's teeth (a raw multipart INVITE fails its call).
    with serve_scenario(
        Scenario(
            "bench_cucm_uas.xml",
            calls=CALLS,
            keys={"uri_transport": "tcp"},
            extra=("-reconnect_close", "false"),
        ),
        tmp_path,
    ) as served:
        assert served.port is not None
        caller = run_scenario(
            Scenario(
                "bench_fe_uac.xml",
                calls=CALLS,
                remote=(LOOPBACK, served.port),
                service="3001",
                keys={"via_transport": "TCP"},
            ),
            tmp_path,
        )
        answered = served.result(30)
    assert counters(caller)["successful"] == CALLS, caller.describe()
    assert counters(answered)["failed"] == CALLS, answered.describe()
    assert "multipart" in answered.errors, answered.errors
