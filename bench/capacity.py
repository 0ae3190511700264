"""Capacity of the lab: concurrent full-media calls through the gateway until loss passes
0.1 % or a call cannot be set up (or the lab's own senders cannot offer the load).

    .venv/bin/python bench/capacity.py [--steps 10,20,40,80,100,160,320] [--window 5]

Each call is the internal Lync client alice -> a SIP endpoint (3001/3002 in turn) through the
FE, the gateway (ICE + SRTP toward Microsoft, plain RTP toward the endpoint) and CUCM, with
audio (50 packets/s) and video (30 packets/s) each way. Concurrency is raised step by step.
Each step is measured between two quiet points so that nothing is in flight when counted:
every party stops sending (the bench holds the lab's senders back; the gateway is told
nothing and does nothing differently), the bench drains (waits until the receive counts stop
changing and this process's UDP receive queues are empty, at most --drain seconds), reads the
counters, lets the senders go on for the window, stops them again and drains again. So
loss = 1 - received / sent counts the packets never delivered, both directions together;
``late`` the packets delivered after the window (during the drain: the one event loop of the
lab behind), ``drain s`` how long that took (``>`` when the bound was hit: what was still
unread then counts as lost). ``pace %`` is sent / what the senders' nominal rates make in
the window: under 100 the load generator (the lab's one event loop) fell behind its schedule
and offered less than the nominal load; under 80 % the step measured the lab's load
generator rather than the gateway, and does not count. ``rejected``: packets the receivers
refused (SRTP or RTP checks failed; the log names each receiver and its reasons); ``udp
err``: the kernel's UDP InErrors + SndbufErrors over the window (``/proc/net/snmp``:
host-wide, other processes on the machine count too).

The gateway's packet path is ``GATEWAY_MEDIA_RELAY`` (``native`` by default where built,
``python``; ``GATEWAY_MEDIA_THREADS`` its hub's worker threads); the ``fast`` column counts
the stream components the relay hub carries (the rest take the Python path: TURN-relayed
pairs, the first packets the call log records); ``drops gw/other`` the datagrams the kernel
dropped in the window at full receive queues, of the gateway's media sockets and of all
others (the peers': a loop that fell behind); ``relay`` the packets the gateway's relays
received and did not forward (media.counters: direction, source, SRTP, send...);
``queued KiB`` what waited unread in this process's UDP receive queues at the window's end
(in flight: read during the drain, not lost). The drop and queue columns count this
process's sockets only (others on the machine share the loopback).

A call counts as set up once every direction of every stream (Lync -> endpoint and
endpoint -> Lync, audio and video) has delivered ``--min-packets`` accepted packets; a set-up
that does not get there fails naming the call, the stream, the direction and what its
receiver refused, by reason (a sum over the call's streams would hide one dead direction:
issue 13). A step whose window leaves a direction that was sent to without one accepted
packet fails the same way (``dead`` in the JSON).

Everything runs in this process (lab.topology.Lab), on uvloop as every role's main does
(sip.aio.run; ``--loop asyncio`` for the stdlib loop): the CPU figure is the whole process
(gateway + FE + CUCM + peers) and so an upper bound of the gateway's share; RSS per call is
the growth over the idle lab divided by the calls. Traffic stays on 127.0.0.0/8. Bounded
by --budget seconds (default 270).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.topology import Lab  # noqa: E402
from media.relay import implementation as relay_implementation  # noqa: E402
from sip import aio  # noqa: E402

LOSS_LIMIT = 0.001
PACE_FLOOR = 0.8
"""A step whose senders offered less than this share of the nominal load measured the lab's
load generator (its one event loop), not the gateway: it does not count as carried."""
CALLEES = ("3001", "3002")
MEDIA_FIRST = 61000
"""Gateway media pool start: above the kernel's ephemeral ports (32768-60999) and the
blocks other labs on 127.0.2.1 take (30000-49999)."""
PORTS_PER_CALL = 12
"""Media ports per audio+video call: 8, and a TURN client pair per stream (the lab's gateway
has one TURN server and takes its TURN ports from the media range)."""
MAX_STEP = (65535 - MEDIA_FIRST - 15) // PORTS_PER_CALL - 10
SETTLE = 1.0
"""Seconds between the last setup of a step and its window: new calls reach steady state."""
SETUP_CONCURRENCY = 10
"""Calls set up at once (a burst of ICE + TLS would be a setup benchmark)."""
MIN_PACKETS = 10
"""Accepted packets every direction of every stream must deliver for a call to count as set
up."""
SETUP_POLL = 0.02
"""Seconds between looks at a new call's per-direction counts."""
HANGUP_TIMEOUT = 20.0
DRAIN = 2.0
"""Default bound in seconds on each drain (senders stopped, waiting for what is in flight)."""
QUIET = 0.1
"""Seconds the receive counts must stay unchanged, with empty queues, to call a drain done."""
DRAIN_POLL = 0.02


