"""Subprocess helpers for real peers: start, wait for a log line or a bound port, stop.

Output is read by one thread per stream into memory (never a pipe left to fill up and
block the peer); waiters block on a condition that the reader signals for every line and
at end of stream, so a test waits on the event it needs, bounded by a timeout, instead of
sleeping and hoping.
"""

from __future__ import annotations

import enum
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
# How often /proc/net is re-read while waiting for a socket to be bound: it cannot signal.
PROC_NET_POLL = 0.02


class PeerError(RuntimeError):
    """A peer did not start, exited early, or did not reach the awaited state in time."""


class SockKind(enum.Enum):
    """Which /proc/net table to look in when waiting for a bound socket."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class Finished:
    """What a peer process left behind."""

    argv: tuple[str, ...]
    """The command line that ran."""
    returncode: int
    """Exit status (negative: killed by that signal)."""
    stdout: str
    """Everything it wrote to stdout."""
    stderr: str
    """Everything it wrote to stderr."""
    timed_out: bool
    """True when it had to be stopped because it overran its time."""

    def describe(self) -> str:
        """A readable dump for assertion messages."""
        tail_out = self.stdout[-3000:]
        tail_err = self.stderr[-3000:]
        return (
            f"$ {' '.join(self.argv)}\n-> exit {self.returncode}"
            f"{' (timed out)' if self.timed_out else ''}\n"
            f"--- stderr (tail) ---\n{tail_err}\n--- stdout (tail) ---\n{tail_out}"
        )


class _StreamReader:
    """Collects one stream's lines and wakes waiters on each line and at end of stream."""

    def __init__(self, stream: IO[bytes], cond: threading.Condition) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._stream = stream
        self._cond = cond
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)


