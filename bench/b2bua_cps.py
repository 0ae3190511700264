"""Calls per second through the gateway B2BUA, against sippy's B2BUA under the same SIPp load.

    .venv/bin/python bench/b2bua_cps.py [--step 5] [--rates 50,100,...] [--budget 280]

Each system is driven by SIPp playing the Lync FE (tests/data/sipp/bench_fe_uac.xml: the
multipart INVITE with ms-* headers, answered, ACKed and hung up at once) toward SIPp playing
Unified CM (bench_cucm_uas.xml):

- ``gateway/tls``: SIPp -t t1 -> stunnel client (mutual TLS, "fe" cert) -> ``gateway run``
  65072 -> neighbor zone (TCP) -> SIPp UAS. The Microsoft side is TLS as in production.
- ``stunnel alone``: SIPp -> stunnel client -> stunnel server -> SIPp UAS, no B2BUA: the
  ceiling the TLS harness itself imposes (Debian's SIPp has no TLS, so stunnel is in every
  TLS figure; if the gateway's figure sits at this ceiling, stunnel is the bottleneck).
- ``gateway/tcp``: the same with the Microsoft listener on plain TCP (b2bua.listen = tcp:...),
  no stunnel.
- ``sippy/udp``: ``python -m sippy.b2bua_simple`` (PyPI sippy, the ``bench`` extra) between
  SIPp over UDP; sippy has no TCP or TLS transport.

The rate ramps (``--rates``) in steps of ``--step`` seconds (rate x step calls, SIPp -r/-m);
a step passes when every call succeeded AND the step did not overrun (SIPp throttles itself
at -l calls in flight, so a slow system would otherwise "pass" at a rate it never held). A
call whose BYE gets a 200 of another transaction (a late 2xx retransmission of the INVITE,
i.e. the ACK was processed too late) counts as failed. The first failing step ends the ramp,
then one midpoint between the last good and the first bad rate is tried. The result is the
highest passing rate; the UAS side's own failures (its checks: one plain SDP, no multipart)
are reported too (SIPp counts a UAS regexp failure only when that call ends). Total
time is bounded by ``--budget`` seconds. CPU seconds of the B2BUA process (and of the
stunnels) over the best step are printed to show where the time goes. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from certs.pki import LabPKI, init_pki  # noqa: E402
from tests.gateway.conftest import (  # noqa: E402
    CLUSTER_FQDN,
    CUCM_HOST,
    GATEWAY_HOST,
    Scenario,
    fe_tunnel,
    run_gateway,
    run_scenario,
    serve_scenario,
    tls_files,
)
from tests.peers.procs import (  # noqa: E402
    LOOPBACK,
    PeerProcess,
    SockKind,
    free_port_both,
)
from tests.peers.sipp import SippProcess, SippResult, SippTransport  # noqa: E402
from tests.peers.stunnel import stunnel_client, stunnel_server  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_RATES = (50, 100, 200, 300, 400, 500, 600, 800, 1000)
GOAL_CPS = 300
GOAL_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class Step:
    """One SIPp run at one rate."""

    rate: float
    calls: int
    successful: int
    failed: int
    uas_failed: int
    seconds: float
    cpu: dict[str, float]
    """CPU seconds used during the step, by process label."""
    target_seconds: float = 0.0
    """How long the step takes when the system keeps up with the rate."""
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        """Calls per second actually completed (SIPp falls behind a slow system: with
        -l reached it stops opening calls, so a step that passes late did not hold the rate)."""
        return self.successful / self.seconds if self.seconds else 0.0

    @property
    def kept_up(self) -> bool:
        # SIPp start-up and the last call's own length: half a second and 15 % of slack.
        return self.seconds <= self.target_seconds * 1.15 + 0.5

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.successful == self.calls and self.kept_up


@dataclass(slots=True)
class Search:
    """A ramp's steps and its best (highest all-successful) step."""

    name: str
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        good = [s for s in self.steps if s.ok]
        return max(good, key=lambda s: s.rate) if good else None

    @property
    def cps(self) -> float:
        best = self.best
        return 0.0 if best is None else best.rate


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(slots=True)
class SystemUnderTest:
    """A running B2BUA (or tunnel) with a SIPp UAS serving behind it."""

    target: tuple[str, int]
    via_transport: str
    transport: SippTransport
    uas: SippProcess
    processes: dict[str, int]


def _uas(transport: SippTransport, host: str, port: int | None) -> Scenario:
    return Scenario(
        "bench_cucm_uas.xml",
        transport=transport,
        calls=10_000_000,
        local_host=host,
        local_port=port,
        global_timeout=3600,
        keys={"uri_transport": "udp" if transport is SippTransport.UDP else "tcp"},
        # -fd 1: statistics every second, so each step's UAS failures can be read.
        extra=(("-reconnect_close", "false") if transport is SippTransport.TCP else ())
        + ("-max_socket", "5000", "-fd", "1"),
    )