@dataclass(frozen=True, slots=True)
class Step:
    calls: int
    sent: int
    received: int
    loss: float
    cpu_cores: float
    """Process CPU seconds per wall second over the window."""
    rss_mib: float
    setup_s: float
    failed: str = ""
    fast: str = ""
    """Relayed components on the fast path (the hub) / all, at the window's end."""
    drops_gateway: int = 0
    """Datagrams dropped at the gateway's full socket queues in the window."""
    drops_other: int = 0
    """... at every other UDP socket (the peers' among them) in the window."""
    relay_dropped: int = 0
    """Packets the gateway's relays judged and did not forward in the window."""
    queued_kib: float = 0.0
    """Bytes waiting unread in UDP receive queues at the window's end (in flight)."""
    late: int = 0
    """Packets sent in the window and delivered after it (during the drain)."""
    drain_s: float = 0.0
    """Seconds from stopping the senders to nothing left in flight."""
    drained: bool = True
    """False when the drain hit its bound (what was still unread counts as lost)."""
    nominal: int = 0
    """Packets the senders' nominal rates make over the window."""
    rejected: int = 0
    """Packets the receivers refused (SRTP or RTP checks) in the window and drain."""
    udp_errors: int = 0
    """The kernel's UDP InErrors + SndbufErrors (host-wide) in the window and drain."""
    dead: tuple[str, ...] = ()
    """Directions that were sent to in the window and accepted nothing, with what their
    receivers refused (``Direction.describe``)."""

    @property
    def pace(self) -> float:
        """Sent over nominal: below 1 the load generator fell behind."""
        return self.sent / self.nominal if self.nominal else 0.0

    @property
    def ok(self) -> bool:
        return (not self.failed and not self.dead and self.loss <= LOSS_LIMIT
                and self.pace >= PACE_FLOOR)


@dataclass(frozen=True, slots=True)
class Direction:
    """One way of one stream of one call, as its receiver counts it."""

    call_id: str
    kind: str
    """"audio" or "video"."""
    way: str
    """"Lync -> endpoint" or "endpoint -> Lync"."""
    sent: int
    """Packets its sender sent (the endpoint's port, or the Lync stream)."""
    accepted: int
    """Packets its receiver accepted."""
    refused: tuple[tuple[str, int], ...]
    """What its receiver refused, by reason (most first)."""

    def describe(self, accepted: int | None = None) -> str:
        refused = ", ".join(f"{count} {reason}" for reason, count in self.refused) or "none"
        return (f"call {self.call_id} {self.kind} {self.way}: {self.sent} sent, "
                f"{self.accepted if accepted is None else accepted} accepted, "
                f"refused: {refused}")


def _reasons(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counts.items(), key=lambda item: -item[1]))


def directions(near: Any, far: Any) -> list[Direction]:
    """Both ways of every stream of a call (``near`` the Lync call, ``far`` the endpoint's),
    streams matched by kind; a stream the endpoint has no port for shows 0 accepted."""
    ports = {port.kind: port for port in far.call.media if port is not None}
    out = []
    for stream in near.streams:
        port = ports.get(stream.kind)
        out.append(Direction(near.call_id, stream.kind, "Lync -> endpoint",
                             stream.counters.sent, port.packets if port else 0,
                             _reasons(port.refused) if port else ()))
        out.append(Direction(near.call_id, stream.kind, "endpoint -> Lync",
                             port.sent if port else 0, stream.counters.received,
                             _reasons(stream.counters.refused)))
    return out


