"""The simulated endpoint against SIPp's built-in scenarios, as a real peer would see it.

- SIPp `uac` places 100 calls on the endpoint over UDP, TCP and mutual TLS (SIPp over TCP
  through an stunnel client: Debian's SIPp has no TLS); every call must succeed, counted
  from SIPp's statistics file, not just its exit code.
- The endpoint (`--call`) places one call on SIPp `uas` over UDP, TCP and TLS (through an
  stunnel server that requires the endpoint's client certificate).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.peers.procs import GatewayProcess, start_gateway
from tests.peers.sipp import (
    EXIT_ALL_OK,
    SippConfig,
    SippResult,
    SippTransport,
    run_sipp,
    start_sipp,
)
from tests.peers.stunnel import TlsFiles, stunnel_client, stunnel_server

pytestmark = pytest.mark.peer

AOR = "3001@video.example.com"
CALLS = 100
RATE = 50
LIMIT = 20
UAC_TIMEOUT = 60.0
# The built-in uas holds each call 4 s ("timewait") after the BYE.
UAS_TIMEOUT = 30.0
ENDPOINT_CERT_NAME = "endpoint.video.example.com"
# stunnel's listener for the TLS call to SIPp uas sits on cucm's lab address, so that the
# endpoint's default check (server name = target host) matches the cert's IP SAN.
CUCM_HOST = "127.0.3.1"


@pytest.fixture(scope="module")
def endpoint(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One endpoint answering on UDP, TCP and TLS for the whole module."""
    work = tmp_path_factory.mktemp("endpoint")
    process = start_gateway(
        [
            "endpoint",
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            "--listen",
            "tls:127.0.0.1:0",
            "--certs",
            str(pki.directory),
            "--aor",
            AOR,
        ],
        expect=["udp", "tcp", "tls"],
        cwd=work,
    )
    try:
        yield process
    finally:
        process.stop()


def _tls(pki: LabPKI, name: str) -> TlsFiles:
    host = pki.host(name)
    return TlsFiles(host.chain, host.key, pki.ca_cert)


def _uac(transport: SippTransport, remote: tuple[str, int]) -> SippConfig:
    return SippConfig(
        "uac",
        transport,
        calls=CALLS,
        remote=remote,
        rate=RATE,
        limit=LIMIT,
        service=AOR.partition("@")[0],
        global_timeout=UAC_TIMEOUT - 10,
    )


def _assert_all_calls_ok(
    result: SippResult, endpoint: GatewayProcess, tunnel_log: str = ""
) -> None:
    context = (
        result.describe()
        + "\n--- endpoint stderr (tail) ---\n"
        + endpoint.peer.stderr()[-4000:]
        + (f"\n--- stunnel log (tail) ---\n{tunnel_log[-4000:]}" if tunnel_log else "")
    )
    assert result.stats is not None, context
    assert result.stats.outgoing == CALLS, context
    assert result.stats.successful == CALLS, context
    assert result.stats.failed == 0, context
    assert result.returncode == EXIT_ALL_OK, context
    assert endpoint.peer.poll() is None, "the endpoint exited:\n" + context


# ---------------------------------------------------------------------------------------
# SIPp uac -> endpoint


@pytest.mark.parametrize("transport", [SippTransport.UDP, SippTransport.TCP])
def test_sipp_uac_calls_the_endpoint(
    transport: SippTransport, endpoint: GatewayProcess, tmp_path: Path
) -> None:
    remote = endpoint.address(transport.name.lower())
    result = run_sipp(_uac(transport, remote), tmp_path, timeout=UAC_TIMEOUT)
    _assert_all_calls_ok(result, endpoint)


def test_sipp_uac_calls_the_endpoint_over_tls(
    endpoint: GatewayProcess, pki: LabPKI, tmp_path: Path
) -> None:
    # SIPp -tcp-> stunnel client -mutual TLS-> endpoint's TLS listener; stunnel checks the
    # endpoint's certificate (lab CA, its DNS name) and presents the gateway's.
    with stunnel_client(
        tmp_path,
        connect=endpoint.address("tls"),
        ca=pki.ca_cert,
        check_host=ENDPOINT_CERT_NAME,
        tls=_tls(pki, "gateway"),
    ) as tunnel:
        result = run_sipp(
            _uac(SippTransport.TCP, (tunnel.host, tunnel.port)), tmp_path, timeout=UAC_TIMEOUT
        )
        tunnel_log = tunnel.log()
    _assert_all_calls_ok(result, endpoint, tunnel_log)
    assert "Certificate accepted" in tunnel_log, tunnel_log


# ---------------------------------------------------------------------------------------
# endpoint --call -> SIPp uas


def _call_uas(
    target: str, workdir: Path, pki: LabPKI, listen: str = "udp:127.0.0.1:0"
) -> tuple[int, str, str]:
    """Run `gateway endpoint --call target` to completion: (exit code, stdout, stderr)."""
    caller = start_gateway(
        [
            "endpoint",
            "--listen",
            listen,
            "--certs",
            str(pki.directory),
            "--aor",
            "3002@video.example.com",
            "--call",
            target,
            "--duration",
            "0.5",
        ],
        expect=[listen.partition(":")[0]],
        cwd=workdir,
    )
    finished = caller.peer.wait(30)
    return finished.returncode, finished.stdout, finished.stderr


def _assert_uas_served_one(
    served: SippResult, caller: tuple[int, str, str], tunnel_log: str = ""
) -> None:
    code, out, err = caller
    context = f"endpoint exit {code}\nstdout:\n{out}\nstderr:\n{err[-4000:]}\n" + served.describe()
    if tunnel_log:
        context += f"\n--- stunnel log (tail) ---\n{tunnel_log[-4000:]}"
    assert code == 0, context
    assert served.stats is not None, context
    assert (served.stats.incoming, served.stats.successful, served.stats.failed) == (1, 1, 0), (
        context
    )
    assert served.returncode == EXIT_ALL_OK, context


@pytest.mark.parametrize("transport", [SippTransport.UDP, SippTransport.TCP])
def test_endpoint_calls_sipp_uas(transport: SippTransport, pki: LabPKI, tmp_path: Path) -> None:
    name = transport.name.lower()
    with start_sipp(SippConfig("uas", transport, calls=1), tmp_path) as uas:
        caller = _call_uas(
            f"sip:service@127.0.0.1:{uas.port};transport={name}",
            tmp_path,
            pki,
            listen=f"{name}:127.0.0.1:0",
        )
        served = uas.result(UAS_TIMEOUT)
    _assert_uas_served_one(served, caller)


def test_endpoint_calls_sipp_uas_over_tls(pki: LabPKI, tmp_path: Path) -> None:
    # endpoint -mutual TLS-> stunnel server (cucm's cert, client cert required) -tcp-> uas
    with (
        start_sipp(SippConfig("uas", SippTransport.TCP, calls=1), tmp_path) as uas,
        stunnel_server(
            tmp_path, connect=("127.0.0.1", uas.port or 0), tls=_tls(pki, "cucm"), host=CUCM_HOST
        ) as tunnel,
    ):
        caller = _call_uas(
            f"sip:service@{tunnel.host}:{tunnel.port};transport=tls",
            tmp_path,
            pki,
            listen="tls:127.0.0.1:0",
        )
        served = uas.result(UAS_TIMEOUT)
        tunnel_log = tunnel.log()
    _assert_uas_served_one(served, caller, tunnel_log)
    # stunnel verified the endpoint's client certificate against the lab CA.
    assert "Certificate accepted" in tunnel_log and ENDPOINT_CERT_NAME in tunnel_log, tunnel_log