@contextmanager
def gateway_tls_system(pki: LabPKI, workdir: Path) -> Iterator[SystemUnderTest]:
    overrides = [
        "b2bua.max_calls=5000",
        # 8 ports per call: room for a few hundred calls in flight.
        "b2bua.media_ports=20000-29999",
    ]
    with run_gateway(pki, workdir, overrides=overrides) as gateway:
        with ExitStack() as stack:
            uas = stack.enter_context(
                serve_scenario(_uas(SippTransport.TCP, CUCM_HOST, gateway.ports.cucm), workdir)
            )
            tunnel = stack.enter_context(fe_tunnel(gateway, pki, workdir))
            yield SystemUnderTest(
                (tunnel.host, tunnel.port),
                "TLS",
                SippTransport.TCP,
                uas,
                {"gateway": gateway.peer.pid, "stunnel": tunnel.peer.pid},
            )


@contextmanager
def gateway_tcp_system(pki: LabPKI, workdir: Path) -> Iterator[SystemUnderTest]:
    overrides = ["b2bua.max_calls=5000", "b2bua.media_ports=20000-29999"]
    with (
        run_gateway(pki, workdir, overrides=overrides, microsoft_transport="tcp") as gateway,
        serve_scenario(_uas(SippTransport.TCP, CUCM_HOST, gateway.ports.cucm), workdir) as uas,
    ):
        yield SystemUnderTest(
            gateway.microsoft, "TCP", SippTransport.TCP, uas, {"gateway": gateway.peer.pid}
        )


@contextmanager
def stunnel_system(pki: LabPKI, workdir: Path) -> Iterator[SystemUnderTest]:
    with ExitStack() as stack:
        uas = stack.enter_context(serve_scenario(_uas(SippTransport.TCP, LOOPBACK, None), workdir))
        server = stack.enter_context(
            stunnel_server(
                workdir,
                connect=(LOOPBACK, uas.port or 0),
                tls=tls_files(pki, "gateway"),
                host=GATEWAY_HOST,
            )
        )
        client = stack.enter_context(
            stunnel_client(
                workdir,
                connect=(server.host, server.port),
                ca=pki.ca_cert,
                check_host=CLUSTER_FQDN,
                tls=tls_files(pki, "fe"),
            )
        )
        yield SystemUnderTest(
            (client.host, client.port),
            "TLS",
            SippTransport.TCP,
            uas,
            {"stunnel client": client.peer.pid, "stunnel server": server.peer.pid},
        )


@contextmanager
def sippy_system(workdir: Path) -> Iterator[SystemUnderTest]:
    with serve_scenario(_uas(SippTransport.UDP, CUCM_HOST, None), workdir) as uas:
        port = free_port_both(GATEWAY_HOST)
        argv = [
            sys.executable,
            "-m",
            "sippy.b2bua_simple",
            "-f",
            "-l",
            GATEWAY_HOST,
            "-p",
            str(port),
            "-n",
            f"{CUCM_HOST}:{uas.port}",
            "-L",
            str(workdir / "sippy.log"),
        ]
        with PeerProcess(argv, cwd=workdir, name="sippy b2bua") as sippy:
            sippy.wait_for_bound(port, SockKind.UDP, 15.0)
            yield SystemUnderTest(
                (GATEWAY_HOST, port), "UDP", SippTransport.UDP, uas, {"sippy": sippy.pid}
            )


def run_step(sut: SystemUnderTest, workdir: Path, rate: float, seconds: float) -> Step:
    calls = max(1, int(rate * seconds))
    uas_before = _uas_failed(sut.uas)
    cpu_before = {name: cpu_seconds(pid) for name, pid in sut.processes.items()}
    started = time.monotonic()
    result: SippResult = run_scenario(
        Scenario(
            "bench_fe_uac.xml",
            transport=sut.transport,
            calls=calls,
            remote=sut.target,
            service="3001",
            rate=rate,
            limit=max(100, int(rate)),
            keys={"via_transport": sut.via_transport},
            global_timeout=seconds * 4 + 20,
            extra=("-max_socket", "5000"),
        ),
        workdir,
        timeout=seconds * 4 + 30,
    )
    elapsed = time.monotonic() - started
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in sut.processes.items()}
    stats = result.stats
    return Step(
        rate=rate,
        calls=calls,
        successful=stats.successful if stats else 0,
        failed=stats.failed if stats else calls,
        uas_failed=_uas_failed(sut.uas) - uas_before,
        seconds=elapsed,
        cpu=cpu,
        target_seconds=calls / rate,
        failures=stats.failures() if stats else {"no statistics": 1},
    )


