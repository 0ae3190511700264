"""Gateway fixtures for the SIPp acceptance tests: custom SIPp scenarios, a configuration
written per test with free loopback ports and the session's lab PKI, a running
``gateway run --config`` subprocess, raw TLS SIP exchanges from a chosen source address,
and /status reads from the management port.

Addresses follow the lab (gateway/default.toml): FE 127.0.1.1, gateway 127.0.2.1, CUCM
127.0.3.1, IM&P 127.0.3.2; every port is picked free at test time because other suites run
alongside. SIPp has no TLS in Debian, so the Microsoft side runs SIPp over TCP through
stunnel (tests/peers/stunnel.py) and stunnel's outbound connection comes from 127.0.0.1:
that is the trusted host here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import ssl
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certs.pki import LabPKI
from sip.framing import StreamFramer
from sip.message import Response, parse_message
from tests.gateway.lab_routing import LAB_SEARCH_RULES, LAB_TRANSFORMS
from tests.peers.procs import (
    LISTENING,
    LOOPBACK,
    PeerProcess,
    SockKind,
    free_port,
    free_port_both,
    gateway_executable,
)
from tests.peers.sipp import (
    SippConfig,
    SippProcess,
    SippResult,
    SippTransport,
    run_sipp,
    spawn_sipp,
    start_sipp,
)
from tests.peers.stunnel import Stunnel, TlsFiles, stunnel_client

SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "sipp"
FE_HOST = "127.0.1.1"
GATEWAY_HOST = "127.0.2.1"
CUCM_HOST = "127.0.3.1"
IMP_HOST = "127.0.3.2"
MONITORED_HOST = "127.0.3.5"
CLUSTER_FQDN = "lyncexp.video.example.com"
TRUSTED_SOURCE = LOOPBACK
UNTRUSTED_SOURCE = "127.0.9.9"
GATEWAY_READY = 30.0
_runs = itertools.count(1)


def require_peers() -> None:
    """Skip (with the reason) when SIPp or stunnel is not installed."""
    missing = [p for p in ("sipp",) if shutil.which(p) is None]
    if shutil.which("stunnel4") is None and shutil.which("stunnel") is None:
        missing.append("stunnel4")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run scripts/install-peers.sh)")


def tls_files(pki: LabPKI, name: str) -> TlsFiles:
    host = pki.host(name)
    return TlsFiles(host.chain, host.key, pki.ca_cert)


# ---------------------------------------------------------------------------------------
# SIPp with the project's own scenario files


def scenario(name: str) -> Path:
    """A scenario file under tests/data/sipp."""
    path = SCENARIOS / name
    assert path.exists(), path
    return path


@dataclass(frozen=True, slots=True)
class Scenario:
    """One SIPp run of a custom scenario file."""

    file: str
    """File name under tests/data/sipp."""
    transport: SippTransport = SippTransport.TCP
    calls: int = 1
    remote: tuple[str, int] | None = None
    service: str | None = None
    rate: float | None = None
    limit: int | None = None
    duration_ms: int = 300
    """SIPp -d: the scenarios' bare <pause/> (how long a call stays up before the hold)."""
    keys: Mapping[str, str] = field(default_factory=dict)
    """SIPp -key values ([fe_host], [fe_port] ...)."""
    local_host: str = LOOPBACK
    local_port: int | None = None
    global_timeout: float = 60.0
    trace_messages: bool = False
    extra: tuple[str, ...] = ()

    def config(self) -> SippConfig:
        """The SIPp run: this scenario file (-sf) with its -d and -key values."""
        return SippConfig(
            str(scenario(self.file)),
            self.transport,
            calls=self.calls,
            remote=self.remote,
            local_host=self.local_host,
            local_port=self.local_port,
            rate=self.rate,
            limit=self.limit,
            service=self.service,
            global_timeout=self.global_timeout,
            trace_messages=self.trace_messages,
            extra=(
                "-d",
                str(self.duration_ms),
                *itertools.chain.from_iterable(("-key", k, v) for k, v in self.keys.items()),
                *self.extra,
            ),
        )


