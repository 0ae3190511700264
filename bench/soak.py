"""Memory soak: N calls through the gateway at a steady rate; RSS and the top allocation
growth (tracemalloc) every minute.

    .venv/bin/python bench/soak.py [--calls 12000] [--rate 20] [--every 60] [--frames 1]

SIPp plays the Lync FE (tests/data/sipp/bench_fe_uac.xml: the multipart INVITE, answered,
ACKed and hung up at once) into an stunnel client doing the FE's mutual TLS to the gateway's
Microsoft listener; the gateway routes to SIPp playing Unified CM (bench_cucm_uas.xml) over
TCP, as bench/b2bua_cps.py does. The gateway runs in this process (the same ``Gateway`` that
``gateway run`` starts, on uvloop with its GC tuning) so that tracemalloc sees its heap:
every ``--every`` seconds, and when 1k / 2k / 10k calls have ended, a line gives the calls
ended, RSS, the traced heap, asyncio tasks, calls in progress and media ports held; each
minute also the ten source lines whose allocations grew most since the previous report, and
the traceback of the largest.

Goal (issue 12): RSS flat after warm-up, growth under 5 MB between the 2nd and the 10th
thousand call. RSS includes tracemalloc's own bookkeeping (printed as "tm"); ``--frames 1``
keeps that small, more frames say who called. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from certs.pki import init_pki  # noqa: E402
from gateway.config import load  # noqa: E402
from gateway.run import tune_gc  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from tests.gateway.conftest import (  # noqa: E402
    CUCM_HOST,
    Scenario,
    fe_tunnel,
    gateway_toml,
    pick_ports,
    serve_scenario,
    start_scenario,
)
from tests.peers.sipp import SippTransport  # noqa: E402

MILESTONES = (1000, 2000, 10_000)
GOAL_MB = 5.0


class _Running:
    """Enough of tests.gateway.conftest.RunningGateway for fe_tunnel (address and ports)."""

    def __init__(self, gateway: Gateway, ports: object) -> None:
        self.gateway = gateway
        self.ports = ports

    @property
    def microsoft(self) -> tuple[str, int]:
        listen = self.gateway.config.b2bua.listen
        return listen.host, listen.port


def say(text: str) -> None:
    """One line of the report, at once (it is read while the soak runs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def calls_ended(gateway: Gateway) -> int:
    total = 0.0
    for result in ("completed", "cancelled", "rejected", "failed"):
        value = gateway.metrics.registry.get_sample_value(
            "gateway_calls_total", {"result": result})
        total += value or 0.0
    return int(total)


def snapshot() -> tracemalloc.Snapshot | None:
    return tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None


def top_growth(before: tracemalloc.Snapshot | None, after: tracemalloc.Snapshot | None,
               count: int) -> list[str]:
    """The ``count`` source lines whose live allocations grew most, and the largest one's
    traceback (nothing without tracemalloc)."""
    if before is None or after is None:
        return []
    stats = after.compare_to(before, "lineno")
    lines = []
    for stat in stats[:count]:
        frame = stat.traceback[0]
        code = linecache.getline(frame.filename, frame.lineno).strip()
        lines.append(f"    {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
                     f"{_short(frame.filename)}:{frame.lineno}  {code[:70]}")
    traced = after.compare_to(before, "traceback")
    if traced and traced[0].size_diff > 0:
        lines.append(f"    largest growth ({traced[0].size_diff / 1024:+.1f} KiB), called from:")
        for text in traced[0].traceback.format()[-12:]:
            lines.append(f"      {text}")
    return lines


def census() -> dict[str, int]:
    """Live objects tracked by the collector, by type name (module-qualified)."""
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    return counts


def holders(type_name: str, depth: int = 5) -> list[str]:
    """Who keeps one live object of ``type_name``: a chain of referrers up to an object of a
    class of ours (a dict that is an object's ``__dict__`` is shown as that object), for
    finding the owner of a growth."""
    objects = gc.get_objects()
    sample = next((o for o in objects
                   if f"{type(o).__module__}.{type(o).__qualname__}" == type_name), None)
    del objects  # the list refers to everything: it must not show up as a holder
    lines: list[str] = []
    if sample is None:
        return lines
    seen = {id(sample)}
    current: object = sample
    for level in range(depth):
        frames = (type(sys._getframe()),)
        referrers = [r for r in gc.get_referrers(current)
                     if id(r) not in seen and not isinstance(r, frames)
                     and type(r).__name__ != "cell"]
        if not referrers:
            break
        holder = referrers[0]
        seen.add(id(holder))
        where = ""
        if isinstance(holder, dict):
            owner = next((o for o in gc.get_referrers(holder)
                          if getattr(o, "__dict__", None) is holder), None)
            key = next((k for k, v in holder.items() if v is current), None)
            where = f".{key}" if owner is not None and key is not None else f"[{key!r}]"[:60]
            if owner is not None:
                holder = owner
        kind = type(holder)
        size = f" (len {len(holder)})" if isinstance(holder, list | dict | set | tuple) else ""
        lines.append(f"      {'  ' * level}<- {kind.__module__}.{kind.__qualname__}{where}{size}")
        current = holder
        if not kind.__module__.startswith("builtins"):
            break
    return lines


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def soak(args: argparse.Namespace, base: Path) -> int:
    pki, _ = init_pki(base / "pki")
    ports = pick_ports()
    config_path = base / "gateway.toml"
    config_path.write_text(gateway_toml(pki, ports))
    config = load(config_path, overrides=[
        "b2bua.max_calls=5000",
        f"b2bua.media_ports={args.media_ports}",
    ])
    gateway = Gateway(config)
    await gateway.start()
    tune_gc()
    loop = asyncio.get_running_loop()
    with ExitStack() as stack:
        uas = stack.enter_context(serve_scenario(Scenario(
            "bench_cucm_uas.xml", transport=SippTransport.TCP, calls=10_000_000,
            local_host=CUCM_HOST, local_port=ports.cucm, global_timeout=36_000,
            keys={"uri_transport": "tcp"},
            extra=("-reconnect_close", "false", "-max_socket", "5000")), base))
        tunnel = stack.enter_context(fe_tunnel(_Running(gateway, ports), pki, base))  # type: ignore[arg-type]
        uac = start_scenario(Scenario(
            "bench_fe_uac.xml", transport=SippTransport.TCP, calls=args.calls,
            remote=(tunnel.host, tunnel.port), service="3001", rate=args.rate,
            limit=max(100, int(args.rate * 5)), keys={"via_transport": "TLS"},
            global_timeout=args.calls / args.rate * 3 + 120,
            extra=("-max_socket", "5000")), base)
        started = time.monotonic()
        gc.collect()
        baseline = snapshot()
        counted: dict[str, int] | None = None
        previous = baseline
        at: dict[int, float] = {}
        next_report = started + args.every
        say(f"soak: {args.calls} calls at {args.rate}/s through gateway/tls "
              f"(SIPp -> stunnel -> gateway -> SIPp); pid {os.getpid()}; "
              f"load {os.getloadavg()[0]:.2f}")
        say(f"{'t(s)':>6} {'ended':>7} {'RSS MB':>8} {'heap MB':>8} {'tm MB':>6} "
              f"{'tasks':>6} {'calls':>6} {'ports':>6} {'bound':>6}")

        def line(label: str) -> None:
            heap = tracemalloc.get_traced_memory()[0] / 2**20
            own = tracemalloc.get_tracemalloc_memory() / 2**20
            say(f"{time.monotonic() - started:6.0f} {calls_ended(gateway):7d} {rss_mb():8.1f} "
                  f"{heap:8.1f} {own:6.1f} {len(asyncio.all_tasks()):6d} "
                  f"{len(gateway.calls):6d} {gateway.pool.ports_in_use:6d} "
                  f"{gateway.pool.bound_ports:6d}  {label}")

        while uac.peer.poll() is None:
            await asyncio.sleep(0.5)
            ended = calls_ended(gateway)
            for mark in MILESTONES:
                if ended >= mark and mark not in at:
                    gc.collect()
                    at[mark] = rss_mb()
                    line(f"<- {mark} calls")
                    if mark == 2000:
                        counted = census()
            if loop.time() and time.monotonic() >= next_report:
                next_report += args.every
                gc.collect()
                current = snapshot()
                line(f"load {os.getloadavg()[0]:.2f}")
                for text in top_growth(previous, current, args.top):
                    say(text)
                previous = current
        result = uac.result(30.0)
        for _ in range(100):  # the last calls' teardown
            if not gateway.calls:
                break
            await asyncio.sleep(0.1)
        gc.collect()
        line("end")
        stats = result.stats
        say(f"SIPp: successful={stats.successful if stats else 0} "
              f"failed={stats.failed if stats else '?'}")
        say("growth since the start (top owners):")
        for text in top_growth(baseline, snapshot(), args.top):
            say(text)
        if counted is not None:
            now = census()
            grown = sorted(((now.get(k, 0) - counted.get(k, 0), k) for k in now), reverse=True)
            say("live objects grown since 2000 calls (type: growth), and who holds one:")
            for diff, name in grown[:args.top]:
                if diff <= 0:
                    break
                say(f"    {diff:+8d}  {name}")
            ours = [name for _, name in grown if not name.startswith("builtins.")]
            for name in ours[:3]:
                say(f"    {name}:")
                for text in holders(name):
                    say(text)
        if 2000 in at and 10_000 in at:
            growth = at[10_000] - at[2000]
            verdict = "PASS" if growth < GOAL_MB else "FAIL"
            say(f"RSS 2k -> 10k calls: {at[2000]:.1f} -> {at[10_000]:.1f} MB "
                  f"({growth:+.1f} MB; goal < {GOAL_MB} MB): {verdict}")
        for mark, value in sorted(at.items()):
            say(f"RSS at {mark} calls: {value:.1f} MB")
        del uas
    await gateway.close()
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=12_000, help="calls to place")
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between reports")
    parser.add_argument("--frames", type=int, default=1,
                        help="tracemalloc frames per trace (8 slows a loaded machine enough "
                             "to miss ACK deadlines at 20 calls/s; 0: no tracemalloc, RSS "
                             "without its bookkeeping)")
    parser.add_argument("--top", type=int, default=10, help="growth lines per report")
    parser.add_argument("--media-ports", default="20000-29999", help="the media port pool")
    args = parser.parse_args(argv)
    if args.frames > 0:
        tracemalloc.start(args.frames)
    runner: Any = asyncio.run
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # the gateway's own fallback
        pass
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return int(runner(soak(args, Path(tmp))))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