def _uas_failed(uas: SippProcess) -> int:
    """The UAS's FailedCall(C) so far, from its periodic statistics file."""
    path = uas.workdir / "stats.csv"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return 0
    if len(lines) < 2:
        return 0
    header, row = lines[0].split(";"), lines[-1].split(";")
    try:
        return int(dict(zip(header, row, strict=False)).get("FailedCall(C)", "0") or 0)
    except ValueError:
        return 0


def ramp(
    name: str,
    sut: SystemUnderTest,
    workdir: Path,
    rates: Sequence[float],
    step_seconds: float,
    deadline: float,
) -> Search:
    search = Search(name)
    last_good: float | None = None
    first_bad: float | None = None
    for rate in rates:
        if time.monotonic() + step_seconds * 2 > deadline:
            break
        step = run_step(sut, workdir, rate, step_seconds)
        search.steps.append(step)
        _report(name, step)
        if not step.ok:
            first_bad = rate
            break
        last_good = rate
    if first_bad is not None and time.monotonic() + step_seconds * 2 <= deadline:
        low = last_good or 0.0
        mid = round((low + first_bad) / 2)
        if low < mid < first_bad:
            step = run_step(sut, workdir, mid, step_seconds)
            search.steps.append(step)
            _report(name, step)
    return search


def _report(name: str, step: Step) -> None:
    cpu = ", ".join(f"{k} {v:.1f}s" for k, v in step.cpu.items())
    if step.ok:
        verdict = "ok"
    elif step.failed or step.successful != step.calls:
        verdict = f"FAILED {step.failures}"
    else:
        verdict = f"FELL BEHIND (took {step.seconds:.1f}s for {step.target_seconds:.0f}s of calls)"
    sys.stdout.write(
        f"  {name:<14} {step.rate:>6g}/s: {step.successful}/{step.calls} calls in"
        f" {step.seconds:.1f}s ({step.achieved:.0f}/s), uas failed {step.uas_failed};"
        f" cpu {cpu}; {verdict}\n"
    )
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=float, default=5.0, help="seconds per rate step")
    parser.add_argument(
        "--rates",
        default=",".join(str(r) for r in DEFAULT_RATES),
        help="comma-separated calls/s ramp",
    )
    parser.add_argument("--budget", type=float, default=280.0, help="total seconds, at most")
    parser.add_argument(
        "--systems",
        default="gateway/tls,stunnel,gateway/tcp,sippy/udp",
        help="which systems to measure, in order",
    )
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    started = time.monotonic()
    results: dict[str, Search] = {}
    with tempfile.TemporaryDirectory(prefix="b2bua-cps-") as tmp:
        base = Path(tmp)
        pki, _ = init_pki(base / "pki")
        for index, name in enumerate(systems):
            # Share what is left of the budget among the systems still to run.
            left = args.budget - (time.monotonic() - started)
            deadline = time.monotonic() + left / (len(systems) - index)
            workdir = base / name.replace("/", "-")
            workdir.mkdir()
            sys.stdout.write(f"{name}:\n")
            if name == "gateway/tls":
                context = gateway_tls_system(pki, workdir)
            elif name == "gateway/tcp":
                context = gateway_tcp_system(pki, workdir)
            elif name == "stunnel":
                context = stunnel_system(pki, workdir)
            elif name == "sippy/udp":
                context = sippy_system(workdir)
            else:
                parser.error(f"unknown system {name!r}")
            with context as sut:
                results[name] = ramp(name, sut, workdir, rates, args.step, deadline)

    sys.stdout.write("\nhighest calls/s with 0 failed calls:\n")
    for name, search in results.items():
        best = search.best
        cpu = ""
        if best is not None:
            cpu = "; cpu per 100 calls: " + ", ".join(
                f"{k} {100 * v / best.calls:.2f}s" for k, v in best.cpu.items()
            )
        sys.stdout.write(f"  {name:<14} {search.cps:>6g} calls/s{cpu}\n")
    ours = results.get("gateway/tls")
    sippy = results.get("sippy/udp")
    if ours is not None and sippy is not None and sippy.cps > 0:
        ratio = ours.cps / sippy.cps
        sys.stdout.write(
            f"gateway (TLS) / sippy (UDP): {ratio:.2f}x"
            f" (goal >= {GOAL_CPS} calls/s and >= {GOAL_RATIO:g}x)\n"
        )
    stunnel = results.get("stunnel")
    if ours is not None and stunnel is not None and stunnel.cps and ours.cps >= stunnel.cps:
        sys.stdout.write("note: the TLS figure is at the stunnel ceiling (stunnel bounds it)\n")
    sys.stdout.write(f"total {time.monotonic() - started:.0f}s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
