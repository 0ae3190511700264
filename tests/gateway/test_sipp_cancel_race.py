"""Issue 12, defect 1: a CANCEL 5-20 ms after the INVITE, while the gateway is still setting
up media (binding, allocating on its TURN server), left sockets bound for good; later calls
then got "503 ... could not bind" and /status showed 0 ports in use.

`gateway run` with TURN offered (our DMZ TURN server, `python -m turn`, as the B2BUA's TURN
server), SIPp playing the Lync FE through the FE's mutual TLS (stunnel) sends 30 INVITEs each
CANCELled 5-20 ms later (lync_fe_uac_cancel.xml); SIPp plays Unified CM for those the gateway
forwarded before the CANCEL (cucm_uas_cancel.xml). Then: /status shows no call, no port held
and no socket bound, the asyncio task count is back where it was, no refusal of any kind was
counted, and ordinary calls (lync_fe_uac.xml -> cucm_uas.xml) all succeed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import (
    RunningGateway,
    Scenario,
    counters,
    cucm_behind_fe_tunnel,
    idle,
    require_peers,
    run_gateway,
    run_scenario,
)
from tests.peers.procs import PeerProcess, SockKind, free_port, random_free_udp_range

pytestmark = pytest.mark.peer

TURN_HOST = "127.0.4.1"
CANCELS = 30
CALLS = 5
SETTLE = 20.0


@pytest.fixture(scope="module")
def turn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = free_port(SockKind.UDP, TURN_HOST)
    low, high = random_free_udp_range(TURN_HOST, 400)
    argv = [sys.executable, "-m", "turn", "--listen", TURN_HOST, "--ports", str(port),
            "--relay-ports", f"{low}-{high}", "--realm", "example.com",
            "--user", "GatewayB2BUA:secret", "--allow-peer", "127.0.0.0/8"]
    workdir = tmp_path_factory.mktemp("turn")
    with PeerProcess(argv, cwd=workdir, name="turn") as turn:
        turn.wait_for_output(
            lambda lines: True if any("TURN listening on udp" in x for x in lines) else None,
            15.0, "its UDP listener")
        yield TURN_HOST, port


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory,
            turn_server: tuple[str, int]) -> Iterator[RunningGateway]:
    require_peers()
    host, port = turn_server
    tables = (f'\n[[b2bua.turn_servers]]\naddress = "{host}"\nport = {port}\n'
              'username = "GatewayB2BUA"\npassword = "secret"\n')
    with run_gateway(pki, tmp_path_factory.mktemp("gateway"), b2bua_tables=tables,
                     overrides=["b2bua.offer_turn=true"]) as running:
        yield running


def metrics(gateway: RunningGateway) -> dict[str, float]:
    text = gateway.metrics()
    found = {}
    for match in re.finditer(r'^gateway_calls_refused_total\{reason="(\w+)"\} (\S+)$', text, re.M):
        found[match[1]] = float(match[2])
    return found


def test_cancel_during_setup_leaks_nothing_and_calls_still_succeed(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    before = gateway.wait_status(idle, SETTLE, "an idle gateway")
    with cucm_behind_fe_tunnel(gateway, pki, tmp_path, calls=CANCELS,
                               file="cucm_uas_cancel.xml") as (served, tunnel):
        caller = run_scenario(
            Scenario("lync_fe_uac_cancel.xml", calls=CANCELS, remote=(tunnel.host, tunnel.port),
                     service="3001", rate=10, limit=CANCELS, keys={"via_transport": "TLS"},
                     global_timeout=60),
            tmp_path, timeout=90)
        forwarded = served.stop()
    context = f"{caller.describe()}\n--- CUCM ---\n{forwarded.describe()}\n{gateway.log()}"
    assert counters(caller) == {"successful": CANCELS, "failed": 0, "incoming": 0,
                                "outgoing": CANCELS}, context
    after = gateway.wait_status(idle, SETTLE, "no call, no port held, no socket bound")
    assert after["port_pool"]["held_back"] == 0, after["port_pool"]
    assert after["tasks"] <= before["tasks"], (before["tasks"], after["tasks"])
    refused = metrics(gateway)
    assert not any(refused.values()), refused  # a cancel is not a refusal; nothing failed

    with cucm_behind_fe_tunnel(gateway, pki, tmp_path, calls=CALLS) as (served, tunnel):
        normal = run_scenario(
            Scenario("lync_fe_uac.xml", calls=CALLS, remote=(tunnel.host, tunnel.port),
                     service="3001", rate=5, limit=CALLS, duration_ms=300, global_timeout=50),
            tmp_path, timeout=60)
        answered = served.result(30)
    context = f"{normal.describe()}\n--- CUCM ---\n{answered.describe()}\n{gateway.log()}"
    assert counters(normal) == {"successful": CALLS, "failed": 0, "incoming": 0,
                                "outgoing": CALLS}, context
    assert counters(answered)["successful"] == CALLS, context
    last = gateway.wait_status(idle, SETTLE, "no call and no port after the normal calls")
    assert last["tasks"] <= before["tasks"], (before["tasks"], last["tasks"])
    assert gateway.peer.poll() is None, context