def own_sockets() -> frozenset[int]:
    """Inodes of this process's sockets (the whole lab: gateway, relay threads, peers)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return frozenset(inodes)


def udp_drops(first: int, last: int,
              sockets: frozenset[int] | None = None) -> tuple[int, int, int]:
    """Datagrams the kernel dropped at full receive queues (``/proc/net/udp``, cumulative per
    socket) of this process: at the gateway's media sockets (ports ``first``-``last``) and at
    every other one (the lab's peers, TURN); and the bytes waiting in those receive queues now
    (received, not yet read: in flight, not lost). ``sockets``: the inodes (default: now)."""
    mine = own_sockets() if sockets is None else sockets
    ours = others = queued = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[9]) not in mine:
                    continue
                port = int(fields[1].rsplit(":", 1)[1], 16)
                drops = int(fields[-1])
                queued += int(fields[4].split(":")[1], 16)
                if first <= port <= last:
                    ours += drops
                else:
                    others += drops
    return ours, others, queued


def udp_errors() -> int:
    """UDP datagrams the kernel failed to deliver or to send (``/proc/net/snmp``, this network
    namespace: every process on it, cumulative)."""
    rows = [line.split()[1:] for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")]
    values = dict(zip(rows[0], (int(v) for v in rows[1]), strict=True))
    return values.get("InErrors", 0) + values.get("SndbufErrors", 0)


def load() -> str:
    """The machine's 1-minute load average (other processes share it)."""
    return Path("/proc/loadavg").read_text().split()[0]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class DeadDirection(RuntimeError):
    """A call's set-up left directions short of the packets they must deliver."""

    def __init__(self, short: list[Direction], min_packets: int, timeout: float) -> None:
        self.directions = tuple(short)
        super().__init__(f"under {min_packets} accepted packets within {timeout:g} s: "
                         + "; ".join(d.describe() for d in short))


class Bench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pairs: list[tuple[Any, Any]] = []
        """(Lync call, endpoint call) for every live call."""
        self._held: list[tuple[Any, Any]] = []
        """(Lync stream, its direction) and (endpoint port, its RTP source) held back."""

    async def add_calls(self, target: int, timeout: float,
                        min_packets: int = MIN_PACKETS) -> None:
        """Set up calls until ``target`` are up with ``min_packets`` accepted each way on
        every stream; raises on a failure (a dead direction: ``DeadDirection``)."""
        alice = self.lab.client("alice")
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(index: int) -> None:
            async with gate:
                callee = CALLEES[index % len(CALLEES)]
                call = await alice.call(f"{callee}@video.example.com", video=True)
                await call.wait_connected(timeout=timeout)
                far = await self.every_direction(call, callee, min_packets, timeout)
                self.pairs.append((call, far))

        await asyncio.gather(*(one(i) for i in range(len(self.pairs), target)))

    async def every_direction(self, call: Any, callee: str, min_packets: int,
                              timeout: float) -> Any:
        """Wait until each way of each stream of ``call`` has ``min_packets`` accepted; the
        endpoint's side of the call. ``DeadDirection`` names those that did not (polled:
        the two receivers are in different roles, with no event in common)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        far = None
        while True:
            if call.ended.is_set():
                raise RuntimeError(f"call {call.call_id} ended during set-up: {call.result}")
            far = far or self.lab.callee_of(call.call_id, callee)
            if far is not None:
                ways = directions(call, far)
                short = [d for d in ways if d.accepted < min_packets]
                if ways and not short:
                    return far
            if loop.time() >= deadline:
                if far is None:
                    raise RuntimeError(f"no endpoint side for {call.call_id}")
                raise DeadDirection(short, min_packets, timeout)
            await asyncio.sleep(SETUP_POLL)

    def fast_path(self) -> str:
        """How many of the gateway's stream components run on the relay hub (media.stream),
        out of all of them."""
        gateway = self.lab.gateway
        fast = total = 0
        for call in getattr(gateway, "calls", {}).values():
            media = getattr(call, "media", None)
            for stream in getattr(media, "streams", ()):
                flags = getattr(stream, "fast", None)
                if flags is not None:
                    fast += sum(flags)
                    total += len(flags)
        return f"{fast}/{total}" if total else "-"

    def relay_drops(self) -> int:
        """Packets the gateway's relays received and did not forward (every reason)."""
        total = 0
        for call in getattr(self.lab.gateway, "calls", {}).values():
            media = getattr(call, "media", None)
            if media is not None:
                total += sum(c.microsoft.dropped_total + c.video.dropped_total
                             for c in media.counters())
        return total

    def counters(self) -> tuple[int, int]:
        """(sent, received) packets by every party of every live call, read at once."""
        sent = received = 0
        for near, far in self.pairs:
            for party in (near.media(), far.media()):
                sent += party.packets_sent
                received += party.packets_received
        return sent, received

    def rejected(self) -> int:
        """Packets every receiver refused (a Lync stream's SRTP, an endpoint's RTP checks)."""
        return sum(sum(stream.counters.bad for stream in near.streams)
                   + sum(port.rejected for port in far.call.media if port is not None)
                   for near, far in self.pairs)

    def rejected_by(self) -> list[str]:
        """Which receivers refused packets so far, and why (to tell one broken stream from
        many, and an SRTP failure from a packet that is not RTP)."""
        return [d.describe() for near, far in self.pairs for d in directions(near, far)
                if d.refused]

    def accepted(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """(sent, accepted) per (call, stream, way), read at once."""
        return {(d.call_id, d.kind, d.way): (d.sent, d.accepted)
                for near, far in self.pairs for d in directions(near, far)}

    def dead(self, before: dict[tuple[str, str, str], tuple[int, int]]) -> tuple[str, ...]:
        """Directions sent to since ``before`` (``accepted()``) that accepted nothing."""
        out = []
        for near, far in self.pairs:
            for d in directions(near, far):
                sent0, accepted0 = before.get((d.call_id, d.kind, d.way), (0, 0))
                if d.sent > sent0 and d.accepted == accepted0:
                    out.append(d.describe(accepted=0) + " (in the window)")
        return tuple(out)

    def nominal_rate(self) -> float:
        """Packets per second every sending party's schedule makes."""
        rate = 0.0
        for near, far in self.pairs:
            rate += sum(stream.rate for stream in near.streams if stream.sending)
            rate += sum(1 / port.rtp_source.interval for port in far.call.media
                        if port is not None and port.sending and port.rtp_source is not None)
        return rate

    def stop_senders(self) -> None:
        """Hold every party's sender back without telling anyone (no re-INVITE: the gateway
        just sees the packets stop). A Lync stream's send loop keeps its pace and sequence
        numbers and sends nothing while its direction says it may not; an endpoint port
        stops its timer and keeps its RTP source (sequence numbers run on)."""
        for near, far in self.pairs:
            for stream in near.streams:
                if stream.direction in ("sendrecv", "sendonly"):
                    self._held.append((stream, stream.direction))
                    stream.direction = "recvonly" if stream.direction == "sendrecv" else "inactive"
            for port in far.call.media:
                if port is not None and port.sending and port.rtp_source is not None:
                    self._held.append((port, port.rtp_source))
                    port.stop_sending()

    def start_senders(self) -> None:
        """Let every held sender go on; endpoint ports restart at a random phase of their
        interval (all at once would be a burst no real traffic makes)."""
        loop = asyncio.get_running_loop()
        held, self._held = self._held, []
        for party, what in held:
            if isinstance(what, str):
                party.direction = what
            else:
                loop.call_later(random.uniform(0, what.interval), party.start_sending, what)

    async def drain(self, first: int, last: int, timeout: float) -> tuple[float, bool]:
        """Wait (senders held) until the receive counts stop changing and this process's UDP
        receive queues are empty; the seconds it took, and whether it finished in time."""
        sockets = own_sockets()
        started = time.monotonic()
        received, quiet_since = self.counters()[1], started
        while True:
            await asyncio.sleep(DRAIN_POLL)
            now = time.monotonic()
            count = self.counters()[1]
            if count != received:
                received, quiet_since = count, now
            elif now - quiet_since >= QUIET and udp_drops(first, last, sockets)[2] == 0:
                return quiet_since - started, True
            if now - started >= timeout:
                return now - started, False

    async def hangup(self, timeout: float = HANGUP_TIMEOUT) -> None:
        """Hang every call up at once, bounded (the lab's close clears what is left)."""
        calls = [near for near, _ in self.pairs]
        self.pairs.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(near.hangup() for near in calls), return_exceptions=True),
                timeout)


