"""A connection storm against a live SIP listener (the simulated endpoint, a real process
with the default transport limits: 512 connections per source address) while SIPp places
real calls (issue 12, defect 4).

700 connections from one address that never send a byte: past the per-source cap the
listener closes the oldest silent ones, so it holds at most 512 and its open files stay
bounded; SIPp's calls, from that same address, pass during the storm (each of its
connections takes the slot of a silent one) and after it.
"""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.procs import GatewayProcess, start_gateway, wait_until
from tests.peers.sipp import EXIT_ALL_OK, SippConfig, SippTransport, run_sipp, spawn_sipp

pytestmark = pytest.mark.peer

AOR_USER = "3001"
STORM = 700
PER_SOURCE = 512  # TransportSettings.max_connections_per_source


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("storm")
    process = start_gateway(
        ["endpoint", "--listen", "tcp:127.0.0.1:0", "--aor", f"{AOR_USER}@video.example.com"],
        expect=["tcp"],
        cwd=work,
    )
    try:
        yield process
    finally:
        process.stop()


def _open_sockets(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _sipp_uac(remote: tuple[str, int], calls: int) -> SippConfig:
    return SippConfig(
        "uac",
        SippTransport.TCP,
        calls=calls,
        remote=remote,
        rate=10,
        limit=3,
        service=AOR_USER,
        global_timeout=30,
    )


def test_storm_is_held_under_the_cap_and_sipp_calls_pass(
    endpoint: GatewayProcess, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < STORM + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, STORM + 500), hard))
    remote = endpoint.address("tcp")
    pid = endpoint.peer.pid
    baseline = _open_sockets(pid)
    storm: list[socket.socket] = []
    try:
        for _ in range(STORM):
            sock = socket.create_connection(remote, timeout=5)
            sock.setblocking(False)
            storm.append(sock)
        # SIPp calls from the same address while the storm holds its connections.
        during = spawn_sipp(_sipp_uac(remote, 5), tmp_path)
        result = during.result(40)
        context = result.describe() + "\n--- endpoint ---\n" + endpoint.peer.stderr()[-3000:]
        assert result.stats is not None, context
        assert (result.stats.successful, result.stats.failed) == (5, 0), context
        assert result.returncode == EXIT_ALL_OK, context

        wait_until(
            lambda: sum(_closed_by_peer(s) for s in storm) >= STORM - PER_SOURCE,
            10,
            "the listener closing the oldest silent connections",
        )
        closed = [i for i, s in enumerate(storm) if _closed_by_peer(s)]
        # Oldest first: the closed ones are the earliest opened.
        assert closed[: STORM - PER_SOURCE] == list(range(STORM - PER_SOURCE))
        held = _open_sockets(pid) - baseline
        assert held <= PER_SOURCE, held
    finally:
        for sock in storm:
            sock.close()
    wait_until(lambda: _open_sockets(pid) <= baseline + 2, 10, "storm sockets released")
    after = run_sipp(_sipp_uac(remote, 5), tmp_path, timeout=40)
    assert after.stats is not None, after.describe()
    assert (after.stats.successful, after.stats.failed) == (5, 0), after.describe()
    assert endpoint.peer.poll() is None
