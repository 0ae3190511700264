"""Benchmark of the relay's packet path alone: N calls, each an audio stream (50 packets/s
each way, 172 bytes) and a video stream (250 packets/s each way, 1100 bytes), Microsoft side
SRTP (``--plain``: RTP) with the SSRCs mapped into a range, video side plain RTP latched
(strict). The relay (media.relay: native by default, ``--impl python`` for the portable path)
runs in ``--workers`` processes, each with its own hub (``--threads T``: that hub's T native
worker threads pump it, as a gateway's hub does once attached; 0: the process's own thread
polls it); the load comes from the native load
generator (bench/relay_load.py) in another process, whose CPU is reported too.

    .venv/bin/python bench/relay_fast.py --calls 100 --seconds 10

Figures: loss; relay-added latency from the kernel's receive timestamp (SO_TIMESTAMPNS) to
after the send, measured in the relay; end-to-end latency (generator send to kernel receive);
CPU per relayed packet; share of the machine; memory per call. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.relay_load import (  # noqa: E402
    HOST,
    KEY_A,
    LoadGen,
    call_streams,
    cpu_seconds,
    endpoint_sockets,
    flows_for,
    merged,
    percentile,
    rss_kib,
    udp_drops,
    uptime,
)
from media.relay import media_coalesce_us  # noqa: E402

RCVBUF = 1 << 20
"""Per relay socket: ~4 s of a video stream, so that a worker descheduled by the shared
machine's other processes delays packets instead of dropping them."""
GOALS = "goals at 100 calls: 0 loss, relay p99 < 2 ms, e2e p99 < 10 ms, relay <= 50 % of " \
        "the machine, <= 100 KB per call; at 300 calls: 0 loss"