def start_scenario(run: Scenario, base: Path) -> SippProcess:
    """Start a UAC scenario in the background; `result(timeout)` waits for it."""
    return spawn_sipp(run.config(), base)


def run_scenario(run: Scenario, base: Path, *, timeout: float = 60.0) -> SippResult:
    """Run a UAC scenario to completion (retrying a failed bind with fresh ports)."""
    return run_sipp(run.config(), base, timeout=timeout)


def serve_scenario(
    run: Scenario, base: Path, *, ready_timeout: float = 10.0
) -> AbstractContextManager[SippProcess]:
    """A UAS scenario listening on a known port (free if `run.local_port` is None)."""
    return start_sipp(run.config(), base, ready_timeout=ready_timeout)


@contextmanager
def cucm_behind_fe_tunnel(
    gateway: RunningGateway,
    pki: LabPKI,
    base: Path,
    *,
    calls: int = 1,
    file: str = "cucm_uas.xml",
    host: str = CUCM_HOST,
    port: int | None = None,
    keys: Mapping[str, str] | None = None,
    trace_messages: bool = False,
    global_timeout: float = 60.0,
) -> Iterator[tuple[SippProcess, Stunnel]]:
    """SIPp plays CUCM (``file``, by default cucm_uas.xml) behind a neighbor zone (by
    default the CUCM zone's ``host`` and port), and an stunnel client plays the Lync FE's
    mutual TLS into the gateway's Microsoft listener (checking the gateway's certificate
    against the cluster FQDN). Yields (CUCM, tunnel)."""
    cucm = Scenario(
        file,
        calls=calls,
        local_host=host,
        local_port=gateway.ports.cucm if port is None else port,
        extra=("-reconnect_close", "false"),
        keys=dict(keys or {}),
        trace_messages=trace_messages,
        global_timeout=global_timeout,
    )
    with serve_scenario(cucm, base) as served, fe_tunnel(gateway, pki, base) as tunnel:
        yield served, tunnel


def fe_tunnel(gateway: RunningGateway, pki: LabPKI, base: Path) -> AbstractContextManager[Stunnel]:
    """An stunnel client playing the Lync FE's mutual TLS (the "fe" certificate) into the
    gateway's Microsoft listener, checking the gateway's certificate against the cluster
    FQDN; SIPp speaks TCP to it."""
    return stunnel_client(
        base,
        connect=gateway.microsoft,
        ca=pki.ca_cert,
        check_host=CLUSTER_FQDN,
        tls=tls_files(pki, "fe"),
    )


def counters(result: SippResult) -> dict[str, int]:
    """successful / failed / incoming / outgoing, for compact assertions."""
    assert result.stats is not None, result.describe()
    s = result.stats
    return {
        "successful": s.successful,
        "failed": s.failed,
        "incoming": s.incoming,
        "outgoing": s.outgoing,
    }


# ---------------------------------------------------------------------------------------
# the gateway under test


@dataclass(frozen=True, slots=True)
class GatewayPorts:
    """Every address a test gateway uses, picked free at start."""

    microsoft: int
    """B2BUA listener toward Microsoft (the product's 65072), TLS on GATEWAY_HOST."""
    video: int
    """Video-side UDP+TCP (5060)."""
    video_tls: int
    """Video-side TLS (5061)."""
    management: int
    """/status and /metrics on 127.0.0.1."""
    fe: int
    """Microsoft destination on FE_HOST (an stunnel server in front of SIPp)."""
    cucm: int
    """The CUCM neighbor zone's peer port on CUCM_HOST (SIPp over TCP)."""
    imp: int
    """IM&P nodes' port on IMP_HOST (the broker)."""
    monitored: int
    """The monitored zone's peer port on MONITORED_HOST."""
    media_first: int
    """First media port (a block of MEDIA_BLOCK)."""


MEDIA_BLOCK = 200


