"""Shared parts of the relay benchmarks (bench/relay_fast.py, bench/relay_vs_rtpengine.py):
the streams of N audio+video calls, the native load generator run in its own process with
its own CPU measured, and the figures (loss, percentiles, CPU per packet).

The load generator (``loadgen`` in media/relay_native) plays every stream's two endpoints
from one socket per side, batching its sends and receives across streams, so it costs less
than the relay it loads; its CPU is reported beside the relay's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

HOST = "127.0.0.1"
AUDIO = (50.0, 172)
"""Packets/s each way and size (20 ms G.711 + RTP header)."""
VIDEO = (250.0, 1100)
KEY_A = bytes(range(1, 31))
"""SRTP master key + salt of the Microsoft side (both ways), when the bench runs SRTP."""
KEY_B = bytes(range(41, 71))


@dataclass(frozen=True, slots=True)
class Stream:
    """One relayed stream: the relay's port toward each endpoint."""

    port_a: int
    port_b: int
    pps: float
    size: int


def endpoint_sockets() -> tuple[socket.socket, socket.socket]:
    """The load generator's two sockets (side A: "Microsoft", side B: "video endpoint")."""
    out = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        out.append(s)
    return out[0], out[1]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_kib(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _sessions(flows: list[Any], keys: tuple[bytes | None, bytes | None]) -> tuple[Any, Any,
                                                                                 list[Any]]:
    """The generator's SRTP sessions made by pylibsrtp (OpenSSL: cheaper than Debian's NSS
    libsrtp2), as the native relay runs them; None where that backend is off. Each flow
    sending with a side's key gets its own send session (libsrtp searches a session's streams
    one by one: 600 SSRCs in one session cost more than the cipher)."""
    import pylibsrtp

    from media import relay_native
    if relay_native.SRTP_BACKEND != "pylibsrtp":
        return None, None, flows
    from pylibsrtp._binding import ffi
    policy = pylibsrtp.Policy
    made: list[Any] = []
    for key in keys:
        tx = rx = None
        if key is not None:
            tx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_OUTBOUND))
            rx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_INBOUND))
        made += [tx, rx]
    out_flows = []
    for flow in flows:
        if len(flow) > 5 and flow[5] is not None:   # this flow arrives with its own key
            side = 1 - flow[0]
            if made[2 * side + 1] is None:
                made[2 * side + 1] = pylibsrtp.Session()
            made[2 * side + 1].add_stream(policy(key=flow[5], ssrc_type=policy.SSRC_SPECIFIC,
                                                 ssrc_value=flow[4]))
        key = keys[flow[0]]
        if key is None:
            out_flows.append(flow)
            continue
        own = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_OUTBOUND))
        made.append(own)
        rx_key = flow[5] if len(flow) > 5 else None
        out_flows.append((*flow[:5], rx_key, int(ffi.cast("uintptr_t", own._srtp[0]))))
    addresses = tuple(0 if m is None else int(ffi.cast("uintptr_t", m._srtp[0]))
                      for m in made[:4])
    return made, addresses, out_flows


def _loadgen_main(conn: Connection, fds: tuple[int, int], flows: list[Any], seconds: float,
                  keys: tuple[bytes | None, bytes | None], realtime: bool,
                  verify_every: int, priority: int = 10) -> None:
    from media.relay_native import loadgen
    owners, addresses, flows = _sessions(flows, keys)
    conn.recv()  # go
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except PermissionError:  # not root: stays an ordinary process
            pass
    before, wall = cpu_seconds(), time.monotonic()
    result = loadgen(fds[0], fds[1], flows, seconds, keys=keys, drain=0.5, sessions=addresses,
                     verify_every=verify_every)
    del owners
    result["cpu"] = cpu_seconds() - before
    result["wall"] = time.monotonic() - wall
    conn.send(result)


def flows_for(streams: list[Stream], ssrc_base: int = 0x10000) -> list[Any]:
    flows: list[Any] = []
    for i, st in enumerate(streams):
        flows.append((0, (HOST, st.port_a), st.pps, st.size, ssrc_base + 2 * i))
        flows.append((1, (HOST, st.port_b), st.pps, st.size, ssrc_base + 2 * i + 1))
    return flows


def call_streams(calls: int, ports: list[tuple[int, int]]) -> list[Stream]:
    """``ports`` has two (port_a, port_b) per call: audio then video."""
    out = []
    for i in range(calls):
        (a1, b1), (a2, b2) = ports[2 * i], ports[2 * i + 1]
        out.append(Stream(a1, b1, *AUDIO))
        out.append(Stream(a2, b2, *VIDEO))
    return out


class LoadGen:
    """The load generator in a child process; ``start`` then ``result``."""

    def __init__(self, socks: tuple[socket.socket, socket.socket], flows: list[Any],
                 seconds: float, keys: tuple[bytes | None, bytes | None] = (None, None),
                 realtime: bool = False, verify_every: int = 1, priority: int = 10) -> None:
        """``priority``: the generator's SCHED_FIFO priority with ``realtime`` (the relay
        workers of bench/relay_fast.py run at 20)."""
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        fds = (socks[0].fileno(), socks[1].fileno())
        self.proc = ctx.Process(target=_loadgen_main, daemon=True,
                                args=(child, fds, flows, seconds, keys, realtime,
                                      verify_every, priority))
        self.proc.start()

    def start(self) -> None:
        self._conn.send("go")

    def result(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            self.proc.kill()
            raise TimeoutError("load generator did not finish")
        out: dict[str, Any] = self._conn.recv()
        self.proc.join(5)
        return out


def percentile(hist: list[int], q: float, bucket_us: float) -> float:
    """The q-quantile (0..1) of a histogram of ``bucket_us`` buckets, in ms (the last bucket
    is the overflow: reported as its lower bound)."""
    total = sum(hist)
    if not total:
        return float("nan")
    want = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= want:
            return (i + 1) * bucket_us / 1000
    return len(hist) * bucket_us / 1000


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def merged(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several load generators' results as one (sums; wall: the longest)."""
    out = dict(results[0])
    for r in results[1:]:
        for key in ("sent", "received"):
            out[key] = tuple(x + y for x, y in zip(out[key], r[key], strict=True))
        for key in ("send_errors", "malformed", "srtp_failures", "cpu"):
            out[key] = out[key] + r[key]
        out["wall"] = max(out["wall"], r["wall"])
        out["latency_10us"] = [x + y for x, y in zip(out["latency_10us"], r["latency_10us"],
                                                      strict=True)]
    return out


def udp_drops(ports: list[int]) -> int:
    """Datagrams the kernel dropped at these local UDP ports (full receive queues)."""
    wanted = {f"{port:04X}" for port in ports}
    drops = 0
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] in wanted:
                drops += int(fields[-1])
    return drops
