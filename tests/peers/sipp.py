"""Run SIPp (Debian's sip-tester 3.6.1) and read its results from its statistics file.

SIPp's exit code only says "some call failed"; the counts come from its `-trace_stat`
CSV (cumulative "(C)" columns of the last row, written when the test ends). Every run gets
its own work directory, control port (`-cp`) and media ports (`-mp`, four consecutive UDP
ports: audio RTP/RTCP and video RTP/RTCP), because other suites run SIPp concurrently and
SIPp's defaults (8888, 6000) would collide. A run that fails to bind (exit 254) is retried
with fresh ports.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.procs import (
    LOOPBACK,
    Finished,
    PeerError,
    PeerProcess,
    SockKind,
    free_port,
    free_port_block,
    free_port_both,
    require,
)

# SIPp exit codes (sipp.1): 0 all calls succeeded, 1 some failed, 97 stopped by command,
# 99 normal exit with no call processed, 255 fatal error, 254 fatal error binding a socket.
EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BIND_ERROR = 254
BIND_RETRIES = 5
MEDIA_PORTS = 4
_runs = itertools.count(1)


class SippTransport(enum.Enum):
    """SIPp `-t` modes used here (Debian's build has no TLS: TLS goes through stunnel)."""

    UDP = "u1"
    TCP = "t1"

    @property
    def sock_kind(self) -> SockKind:
        return SockKind.UDP if self is SippTransport.UDP else SockKind.TCP


@dataclass(frozen=True, slots=True)
class SippStats:
    """The cumulative counters of SIPp's final statistics row."""

    successful: int
    """SuccessfulCall(C)."""
    failed: int
    """FailedCall(C)."""
    incoming: int
    """IncomingCall(C): calls created by a received INVITE (UAS)."""
    outgoing: int
    """OutgoingCall(C): calls SIPp placed (UAC)."""
    retransmissions: int
    """Retransmissions(C)."""
    counters: Mapping[str, str] = field(repr=False)
    """Every column of the last row, by header name."""

    @classmethod
    def from_csv(cls, text: str) -> SippStats:
        """Parse a `-trace_stat` file; PeerError if it holds no data row."""
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise PeerError(f"SIPp statistics file has no data row:\n{text[:2000]}")
        header = lines[0].split(";")
        row = lines[-1].split(";")
        counters = dict(zip(header, row, strict=False))

        def count(name: str) -> int:
            try:
                return int(counters[name])
            except (KeyError, ValueError):
                raise PeerError(f"SIPp statistics lack a numeric {name}") from None

        return cls(
            successful=count("SuccessfulCall(C)"),
            failed=count("FailedCall(C)"),
            incoming=count("IncomingCall(C)"),
            outgoing=count("OutgoingCall(C)"),
            retransmissions=count("Retransmissions(C)"),
            counters=counters,
        )

    def failures(self) -> dict[str, int]:
        """The non-zero Failed*(C) counters, to explain a failed run."""
        out: dict[str, int] = {}
        for name, value in self.counters.items():
            if name.startswith("Failed") and name.endswith("(C)") and value not in ("", "0"):
                out[name] = int(value) if value.isdigit() else -1
        return out


@dataclass(frozen=True, slots=True)
class SippResult:
    """What one SIPp run produced."""

    process: Finished
    """Exit code and console output."""
    stats: SippStats | None
    """Final statistics, None if SIPp died before writing any."""
    errors: str
    """The `-trace_err` log: unexpected messages and warnings."""
    messages: str
    """The `-trace_msg` log when enabled, else empty."""

    @property
    def returncode(self) -> int:
        return self.process.returncode

    def describe(self) -> str:
        """A readable dump for assertion messages."""
        stats = "no statistics"
        if self.stats is not None:
            stats = (
                f"successful={self.stats.successful} failed={self.stats.failed} "
                f"incoming={self.stats.incoming} outgoing={self.stats.outgoing} "
                f"retrans={self.stats.retransmissions} failures={self.stats.failures()}"
            )
        return (
            f"{self.process.describe()}\n--- statistics ---\n{stats}\n"
            f"--- errors log (tail) ---\n{self.errors[-3000:]}\n"
            f"--- messages (tail) ---\n{self.messages[-4000:]}"
        )


@dataclass(frozen=True, slots=True)
class SippConfig:
    """One SIPp invocation, before ports are picked."""

    scenario: str
    """Built-in scenario name for `-sn` (uac, uas...), or a scenario file for `-sf` (*.xml)."""
    transport: SippTransport
    """`-t` mode."""
    calls: int
    """`-m`: exit after this many calls."""
    remote: tuple[str, int] | None = None
    """Where a UAC sends (host, port); None for a UAS."""
    local_host: str = LOOPBACK
    """`-i`: address to bind and advertise."""
    local_port: int | None = None
    """`-p`: None lets SIPp pick (a UAC); a UAS needs a known one (see start_uas)."""
    rate: float | None = None
    """`-r`: calls per second."""
    limit: int | None = None
    """`-l`: simultaneous calls."""
    service: str | None = None
    """`-s`: user part of the Request-URI."""
    global_timeout: float = 60.0
    """`-timeout` (with `-timeout_error`): SIPp's own give-up time."""
    trace_messages: bool = False
    """`-trace_msg`: keep every message sent and received (diagnostics)."""
    extra: tuple[str, ...] = ()
    """Further raw options."""


def sipp_argv(
    config: SippConfig, workdir: Path, *, local_port: int | None, control_port: int, media_port: int
) -> list[str]:
    """The full SIPp command line for `config`, writing its files under `workdir`."""
    if config.scenario.endswith(".xml"):
        argv = [require("sipp"), "-sf", config.scenario]
    else:
        argv = [require("sipp"), "-sn", config.scenario]
    if config.remote is not None:
        host, port = config.remote
        argv.append(f"{host}:{port}")
    argv += ["-t", config.transport.value, "-i", config.local_host]
    if local_port is not None:
        argv += ["-p", str(local_port)]
    argv += ["-m", str(config.calls)]
    if config.rate is not None:
        argv += ["-r", f"{config.rate:g}"]
    if config.limit is not None:
        argv += ["-l", str(config.limit)]
    if config.service is not None:
        argv += ["-s", config.service]
    argv += [
        "-nostdin",
        "-cp",
        str(control_port),
        "-mp",
        str(media_port),
        "-timeout",
        f"{config.global_timeout:g}s",
        "-timeout_error",
        "-trace_stat",
        "-stf",
        str(workdir / "stats.csv"),
        "-trace_err",
        "-error_file",
        str(workdir / "errors.log"),
    ]
    if config.transport is SippTransport.TCP:
        # A peer closing the connection after the last BYE must not fail the calls that
        # sit in the built-in uas's 4 s "timewait" (SIPp would count E_FAILED_TCP_CLOSED).
        argv += ["-reconnect_close", "false"]
    if config.trace_messages:
        argv += ["-trace_msg", "-message_file", str(workdir / "messages.log")]
    argv += list(config.extra)
    return argv


class SippProcess:
    """A started SIPp; `result()` waits for it and reads its statistics."""

    def __init__(self, config: SippConfig, workdir: Path, argv: Sequence[str], port: int | None):
        self.config = config
        self.workdir = workdir
        self.port = port
        """The local SIP port when fixed (always for a UAS)."""
        self.peer = PeerProcess(argv, cwd=workdir, name=f"sipp {Path(config.scenario).stem}")

    def result(self, timeout: float) -> SippResult:
        """Wait up to `timeout` s for SIPp to finish (stopping it after that)."""
        finished = self.peer.wait(timeout)
        return self._collect(finished)

    def stop(self) -> SippResult:
        return self._collect(self.peer.stop())

    def _collect(self, finished: Finished) -> SippResult:
        stats_text = _read(self.workdir / "stats.csv")
        stats = SippStats.from_csv(stats_text) if stats_text.strip() else None
        errors = _read(self.workdir / "errors.log")
        return SippResult(finished, stats, errors, _read(self.workdir / "messages.log"))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _workdir(base: Path, scenario: str) -> Path:
    path = base / f"sipp-{Path(scenario).stem}-{next(_runs)}"
    path.mkdir(parents=True)
    return path


def spawn_sipp(config: SippConfig, base: Path, *, local_port: int | None = None) -> SippProcess:
    """Start SIPp in the background (fresh control and media ports); `result()` waits."""
    port = local_port if local_port is not None else config.local_port
    workdir = _workdir(base, config.scenario)
    argv = sipp_argv(
        config,
        workdir,
        local_port=port,
        control_port=free_port(SockKind.UDP, config.local_host),
        media_port=free_port_block(MEDIA_PORTS, config.local_host),
    )
    return SippProcess(config, workdir, argv, port)


def run_sipp(config: SippConfig, base: Path, *, timeout: float = 60.0) -> SippResult:
    """Run SIPp in the foreground until it exits (a UAC placing its calls)."""
    for _attempt in range(BIND_RETRIES):
        result = spawn_sipp(config, base).result(timeout)
        if result.returncode != EXIT_BIND_ERROR:
            return result
    raise PeerError("SIPp could not bind its ports:\n" + result.describe())


@contextmanager
def start_sipp(
    config: SippConfig, base: Path, *, ready_timeout: float = 10.0
) -> Iterator[SippProcess]:
    """Start SIPp in the background with a known local port, ready once that port is bound.

    Used for a UAS: the peer under test needs the port to call. Stopped on exit if still
    running; call `result()` inside the block to wait for its calls to finish.
    """
    last: Finished | None = None
    for _attempt in range(BIND_RETRIES):
        port = config.local_port or free_port_both(config.local_host)
        proc = spawn_sipp(config, base, local_port=port)
        try:
            proc.peer.wait_for_bound(port, config.transport.sock_kind, ready_timeout)
        except PeerError:
            last = proc.peer.stop()
            if last.returncode == EXIT_BIND_ERROR and config.local_port is None:
                continue
            raise
        try:
            yield proc
        finally:
            proc.peer.stop()
        return
    raise PeerError("SIPp could not bind its ports:\n" + (last.describe() if last else ""))