def pick_ports() -> GatewayPorts:
    media_first = random.randrange(30000, 45000, MEDIA_BLOCK)
    return GatewayPorts(
        microsoft=free_port(SockKind.TCP, GATEWAY_HOST),
        video=free_port_both(GATEWAY_HOST),
        video_tls=free_port(SockKind.TCP, GATEWAY_HOST),
        management=free_port(SockKind.TCP, LOOPBACK),
        fe=free_port(SockKind.TCP, FE_HOST),
        cucm=free_port_both(CUCM_HOST),
        imp=free_port(SockKind.TCP, IMP_HOST),
        monitored=free_port(SockKind.TCP, MONITORED_HOST),
        media_first=media_first,
    )


def gateway_toml(
    pki: LabPKI,
    ports: GatewayPorts,
    *,
    monitor_interval: float = 0.5,
    trusted: Sequence[str] = (TRUSTED_SOURCE,),
    microsoft_transport: str = "tls",
    b2bua_tables: str = "",
) -> str:
    """The lab configuration (gateway/default.toml) moved onto this test's ports;
    ``b2bua_tables``: more [b2bua.*] tables (e.g. ``[[b2bua.turn_servers]]``)."""
    hosts = ", ".join(
        f'{{ name = "fe{i + 1:02d}", address = "{a}", type = "microsoft" }}'
        for i, a in enumerate(trusted)
    )
    return f"""
[system]
host_name = "exp01"
domain = "video.example.com"
cluster_fqdn = "{CLUSTER_FQDN}"
certs = "{pki.directory}"
management = "127.0.0.1:{ports.management}"

[b2bua]
listen = "{microsoft_transport}:{GATEWAY_HOST}:{ports.microsoft}"
ms_destination = "tls:{FE_HOST}:{ports.fe}"
encryption = "required"
max_calls = 100
media_ports = "{ports.media_first}-{ports.media_first + MEDIA_BLOCK - 1}"
offer_turn = false
trusted_hosts = [{hosts}]

[b2bua.broker]
enabled = true
destinations = ["{IMP_HOST}"]
port = {ports.imp}
{b2bua_tables}
[video]
listen = [
    "udp:{GATEWAY_HOST}:{ports.video}",
    "tcp:{GATEWAY_HOST}:{ports.video}",
    "tls:{GATEWAY_HOST}:{ports.video_tls}",
]

# SIPp plays CUCM: it cannot answer OPTIONS between calls, so this zone is not monitored.
[[zones]]
name = "CUCM Neighbor"
type = "neighbor"
peers = ["{CUCM_HOST}"]
port = {ports.cucm}
transport = "tcp"
hop_count = 15
monitor = false

[[zones]]
name = "Monitored Neighbor"
type = "neighbor"
peers = ["{MONITORED_HOST}"]
port = {ports.monitored}
transport = "tcp"
monitor = true
monitor_interval = {monitor_interval}

{LAB_SEARCH_RULES}
[[search_rules]]
name = "Route to the monitored zone"
priority = 110
pattern_type = "regex"
pattern = '(4\\d{{3}})@video\\.example\\.com'
target = "Monitored Neighbor"

{LAB_TRANSFORMS}"""


