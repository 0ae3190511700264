"""Relay cost of our TURN server against coturn, under the same turnutils_uclient load.

Both servers run on loopback with the same settings (one relay thread for coturn), are
driven by the same client-to-client (-y) uclient load, and are charged the CPU seconds of
their own process (utime + stime from /proc/<pid>/stat, all threads) over the load window.

    .venv/bin/python bench/turn_vs_coturn.py [--procs 3 --clients 10 --messages 2000 ...]

Prints, per server, messages relayed, loss and CPU seconds per 1,000 relayed messages and the
load average when its run started, then ``cpu per message ours/coturn: X.XX``. ``--path``
picks our UDP path (``TURN_FASTPATH``: the native batched hub where built by default, its
Python twin, or the asyncio transports). Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD, REALM = "bench", "benchpass", "example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    sent: int
    received: int
    lost: int
    cpu_seconds: float
    wall_seconds: float
    load: float

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds / max(self.received, 1) * 1000


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    """A port free on both UDP and TCP of 127.0.0.1."""
    for _ in range(100):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            udp.close()
            tcp.close()
    raise RuntimeError("no free port")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait until the server answers a STUN Binding request on UDP."""
    request = bytes.fromhex("000100002112a442") + os.urandom(12)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            s.sendto(request, ("127.0.0.1", port))
            try:
                if s.recv(2048)[8:20] == request[8:20]:
                    return
            except OSError:
                continue
    raise RuntimeError("server did not answer a Binding request")


def start_coturn(port: int, relay: tuple[int, int], logdir: str) -> subprocess.Popen[bytes]:
    cmd = [
        "turnserver",
        "-n",
        "--listening-ip",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
        "--listening-port",
        str(port),
        "--min-port",
        str(relay[0]),
        "--max-port",
        str(relay[1]),
        "--relay-threads",
        "1",
        "--lt-cred-mech",
        "--user",
        f"{USER}:{PASSWORD}",
        "--realm",
        REALM,
        "--allow-loopback-peers",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--no-stdout-log",
        "--log-file",
        os.path.join(logdir, "coturn.log"),
        "--simple-log",
        "--pidfile",
        os.path.join(logdir, "coturn.pid"),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_ours(port: int, relay: tuple[int, int], path: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "turn",
        "--listen",
        "127.0.0.1",
        "--ports",
        str(port),
        "--relay-ports",
        f"{relay[0]}-{relay[1]}",
        "--realm",
        REALM,
        "--user",
        f"{USER}:{PASSWORD}",
        "--allow-peer",
        "127.0.0.0/8",
        "--log-level",
        "WARNING",
    ]
    env = dict(os.environ)
    if path:
        env["TURN_FASTPATH"] = path
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def drive(port: int, args: argparse.Namespace) -> tuple[int, int, int]:
    """Run ``args.procs`` uclients at once; sum (sent, received, lost)."""
    cmd = [
        "turnutils_uclient",
        "-y",
        "-c",
        "-u",
        USER,
        "-w",
        PASSWORD,
        "-p",
        str(port),
        "-m",
        str(args.clients),
        "-n",
        str(args.messages),
        "-l",
        str(args.size),
        "-z",
        str(args.interval),
        *(["-t"] if args.tcp else []),
        "127.0.0.1",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(args.procs)
    ]
    sent = received = lost = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=args.timeout)
        text = out.decode(errors="replace")
        totals = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", text)
        losses = re.findall(r"Total lost packets (\d+)", text)
        if not totals or not losses:
            raise RuntimeError(f"uclient output without totals:\n{text[-1500:]}")
        sent += int(totals[-1][0])
        received += int(totals[-1][1])
        lost += int(losses[-1])
    return sent, received, lost


def measure(name: str, args: argparse.Namespace) -> Result:
    port = free_port()
    base = random.randrange(30000, 60000 - 2 * args.clients * args.procs - 1000)
    relay = (base, base + 2 * args.clients * args.procs + 500)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as logdir:
        if name == "coturn":
            proc = start_coturn(port, relay, logdir)
        else:
            proc = start_ours(port, relay, args.path)
        try:
            wait_listening(port, proc)
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            sent, received, lost = drive(port, args)
            cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return Result(name, sent, received, lost, cpu1 - cpu0, wall1 - wall0, load)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, default=3, help="concurrent uclient processes")
    p.add_argument("--clients", type=int, default=10, help="uclient -m (clients per process)")
    p.add_argument("--messages", type=int, default=2000, help="uclient -n (messages per client)")
    p.add_argument("--size", type=int, default=120, help="uclient -l (message bytes)")
    p.add_argument("--interval", type=int, default=5, help="uclient -z (ms between messages)")
    p.add_argument("--tcp", action="store_true", help="uclient -t (TCP to the server)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument(
        "--path",
        choices=("", "native", "python", "off"),
        default="",
        help="our UDP path (TURN_FASTPATH); default: native where built, else transports",
    )
    args = p.parse_args(argv)
    for tool in ("turnserver", "turnutils_uclient"):
        if shutil.which(tool) is None:
            sys.stderr.write(f"{tool} not found (Debian package coturn)\n")
            return 2
    sys.stdout.write(
        f"load: {args.procs} x turnutils_uclient -y -c -m {args.clients} -n {args.messages} "
        f"-l {args.size} -z {args.interval}{' -t' if args.tcp else ''}\n"
    )
    results = [measure("coturn", args), measure("ours", args)]
    for r in results:
        loss = r.lost / max(r.sent, 1) * 100
        sys.stdout.write(
            f"{r.name:7s} messages relayed {r.received:8d} / sent {r.sent:8d}  "
            f"loss {r.lost} ({loss:.3f}%)  cpu {r.cpu_seconds:6.2f} s  "
            f"cpu s per 1000 msgs {r.cpu_per_1000:.4f}  wall {r.wall_seconds:5.1f} s  "
            f"load {r.load:.2f}\n"
        )
    coturn, ours = results
    sys.stdout.write(
        f"cpu per message ours/coturn: {ours.cpu_per_1000 / max(coturn.cpu_per_1000, 1e-9):.2f}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