class PeerProcess:
    """One running peer; use as a context manager so it is always stopped."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = tuple(str(a) for a in argv)
        self.name = name or Path(self.argv[0]).name
        self._cond = threading.Condition()
        try:
            # Own process group: stopping the peer never signals the test runner.
            self.proc = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise PeerError(f"cannot start {self.name}: {exc}") from exc
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._out = _StreamReader(self.proc.stdout, self._cond)
        self._err = _StreamReader(self.proc.stderr, self._cond)
        self._timed_out = False
        self._result: Finished | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        """stdout so far."""
        return self._out.text()

    def stderr(self) -> str:
        """stderr so far."""
        return self._err.text()

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.proc.poll()

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float, *, stream: str = "stderr"
    ) -> re.Match[str]:
        """Block until a line of `stream` matches `pattern`; PeerError on exit or timeout."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def first_match(lines: list[str]) -> re.Match[str] | None:
            for line in lines:
                match = regex.search(line)
                if match is not None:
                    return match
            return None

        return self.wait_for_output(first_match, timeout, f"/{regex.pattern}/", stream=stream)

    def wait_for_output(
        self,
        check: Callable[[list[str]], T | None],
        timeout: float,
        what: str,
        *,
        stream: str = "stderr",
    ) -> T:
        """Block until `check(all lines so far)` returns non-None, re-run on each new line.

        PeerError (the peer stopped, its output attached) when the stream ends or the
        timeout passes first.
        """
        reader = self._err if stream == "stderr" else self._out
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check(list(reader.lines))
                if found is not None:
                    return found
                if reader.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        why = "exited" if reader.closed else f"did not log it within {timeout:g} s"
        self.stop()
        raise PeerError(
            f"{self.name} {why} while waiting for {what} on {stream}\n" + self.finished().describe()
        )

    def wait_for_bound(self, port: int, kind: SockKind, timeout: float) -> None:
        """Block until `port` is bound (UDP) or listening (TCP); PeerError otherwise."""
        deadline = time.monotonic() + timeout
        while not port_bound(port, kind):
            if self.proc.poll() is not None:
                raise PeerError(
                    f"{self.name} exited before binding {kind.value} port {port}\n"
                    + self.finished().describe()
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise PeerError(
                    f"{self.name} did not bind {kind.value} port {port} within {timeout:g} s\n"
                    + self.finished().describe()
                )
            time.sleep(PROC_NET_POLL)

    def wait(self, timeout: float) -> Finished:
        """Wait for it to exit by itself; stop it (and mark timed_out) after `timeout`."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self.stop()
        return self.finished()

    def stop(self, grace: float = 5.0) -> Finished:
        """SIGTERM, then SIGKILL after `grace` seconds; returns what it left behind."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(grace)
        return self.finished()

    def finished(self) -> Finished:
        """The exit status and full output of an exited process."""
        if self._result is None:
            if self.proc.poll() is None:
                raise PeerError(f"{self.name} is still running")
            self._out.join(5.0)
            self._err.join(5.0)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
            self._result = Finished(
                self.argv,
                self.proc.returncode,
                self._out.text(),
                self._err.text(),
                self._timed_out,
            )
        return self._result

    def _signal(self, sig: signal.Signals) -> None:
        # The peer leads its own session (start_new_session), so its group id is its pid;
        # signalling that group reaches only the peer and anything it spawned.
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(argv: Sequence[str], timeout: float, *, cwd: Path | None = None) -> Finished:
    """Run a peer in the foreground to completion, stopping it after `timeout` seconds."""
    with PeerProcess(argv, cwd=cwd) as peer:
        return peer.wait(timeout)


def require(program: str) -> str:
    """The path of `program`; PeerError naming the install script when it is missing."""
    path = shutil.which(program)
    if path is None:
        raise PeerError(f"{program} is not installed (run scripts/install-peers.sh)")
    return path


# ---------------------------------------------------------------------------------------
# ports


def free_port(kind: SockKind = SockKind.TCP, host: str = LOOPBACK) -> int:
    """A port the kernel says is free now (bind to 0); callers retry if a race takes it."""
    sock_type = socket.SOCK_STREAM if kind is SockKind.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_both(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP (a SIP listener usually takes both)."""
    for _ in range(50):
        port = free_port(SockKind.UDP, host)
        if _can_bind(host, port, socket.SOCK_STREAM):
            return port
    raise PeerError("no port free for both UDP and TCP after 50 tries")


def free_port_block(count: int, host: str = LOOPBACK) -> int:
    """The first of `count` consecutive ports free for UDP (SIPp's media ports)."""
    for _ in range(50):
        first = free_port(SockKind.UDP, host)
        if first + count > 65535:
            continue
        if all(_can_bind(host, p, socket.SOCK_DGRAM) for p in range(first, first + count)):
            return first
    raise PeerError(f"no block of {count} free UDP ports after 50 tries")


def random_free_port(host: str, *kinds: int) -> int:
    """A port in 20000-59999 (not the kernel's pick: labs bind fixed ports there) free on
    ``host`` for every socket type in ``kinds`` right now."""
    for _ in range(200):
        port = random.randrange(20000, 60000)
        if all(_can_bind(host, port, kind) for kind in kinds):
            return port
    raise PeerError(f"no free port on {host}")


def random_free_udp_range(host: str, size: int) -> tuple[int, int]:
    """An even-based range of ``size`` UDP ports in 30000-59999 free on ``host`` right now
    (first, last), e.g. for a media port pool."""
    for _ in range(200):
        base = random.randrange(30000, 60000, 2)
        if all(_can_bind(host, port, socket.SOCK_DGRAM) for port in range(base, base + size)):
            return base, base + size - 1
    raise PeerError(f"no free UDP range on {host}")


def _can_bind(host: str, port: int, sock_type: int) -> bool:
    with socket.socket(socket.AF_INET, sock_type) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_bound(port: int, kind: SockKind) -> bool:
    """Whether some socket is bound (UDP) or listening (TCP) on local `port`.

    Read from /proc/net so that checking never opens a connection the peer would see.
    """
    # /proc/net/tcp "st" column: 0A is LISTEN; UDP sockets show 07 (unconnected).
    states = {"0A"} if kind is SockKind.TCP else {"07", "01"}
    for table in (kind.value, kind.value + "6"):
        try:
            text = Path("/proc/net", table).read_text()
        except OSError:
            continue
        for row in text.splitlines()[1:]:
            fields = row.split()
            if len(fields) < 4:
                continue
            local, state = fields[1], fields[3]
            if state in states and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-check a condition that cannot signal (a file appearing...) until a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise PeerError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(PROC_NET_POLL)


# ---------------------------------------------------------------------------------------
# the project's own `gateway` roles

# "listening on udp:127.0.0.1:5060" (IPv6 hosts in brackets), logged once per listener.
LISTENING = re.compile(r"listening on (udp|tcp|tls):(?:\[([^\]\s]+)\]|([^\s:]+)):(\d+)\b", re.I)


def gateway_executable() -> str:
    """The venv's `gateway` script (next to the running interpreter)."""
    path = Path(sys.executable).with_name("gateway")
    if not path.exists():
        raise PeerError(f"{path} missing: install the project into the venv (make venv)")
    return str(path)


@dataclass(frozen=True, slots=True)
class Listening:
    """One listener a gateway role reported."""

    transport: str
    """"udp", "tcp" or "tls"."""
    host: str
    """Bound address."""
    port: int
    """Bound port."""


class GatewayProcess:
    """A running `gateway <role>` and the listeners it reported."""

    def __init__(self, peer: PeerProcess, listening: dict[str, Listening]) -> None:
        self.peer = peer
        self.listening = listening
        """By transport ("udp", "tcp", "tls")."""

    def address(self, transport: str) -> tuple[str, int]:
        """(host, port) of the `transport` listener."""
        spot = self.listening[transport]
        return spot.host, spot.port

    def stop(self) -> Finished:
        return self.peer.stop()


def start_gateway(
    args: Sequence[str],
    *,
    expect: Sequence[str],
    cwd: Path | None = None,
    ready_timeout: float = 20.0,
) -> GatewayProcess:
    """Start `gateway <args>` and wait until it logged a listener for each of `expect`.

    The caller owns the returned process and must stop it (`with_gateway` does).
    """
    peer = PeerProcess([gateway_executable(), *args], cwd=cwd, name=f"gateway {args[0]}")
    found = wait_for_listeners(peer, expect, ready_timeout)
    return GatewayProcess(peer, found)


def wait_for_listeners(
    peer: PeerProcess, expect: Sequence[str], timeout: float
) -> dict[str, Listening]:
    """Wait until `peer` logged "listening on T:HOST:PORT" for every transport in `expect`."""

    def all_listening(lines: list[str]) -> dict[str, Listening] | None:
        found: dict[str, Listening] = {}
        for line in lines:
            match = LISTENING.search(line)
            if match is not None:
                kind = match.group(1).lower()
                host = match.group(2) or match.group(3)
                found.setdefault(kind, Listening(kind, host, int(match.group(4))))
        return found if set(expect) <= set(found) else None

    return peer.wait_for_output(all_listening, timeout, f"listeners {', '.join(expect)}")