class RunningGateway:
    """A `gateway run --config` subprocess and its ports."""

    def __init__(self, peer: PeerProcess, ports: GatewayPorts, config: Path) -> None:
        self.peer = peer
        self.ports = ports
        self.config = config

    @property
    def microsoft(self) -> tuple[str, int]:
        return GATEWAY_HOST, self.ports.microsoft

    @property
    def video_tcp(self) -> tuple[str, int]:
        return GATEWAY_HOST, self.ports.video

    @property
    def video_tls(self) -> tuple[str, int]:
        return GATEWAY_HOST, self.ports.video_tls

    def log(self) -> str:
        return self.peer.stderr()[-6000:]

    def status(self) -> dict[str, Any]:
        """GET /status as JSON."""
        url = f"http://127.0.0.1:{self.ports.management}/status"
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback only
            data: dict[str, Any] = json.load(reply)
        return data

    def metrics(self) -> str:
        """GET /metrics: the Prometheus text."""
        url = f"http://127.0.0.1:{self.ports.management}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback only
            text: str = reply.read().decode()
        return text

    def wait_status(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        """Re-read /status until `predicate(status)` holds (status cannot push changes)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status()
            if predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(
            f"/status never showed {what} within {timeout:g} s; last: "
            f"{json.dumps(last)[:3000]}\n--- gateway log ---\n{self.log()}"
        )


def idle(status: dict[str, Any]) -> bool:
    """A /status with no call, no media port in use and no media socket bound."""
    pool = status["port_pool"]
    return not status["calls"] and pool["in_use"] == 0 and pool["bound"] == 0


def _expected_listeners(ports: GatewayPorts, microsoft: str) -> set[tuple[str, str, int]]:
    return {
        (microsoft, GATEWAY_HOST, ports.microsoft),
        ("udp", GATEWAY_HOST, ports.video),
        ("tcp", GATEWAY_HOST, ports.video),
        ("tls", GATEWAY_HOST, ports.video_tls),
    }


@contextmanager
def run_gateway(
    pki: LabPKI,
    workdir: Path,
    *,
    overrides: Sequence[str] = (),
    monitor_interval: float = 0.5,
    microsoft_transport: str = "tls",
    b2bua_tables: str = "",
) -> Iterator[RunningGateway]:
    """Write a config for free ports and run `gateway run --config` until every listener
    is logged and /status is served; stopped (SIGTERM) on exit.

    ``microsoft_transport`` "tcp" puts the Microsoft listener on plain TCP (the product
    allows it, "not recommended"): the benchmark uses it to measure without stunnel.
    """
    ports = pick_ports()
    config = workdir / f"gateway-{next(_runs)}.toml"
    config.write_text(
        gateway_toml(
            pki,
            ports,
            monitor_interval=monitor_interval,
            microsoft_transport=microsoft_transport,
            b2bua_tables=b2bua_tables,
        )
    )
    argv = [gateway_executable(), "run", "--config", str(config)]
    for item in overrides:
        argv += ["--set", item]
    peer = PeerProcess(argv, cwd=workdir, name="gateway run")
    expected = _expected_listeners(ports, microsoft_transport)

    def ready(lines: list[str]) -> bool | None:
        found = set()
        for line in lines:
            match = LISTENING.search(line)
            if match is not None:
                found.add((match[1].lower(), match[2] or match[3], int(match[4])))
        return True if expected <= found else None

    peer.wait_for_output(ready, GATEWAY_READY, "its four listeners")
    # /status listens a little after the SIP listeners are logged.
    peer.wait_for_bound(ports.management, SockKind.TCP, 15.0)
    try:
        yield RunningGateway(peer, ports, config)
    finally:
        peer.stop()


# ---------------------------------------------------------------------------------------
# raw SIP over TLS from a chosen source address


async def tls_exchange(
    pki: LabPKI,
    target: tuple[str, int],
    request: bytes,
    *,
    source: str = TRUSTED_SOURCE,
    cert: str = "fe",
    server_hostname: str = CLUSTER_FQDN,
    timeout: float = 10.0,
) -> list[Response]:
    """Send one request over a fresh mutual-TLS connection from `source`; return every
    response up to and including the first final one."""
    context = pki.client_context(cert)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            target[0],
            target[1],
            ssl=context,
            server_hostname=server_hostname,
            local_addr=(source, 0),
        ),
        timeout,
    )
    framer = StreamFramer()
    responses: list[Response] = []
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                framer.feed(data)
                while (frame := framer.next_message()) is not None:
                    if not isinstance(frame, bytes):
                        continue
                    message = parse_message(frame)
                    if isinstance(message, Response):
                        responses.append(message)
                        if message.status >= 200:
                            return responses
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass
    return responses


@pytest.fixture
def peers_installed() -> None:
    require_peers()