async def run(steps: list[int], window: float, budget: float, certs: Path,
              keep_going: bool = False, drain: float = DRAIN,
              min_packets: int = MIN_PACKETS) -> list[Step]:
    deadline = time.monotonic() + budget
    results: list[Step] = []
    top = max(steps)
    if top > MAX_STEP:
        raise ValueError(f"at most {MAX_STEP} calls fit in media ports {MEDIA_FIRST}-65535")
    media_last = MEDIA_FIRST + PORTS_PER_CALL * (top + 10) + 15
    overrides = {"b2bua": {"max_calls": top + 10,
                           "media_ports": f"{MEDIA_FIRST}-{media_last}"}}
    async with Lab(certs, any_port=True, management=False, broker=False,
                   gateway_overrides=overrides, ice_timeout=30.0) as lab:
        bench = Bench(lab)
        idle_rss = rss_kib()
        try:
            for calls in steps:
                remaining = deadline - time.monotonic()
                if remaining < window + 2 * drain + 10:
                    logging.warning("time budget spent before %d calls", calls)
                    break
                started = time.monotonic()
                try:
                    await asyncio.wait_for(bench.add_calls(calls, timeout=30.0,
                                                           min_packets=min_packets),
                                           remaining - window)
                except Exception as error:  # noqa: BLE001 - a setup failure ends the ramp
                    results.append(Step(calls, 0, 0, 1.0, 0.0, 0.0,
                                        time.monotonic() - started,
                                        failed=f"setup: {error!r}"))
                    break
                setup = time.monotonic() - started
                await asyncio.sleep(SETTLE)
                rate = bench.nominal_rate()
                # A quiet start: what was sent before the window is delivered (or lost) first.
                bench.stop_senders()
                await bench.drain(MEDIA_FIRST, media_last, drain)
                sent0, received0 = bench.counters()
                drops0 = udp_drops(MEDIA_FIRST, media_last)
                judged0 = bench.relay_drops()
                refused0, errors0 = bench.rejected(), udp_errors()
                ways0 = bench.accepted()
                bench.start_senders()
                cpu0, wall0 = time.process_time(), time.monotonic()
                await asyncio.sleep(window)  # the measurement window itself
                bench.stop_senders()
                cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
                sent1, on_time = bench.counters()
                queued = udp_drops(MEDIA_FIRST, media_last)[2]
                drain_s, drained = await bench.drain(MEDIA_FIRST, media_last, drain)
                received1 = bench.counters()[1]
                drops1 = udp_drops(MEDIA_FIRST, media_last)
                judged1 = bench.relay_drops()
                refused1, errors1 = bench.rejected(), udp_errors()
                dead = bench.dead(ways0)
                bench.start_senders()
                sent, received = sent1 - sent0, received1 - received0
                loss = max(0.0, 1 - received / sent) if sent else 1.0
                step = Step(calls, sent, received, loss, cpu,
                            (rss_kib() - idle_rss) / 1024, setup, fast=bench.fast_path(),
                            drops_gateway=drops1[0] - drops0[0],
                            drops_other=drops1[1] - drops0[1],
                            relay_dropped=judged1 - judged0, queued_kib=queued / 1024,
                            late=received1 - on_time, drain_s=drain_s, drained=drained,
                            nominal=round(rate * window), rejected=refused1 - refused0,
                            udp_errors=errors1 - errors0, dead=dead)
                results.append(step)
                logging.info("%d calls: %d sent, %d received (%d late), loss %.4f %%, "
                             "drain %.2f s, pace %.1f %%, CPU %.2f cores, setup %.1f s, "
                             "fast path %s, load %s", calls, sent, received, step.late,
                             100 * loss, drain_s, 100 * step.pace, cpu, setup, step.fast, load())
                if step.rejected:
                    logging.warning("refused by: %s", "; ".join(bench.rejected_by()))
                if dead:
                    logging.warning("dead directions: %s", "; ".join(dead))
                if not step.ok and not keep_going:
                    break
        finally:
            await bench.hangup()
    return results


