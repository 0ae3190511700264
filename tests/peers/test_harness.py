"""The peer harness proven against itself: SIPp uac against SIPp uas, directly over UDP
and TCP, and over mutual TLS through two stunnels (Debian's SIPp has no TLS)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.peers.procs import (
    Listening,
    PeerError,
    PeerProcess,
    SockKind,
    free_port,
    free_port_block,
    port_bound,
    run,
    wait_for_listeners,
)
from tests.peers.sipp import (
    EXIT_ALL_OK,
    SippConfig,
    SippProcess,
    SippStats,
    SippTransport,
    run_sipp,
    start_sipp,
)
from tests.peers.stunnel import Stunnel, TlsFiles, stunnel_client, stunnel_server

pytestmark = pytest.mark.peer

CALLS = 10
# The built-in uas keeps each call 4 s in "timewait" after the BYE before counting it.
UAS_TIMEOUT = 20.0


# ---------------------------------------------------------------------------------------
# pure helpers


STATS_HEADER = (
    "StartTime;IncomingCall(C);OutgoingCall(C);SuccessfulCall(C);FailedCall(C);"
    "FailedMaxUDPRetrans(C);Retransmissions(C);"
)


def test_stats_read_the_last_row() -> None:
    text = "\n".join(
        [STATS_HEADER, "2026-01-01\t00:00:00;0;3;1;0;0;0;", "2026-01-01\t00:00:01;0;5;3;2;2;7;"]
    )
    stats = SippStats.from_csv(text + "\n")
    assert (stats.outgoing, stats.successful, stats.failed) == (5, 3, 2)
    assert stats.retransmissions == 7
    assert stats.failures() == {"FailedCall(C)": 2, "FailedMaxUDPRetrans(C)": 2}


@pytest.mark.parametrize(
    "text", ["", STATS_HEADER, STATS_HEADER + "\nx;0;0;oops;0;0;0;", "a;b\n1;2"]
)
def test_stats_refuse_incomplete_files(text: str) -> None:
    with pytest.raises(PeerError):
        SippStats.from_csv(text)


def test_free_ports_are_bindable() -> None:
    first = free_port_block(4)
    for port in range(first, first + 4):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_port_bound_sees_listening_tcp_and_bound_udp() -> None:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp_port = tcp.getsockname()[1]
        assert not port_bound(tcp_port, SockKind.TCP)  # bound but not listening yet
        tcp.listen()
        assert port_bound(tcp_port, SockKind.TCP)
        udp.bind(("127.0.0.1", 0))
        assert port_bound(udp.getsockname()[1], SockKind.UDP)
    assert not port_bound(free_port(), SockKind.TCP)


def test_wait_for_line_and_exit_status() -> None:
    script = "import sys; print('ready 42', file=sys.stderr, flush=True); sys.exit(3)"
    with PeerProcess([sys.executable, "-c", script]) as peer:
        match = peer.wait_for_line(r"ready (\d+)", 10)
        assert match.group(1) == "42"
        assert peer.wait(10).returncode == 3


def test_wait_for_line_reports_early_exit() -> None:
    with PeerProcess([sys.executable, "-c", "print('bye')"]) as peer:
        with pytest.raises(PeerError, match="exited"):
            peer.wait_for_line("never", 10)


def test_wait_for_listeners_collects_each_transport() -> None:
    script = (
        "import sys, time\n"
        "print('INFO listening on udp:127.0.0.1:5062', file=sys.stderr, flush=True)\n"
        "time.sleep(0.2)\n"
        "print('INFO listening on tls:[::1]:5063', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    with PeerProcess([sys.executable, "-c", script]) as peer:
        found = wait_for_listeners(peer, ["udp", "tls"], 10)
        assert found["udp"] == Listening("udp", "127.0.0.1", 5062)
        assert found["tls"] == Listening("tls", "::1", 5063)
        with pytest.raises(PeerError, match="did not log"):
            wait_for_listeners(peer, ["tcp"], 0.3)
    assert peer.poll() is not None  # a failed wait leaves no process behind


def test_run_stops_an_overrunning_process() -> None:
    finished = run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert finished.timed_out and finished.returncode != 0


# ---------------------------------------------------------------------------------------
# SIPp against SIPp


@pytest.mark.parametrize("transport", [SippTransport.UDP, SippTransport.TCP])
def test_sipp_uac_against_sipp_uas(transport: SippTransport, tmp_path: Path) -> None:
    uas_config = SippConfig("uas", transport, calls=CALLS)
    with start_sipp(uas_config, tmp_path) as uas:
        assert uas.port is not None
        uac = run_sipp(
            SippConfig(
                "uac", transport, calls=CALLS, remote=("127.0.0.1", uas.port), rate=20, limit=5
            ),
            tmp_path,
        )
        served = uas.result(UAS_TIMEOUT)
    assert uac.returncode == EXIT_ALL_OK, uac.describe()
    assert uac.stats is not None and served.stats is not None
    assert (uac.stats.outgoing, uac.stats.successful, uac.stats.failed) == (CALLS, CALLS, 0)
    assert served.returncode == EXIT_ALL_OK, served.describe()
    assert (served.stats.incoming, served.stats.successful, served.stats.failed) == (
        CALLS,
        CALLS,
        0,
    ), served.describe()


def _tls(pki: LabPKI, name: str) -> TlsFiles:
    host = pki.host(name)
    return TlsFiles(host.chain, host.key, pki.ca_cert)


@contextmanager
def _tunnelled_uas(
    pki: LabPKI, tmp_path: Path, calls: int, check_host: str
) -> Iterator[tuple[SippProcess, Stunnel, Stunnel]]:
    """A TCP uas behind a stunnel server (cucm's certificate, client certificate required),
    reached through a stunnel client (the gateway's certificate) that checks ``check_host``."""
    with (
        start_sipp(SippConfig("uas", SippTransport.TCP, calls=calls), tmp_path) as uas,
        stunnel_server(
            tmp_path, connect=("127.0.0.1", uas.port or 0), tls=_tls(pki, "cucm")
        ) as server,
        stunnel_client(
            tmp_path,
            connect=(server.host, server.port),
            ca=pki.ca_cert,
            check_host=check_host,
            tls=_tls(pki, "gateway"),
        ) as client,
    ):
        yield uas, server, client


def test_sipp_over_mutual_tls_through_two_stunnels(pki: LabPKI, tmp_path: Path) -> None:
    # uac -tcp-> stunnel client -TLS-> stunnel server -tcp-> uas
    with _tunnelled_uas(pki, tmp_path, CALLS, "cucm.video.example.com") as (uas, server, client):
        uac = run_sipp(
            SippConfig(
                "uac",
                SippTransport.TCP,
                calls=CALLS,
                remote=(client.host, client.port),
                rate=20,
                limit=5,
            ),
            tmp_path,
        )
        served = uas.result(UAS_TIMEOUT)
        server_log = server.log()
    assert uac.returncode == EXIT_ALL_OK, uac.describe() + "\n" + server_log
    assert uac.stats is not None and served.stats is not None
    assert (uac.stats.successful, uac.stats.failed) == (CALLS, 0)
    assert (served.stats.incoming, served.stats.successful) == (CALLS, CALLS), served.describe()
    # The server really checked the client's certificate against the lab CA.
    assert "Certificate accepted" in server_log and "exp01.video.example.com" in server_log


def test_tls_name_mismatch_fails_the_calls(pki: LabPKI, tmp_path: Path) -> None:
    with _tunnelled_uas(pki, tmp_path, 1, "someone-else.example.com") as (uas, _, client):
        uac = run_sipp(
            SippConfig(
                "uac",
                SippTransport.TCP,
                calls=1,
                remote=(client.host, client.port),
                global_timeout=10,
            ),
            tmp_path,
            timeout=30,
        )
        client_log = client.log()
        uas_result = uas.stop()
    assert uac.returncode != EXIT_ALL_OK, uac.describe()
    assert uac.stats is None or uac.stats.successful == 0, uac.describe()
    assert uas_result.stats is None or uas_result.stats.incoming == 0
    assert "someone-else.example.com" in client_log and "rejected" in client_log.lower(), client_log