def thread_cpu_seconds() -> list[float]:
    """CPU seconds of each of this process's threads but the main one (its hub's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        if int(tid) == os.getpid():
            continue
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / tick)   # utime + stime
    return out


def _worker(conn: Connection, first_stream: int, streams: int, impl: str, srtp: bool,
            peer_a: tuple[str, int], peer_b: tuple[str, int], seconds: float,
            ssrc_map: bool = True, latch_a: bool = False, busy: bool = False,
            realtime: bool = False, threads: int = 0, coalesce_us: int | None = None,
            peers: list[tuple[tuple[str, int], tuple[str, int]]] | None = None) -> None:
    """One relay process: ``streams`` relays on one hub (bench/relay_vs_rtpengine.py runs it
    without SSRC mapping and with both sides latched, as rtpengine is run); ``peers``: one
    (peer_a, peer_b) per load generator, call c served by generator c % len(peers)."""
    from media.ms_dialect import SsrcRange
    from media.relay import ForwardingPlan, Latching, SidePlan, make_hub, make_relay

    hub = make_hub(timestamps=True, impl=impl, rcvbuf=RCVBUF, threads=threads,
                   coalesce_us=coalesce_us)
    make_relay(impl=impl).close()   # imports and library set-up are not per call
    rss0 = rss_kib()
    relays = []
    ports = []
    for i in range(first_stream, first_stream + streams):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        ports.append((a.getsockname()[1], b.getsockname()[1]))
        relay = make_relay(a.detach(), b.detach(), impl=impl)
        if peers:
            peer_a, peer_b = peers[(i // 2) % len(peers)]
        first = 0x01000000 + 256 * i
        relay.publish(ForwardingPlan(
            a=SidePlan(latching=Latching.STRICT if latch_a else Latching.FIXED, address=peer_a,
                       rx_key=KEY_A if srtp else None, tx_key=KEY_A if srtp else None),
            b=SidePlan(latching=Latching.STRICT, address=peer_b),
            a_to_b=True, b_to_a=True, rtcp=True,
            ssrc_range=SsrcRange(first, first + 99) if ssrc_map else None))
        hub.register(relay)
        relays.append(relay)
    conn.send((ports, rss_kib() - rss0))
    conn.recv()  # go
    if realtime:  # a relay host's setting: wake-ups preempt the machine's other work
        try:  # (worker threads started below inherit it)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))  # above the generator
        except PermissionError:  # not root: stays an ordinary process
            pass
    before, wall = cpu_seconds(), time.monotonic()
    hub.start()   # worker threads, if any (RUSAGE_SELF counts them)
    if busy and not threads:  # diagnostic: never sleeps in epoll_wait (wake-ups vs work)
        end = time.monotonic() + seconds + 0.8
        while time.monotonic() < end:
            hub.poll(0)
    else:
        hub.run(seconds + 0.8)
    workers_cpu = thread_cpu_seconds()   # before stop() joins them
    hub.stop()
    cpu, wall = cpu_seconds() - before, time.monotonic() - wall
    totals: dict[str, int] = {}
    for relay in relays:
        for side in (0, 1):
            for k, v in relay.counters(side).items():
                totals[k] = totals.get(k, 0) + v
    conn.send({"cpu": cpu, "wall": wall, "latency": hub.latency(), "counters": totals,
               "workers_cpu": workers_cpu,
               "queue_drops": udp_drops([port for pair in ports for port in pair])})
    for relay in relays:
        relay.close()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="relay processes (one hub each)")
    ap.add_argument("--threads", type=int, default=0,
                    help="native worker threads per relay process (0: its own thread polls)")
    ap.add_argument("--gen-procs", type=int, default=1,
                    help="load generator processes (call c in generator c %% K)")
    ap.add_argument("--impl", choices=["native", "python"], default="native")
    ap.add_argument("--plain", action="store_true", help="no SRTP on the Microsoft side")
    ap.add_argument("--busy-poll", action="store_true",
                    help="diagnostic: the relay polls without sleeping (burns its core)")
    ap.add_argument("--verify-every", type=int, default=1, metavar="N",
                    help="the generator authenticates one SRTP packet in N it receives "
                         "(a cheaper generator for 300 calls on 2 cores)")
    ap.add_argument("--coalesce-us", type=int, default=None, metavar="US",
                    help="the relay's worker threads nap US after a round that found several "
                         "sockets ready (default: the gateway's, media.relay.COALESCE_US or "
                         "GATEWAY_MEDIA_COALESCE_US; 0: every arrival wakes a worker)")
    ap.add_argument("--realtime", action="store_true",
                    help="run the relay workers and the load generator SCHED_FIFO (root): "
                         "wake-ups are not queued behind the shared machine's other work")
    ap.add_argument("--generator-first", action="store_true",
                    help="with --realtime, the generator's priority above the relay's: when "
                         "both need more CPU than the machine has, the relay waits (its "
                         "latency grows) instead of the generator (which then loses packets)")
    return ap


def main(argv: list[str] | None = None) -> int:
    figures = run(parser().parse_args(argv))
    return 0 if figures["lost"] == 0 else 1


def run(args: argparse.Namespace) -> dict[str, float]:
    """One measurement, printed; returns its main figures (for bench/relay_cores.py)."""
    srtp = not args.plain
    streams_total = 2 * args.calls
    gens = [endpoint_sockets() for _ in range(max(args.gen_procs, 1))]
    peers = [(la.getsockname(), lb.getsockname()) for la, lb in gens]
    ctx = mp.get_context("fork")
    workers = []
    per = -(-streams_total // args.workers)
    start = 0
    while start < streams_total:
        n = min(per, streams_total - start)
        n += n % 2 if start + n < streams_total else 0   # keep a call's streams together
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, daemon=True, args=(
            child, start, n, args.impl, srtp, *peers[0], args.seconds,
            True, False, args.busy_poll, args.realtime, args.threads, args.coalesce_us, peers))
        proc.start()
        workers.append((proc, parent))
        start += n
    ports: list[tuple[int, int]] = []
    rss_relays = 0
    for _, conn in workers:
        got, rss = conn.recv()
        ports += got
        rss_relays += rss
    streams = call_streams(args.calls, ports)
    loads = [LoadGen(socks, flows_for([st for i, st in enumerate(streams)
                                       if (i // 2) % len(gens) == k], 0x10000 * (k + 1)),
                     args.seconds, keys=(KEY_A if srtp else None, None),
                     realtime=args.realtime, verify_every=args.verify_every,
                     priority=30 if args.generator_first else 10)
             for k, socks in enumerate(gens)]
    for _, conn in workers:
        conn.send("go")
    for load in loads:
        load.start()
    lg = merged([load.result(args.seconds + 30) for load in loads])
    gen_drops = udp_drops([s.getsockname()[1] for pair in gens for s in pair])
    results = [conn.recv() for _, conn in workers]
    for proc, _ in workers:
        proc.join(5)
    sent, received = sum(lg["sent"]), sum(lg["received"])
    relay_cpu = sum(r["cpu"] for r in results)
    wall = max(r["wall"] for r in results)
    lat = [sum(col) for col in zip(*(r["latency"] for r in results), strict=True)]
    counters: dict[str, int] = {}
    for r in results:
        for k, v in r["counters"].items():
            counters[k] = counters.get(k, 0) + v
    relayed = counters.get("forwarded", 0)
    cores = os.cpu_count() or 1
    out = sys.stdout
    coalesce = media_coalesce_us() if args.coalesce_us is None else args.coalesce_us
    out.write(f"relay path        {args.impl}, {args.workers} process(es) x "
              f"{args.threads or 'no'} worker thread(s) (nap {coalesce} us after a busy "
              "round), "
              f"{'generator' if args.generator_first else 'relay'} first, "
              f"{'SRTP <-> RTP' if srtp else 'RTP <-> RTP'} (SSRC mapping, strict latch)\n")
    out.write(f"calls             {args.calls} (audio 50 + video 250 pps each way) = "
              f"{args.calls * 600} pkt/s offered\n")
    out.write(f"load average      {uptime()} ({cores} cores)\n")
    out.write(f"packets           sent {sent}, received {received}, lost {sent - received} "
              f"({100 * (sent - received) / max(sent, 1):.3f} %)\n")
    relay_drops = sum(r.get("queue_drops", 0) for r in results)
    out.write(f"where lost        the relay's receive queues overflowed {relay_drops} times "
              f"(it received {counters.get('packets_in', 0)}), the generator's "
              f"{gen_drops} times\n")
    out.write("relay drops       " + ", ".join(
        f"{k} {v}" for k, v in counters.items() if k.startswith("dropped") and v) + "\n"
        if any(v for k, v in counters.items() if k.startswith("dropped")) else
        "relay drops       none\n")
    out.write(f"relay-added       p50 {percentile(lat, 0.5, 1):.3f} ms, p99 "
              f"{percentile(lat, 0.99, 1):.3f} ms, p99.9 {percentile(lat, 0.999, 1):.3f} ms "
              f"({sum(lat)} samples, receive timestamp -> after send)\n")
    e2e = lg["latency_10us"]
    out.write(f"end to end        p50 {percentile(e2e, 0.5, 10):.3f} ms, p99 "
              f"{percentile(e2e, 0.99, 10):.3f} ms, max bucket "
              f"{percentile(e2e, 1.0, 10):.2f} ms\n")
    out.write(f"relay CPU         {relay_cpu:.2f} s in {wall:.1f} s = "
              f"{100 * relay_cpu / wall / cores:.1f} % of the machine, "
              f"{1e6 * relay_cpu / max(relayed, 1):.2f} us per relayed packet\n")
    shares = [f"{c:.2f}" for r in results for c in r.get("workers_cpu", [])]
    if shares:
        out.write(f"worker threads    CPU {', '.join(shares)} s (each thread's own)\n")
    out.write(f"load gen CPU      {len(loads)} process(es), {lg['cpu']:.2f} s "
              f"({100 * lg['cpu'] / max(lg['wall'], 1e-9) / cores:.1f} % of the machine) = "
              f"{1e6 * lg['cpu'] / max(sent + received, 1):.2f} us per packet sent+received "
              f"(send errors {lg['send_errors']}, SRTP failures {lg['srtp_failures']})\n")
    out.write(f"memory            {rss_relays / args.calls:.1f} KiB per call (relay RSS growth "
              f"while setting up {args.calls} calls)\n")
    out.write(GOALS + "\n")
    for pair in gens:
        for sock in pair:
            sock.close()
    return {"lost": sent - received, "loss_pct": 100 * (sent - received) / max(sent, 1),
            "relay_p99_ms": percentile(lat, 0.99, 1), "e2e_p99_ms": percentile(e2e, 0.99, 10),
            "relay_machine_pct": 100 * relay_cpu / wall / cores,
            "loadgen_machine_pct": 100 * lg["cpu"] / max(lg["wall"], 1e-9) / cores,
            "us_per_packet": 1e6 * relay_cpu / max(relayed, 1)}


if __name__ == "__main__":
    sys.exit(main())