def report(results: list[Step], loop: str = "uvloop") -> dict[str, Any]:
    passed = []
    for step in results:  # the ramp up to the first step over the limit
        if not step.ok:
            break
        passed.append(step)
    best = passed[-1] if passed else None
    summary: dict[str, Any] = {
        "steps": [asdict(s) | {"ok": s.ok, "pace": round(s.pace, 4)} for s in results],
        "max_calls": best.calls if best else 0,
        "loss_limit": LOSS_LIMIT,
        "pace_floor": PACE_FLOOR,
        "cores": os.cpu_count(),
        "relay": relay_implementation(),
        "relay_threads": os.environ.get("GATEWAY_MEDIA_THREADS", "default"),
        "loop": loop,
    }
    if best is not None:
        summary["cpu_per_call_ms_per_s"] = round(1000 * best.cpu_cores / best.calls, 2)
        summary["rss_per_call_kib"] = round(1024 * best.rss_mib / best.calls, 1)
    return summary


def _result(step: Step) -> str:
    if step.ok:
        return "ok"
    if step.failed:
        return step.failed
    if step.dead:
        return f"{len(step.dead)} dead direction(s): {step.dead[0]}"
    if step.loss > LOSS_LIMIT:
        return "loss over 0.1 %"
    return (f"under-paced: the lab's senders offered {100 * step.pace:.0f} % of the load "
            f"(< {100 * PACE_FLOOR:.0f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,20,40,80,100,160,320",
                        help="concurrent calls per step, comma separated")
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured per step")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds in all")
    parser.add_argument("--certs", type=Path, default=None, help="lab PKI (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--drain", type=float, default=DRAIN,
                        help="bound in seconds on waiting for in-flight packets after a window")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of the whole lab (uvloop: as the roles run)")
    parser.add_argument("--min-packets", type=int, default=MIN_PACKETS,
                        help="accepted packets each way of each stream for a call to count "
                             "as set up")
    parser.add_argument("--keep-going", action="store_true",
                        help="measure every step, even past one over the loss limit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("aioice", "sip", "lab", "gateway", "media", "turn"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger(__name__).setLevel(logging.INFO)
    try:
        steps = sorted(int(s) for s in args.steps.split(","))
    except ValueError:
        parser.error(f"--steps: numbers of calls, comma separated, not {args.steps!r}")
    if not steps or steps[0] < 1 or steps[-1] > MAX_STEP:
        parser.error(f"--steps: 1 to {MAX_STEP} calls each (the media ports "
                     f"{MEDIA_FIRST}-65535 hold {MAX_STEP} calls), not {args.steps!r}")
    with tempfile.TemporaryDirectory() as temp:
        certs = args.certs or Path(temp) / "certs"
        runner = asyncio.run if args.loop == "asyncio" else aio.run
        results = runner(run(steps, args.window, args.budget, certs, args.keep_going,
                                  args.drain, args.min_packets))
    summary = report(results, args.loop)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        lines = [f"relay: {summary['relay']} (GATEWAY_MEDIA_THREADS {summary['relay_threads']}),"
                 f" loop {summary['loop']}",
                 f"{'calls':>6} {'sent':>9} {'received':>9} {'loss %':>8} {'CPU':>6} "
                 f"{'RSS MiB':>8} {'setup s':>8} {'fast':>9} {'drops gw/other':>15} "
                 f"{'relay':>6} {'queued KiB':>10} {'late':>6} {'drain s':>7} {'pace %':>6}"
                 f" {'rejected':>8} {'udp err':>7}  result"]
        for s in results:
            lines.append(f"{s.calls:>6} {s.sent:>9} {s.received:>9} {100 * s.loss:>8.4f} "
                         f"{s.cpu_cores:>6.2f} {s.rss_mib:>8.1f} {s.setup_s:>8.1f} "
                         f"{s.fast:>9} {f'{s.drops_gateway}/{s.drops_other}':>15} "
                         f"{s.relay_dropped:>6} {s.queued_kib:>10.1f} {s.late:>6} "
                         f"{('' if s.drained else '>') + f'{s.drain_s:.2f}':>7} "
                         f"{100 * s.pace:>6.1f} {s.rejected:>8} {s.udp_errors:>7}  "
                         f"{_result(s)}")
        lines.append(f"maximum: {summary['max_calls']} concurrent full-media calls "
                     f"(loss <= {100 * LOSS_LIMIT:g} %, offered >= {100 * PACE_FLOOR:g} % of "
                     "the nominal load)")
        if "cpu_per_call_ms_per_s" in summary:
            lines.append(f"per call: {summary['cpu_per_call_ms_per_s']} ms CPU per second "
                         f"(whole lab process), {summary['rss_per_call_kib']} KiB RSS")
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if summary["max_calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
