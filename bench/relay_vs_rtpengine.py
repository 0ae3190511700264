"""Our relay and rtpengine (Debian rtpengine-daemon, userspace forwarding: --table=-1, no
kernel module) side by side under the same load: N audio+video calls (bench/relay_load.py),
plain RTP latched on both sides, and SDES-SRTP (side A) <-> RTP (side B). rtpengine is driven
over its ng control protocol (bencode over UDP: offer from A, answer from B per call) and
kept on 127.0.0.1 (its only interface, ng listener and port range); it is stopped at the end.

    .venv/bin/python bench/relay_vs_rtpengine.py --calls 100 --seconds 10

Prints, for each mode, the CPU per relayed packet of each relay and the ratio ours/rtpengine
(goal <= 1.0), with the loss and latencies of each. Our relay runs as rtpengine is run here:
one process (rtpengine: --num-threads=1), no SSRC mapping, strict latching on both sides.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.relay_load import (  # noqa: E402
    AUDIO,
    HOST,
    KEY_A,
    VIDEO,
    LoadGen,
    endpoint_sockets,
    percentile,
    uptime,
)

SUITE = "AES_CM_128_HMAC_SHA1_80"


# -- bencode (the ng protocol's encoding; five rules, not worth a dependency) --------------

def bencode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, str):
        return bencode(value.encode())
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in value.items()) + b"e"
    raise TypeError(type(value))


def bdecode(data: bytes, at: int = 0) -> tuple[Any, int]:
    lead = data[at:at + 1]
    if lead == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1:end]), end + 1
    if lead in (b"l", b"d"):
        items, at = [], at + 1
        while data[at:at + 1] != b"e":
            item, at = bdecode(data, at)
            items.append(item)
        if lead == b"l":
            return items, at + 1
        return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}, at + 1
    colon = data.index(b":", at)
    size = int(data[at:colon])
    return data[colon + 1:colon + 1 + size], colon + 1 + size


class Ng:
    """An ng client over UDP on loopback."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((HOST, port))
        self.sock.settimeout(2.0)

    def call(self, message: dict[str, Any], tries: int = 5) -> dict[str, Any]:
        cookie = b"%x" % random.getrandbits(48)
        for _ in range(tries):
            self.sock.send(cookie + b" " + bencode(message))
            try:
                while True:
                    data = self.sock.recv(65535)
                    if data.startswith(cookie + b" "):
                        reply, _ = bdecode(data, len(cookie) + 1)
                        if reply.get("result") not in (b"ok", b"pong"):
                            raise RuntimeError(f"rtpengine: {reply}")
                        return dict(reply)
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.2)
        raise TimeoutError(f"no answer from rtpengine to {message.get('command')}")


def sdp(port: int, srtp: bool) -> str:
    proto = "RTP/SAVP" if srtp else "RTP/AVP"
    crypto = f"a=crypto:1 {SUITE} inline:{base64.b64encode(KEY_A).decode()}\r\n" if srtp else ""
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}a=sendrecv\r\n"
            f"m=video {port} {proto} 96\r\na=rtpmap:96 H264/90000\r\n{crypto}a=sendrecv\r\n")


def media_of(body: bytes) -> list[tuple[int, bytes | None]]:
    """(port, SRTP key or None) of each m= line of rtpengine's SDP."""
    out: list[tuple[int, bytes | None]] = []
    for line in body.decode().splitlines():
        if line.startswith("m="):
            out.append((int(line.split()[1]), None))
        elif line.startswith("a=crypto:") and SUITE in line and out and out[-1][1] is None:
            inline = line.split("inline:")[1].split("|")[0].split()[0]
            out[-1] = (out[-1][0], base64.b64decode(inline)[:30])
    return out


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rtpengine_packets(reply: dict[str, Any]) -> int:
    """RTP packets rtpengine counted for a call (its ng ``query`` totals)."""
    totals = reply.get("totals", {})
    rtp = totals.get("RTP", {}) if isinstance(totals, dict) else {}
    return int(rtp.get("packets", 0)) if isinstance(rtp, dict) else 0


def run_rtpengine(calls: int, seconds: float, srtp: bool, realtime: bool) -> dict[str, Any]:
    binary = shutil.which("rtpengine")
    if binary is None:
        raise SystemExit("rtpengine not installed (Debian rtpengine-daemon; make peers)")
    la, lb = endpoint_sockets()
    ng_port = free_udp_port()
    base = random.randrange(20000, 60000 - 8 * calls - 200) & ~1
    workdir = tempfile.mkdtemp(prefix="fastpath-rtpengine-")
    log = open(os.path.join(workdir, "rtpengine.log"), "w")
    prefix = ["chrt", "-f", "20"] if realtime and os.geteuid() == 0 else []  # as our relay
    proc = subprocess.Popen(
        [*prefix, binary, "--config-file=none", "--foreground", "--log-stderr", "--log-level=4",
         "--table=-1", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}",
         f"--port-min={base}", f"--port-max={base + 8 * calls + 200}", "--num-threads=1",
         "--media-num-threads=1", "--timeout=120", "--delete-delay=0",
         f"--pidfile={workdir}/rtpengine.pid"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ng = Ng(ng_port)
        ng.call({"command": "ping"}, tries=25)
        flows: list[Any] = []
        for i in range(calls):
            cid = f"fastpath-bench-{i}"
            offer = ng.call({"command": "offer", "call-id": cid, "from-tag": "a",
                             "sdp": sdp(la.getsockname()[1], srtp), "ICE": "remove",
                             "transport-protocol": "RTP/AVP", "replace": ["origin"]})
            answer = ng.call({"command": "answer", "call-id": cid, "from-tag": "a",
                              "to-tag": "b", "sdp": sdp(lb.getsockname()[1], False),
                              "ICE": "remove", "replace": ["origin"]})
            toward_b, toward_a = media_of(offer["sdp"]), media_of(answer["sdp"])
            for j, (pps, size) in enumerate((AUDIO, VIDEO)):
                port_a, key_a = toward_a[j]
                port_b, _ = toward_b[j]
                if srtp and key_a is None:
                    raise RuntimeError("rtpengine's answer toward A has no SDES key")
                flows.append((0, (HOST, port_a), pps, size, 0x10000 + 4 * i + 2 * j))
                flows.append((1, (HOST, port_b), pps, size, 0x10000 + 4 * i + 2 * j + 1, key_a)
                             if srtp else (1, (HOST, port_b), pps, size,
                                           0x10000 + 4 * i + 2 * j + 1))
        load = LoadGen((la, lb), flows, seconds, keys=(KEY_A if srtp else None, None),
                       realtime=realtime)
        cpu0 = proc_cpu(proc.pid)
        load.start()
        lg = load.result(seconds + 30)
        cpu = proc_cpu(proc.pid) - cpu0
        counted = 0
        for i in range(calls):
            cid = f"fastpath-bench-{i}"
            counted += rtpengine_packets(ng.call({"command": "query", "call-id": cid}))
            ng.call({"command": "delete", "call-id": cid, "from-tag": "a"})
        # rtpengine's totals count what it received; a packet received is a packet relayed
        # (no drops but the kernel queue's) -- ours count forwarded packets
        return {"cpu": cpu, "relayed": counted or sum(lg["received"]), "lg": lg}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        la.close()
        lb.close()


def run_ours(calls: int, seconds: float, srtp: bool, realtime: bool) -> dict[str, Any]:
    import multiprocessing as mp

    from bench.relay_fast import _worker
    la, lb = endpoint_sockets()
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, daemon=True, args=(
        child, 0, 2 * calls, "native", srtp, la.getsockname(), lb.getsockname(), seconds,
        False, True, False, realtime))
    proc.start()
    ports, _ = parent.recv()
    flows: list[Any] = []
    for i, (port_a, port_b) in enumerate(ports):
        pps, size = AUDIO if i % 2 == 0 else VIDEO
        flows.append((0, (HOST, port_a), pps, size, 0x10000 + 2 * i))
        flows.append((1, (HOST, port_b), pps, size, 0x10000 + 2 * i + 1, KEY_A)
                     if srtp else (1, (HOST, port_b), pps, size, 0x10000 + 2 * i + 1))
    load = LoadGen((la, lb), flows, seconds, keys=(KEY_A if srtp else None, None),
                   realtime=realtime)
    parent.send("go")
    load.start()
    lg = load.result(seconds + 30)
    result = parent.recv()
    proc.join(5)
    la.close()
    lb.close()
    return {"cpu": result["cpu"], "relayed": result["counters"]["forwarded"], "lg": lg}


def report(name: str, r: dict[str, Any]) -> float:
    lg = r["lg"]
    sent, received = sum(lg["sent"]), sum(lg["received"])
    per = 1e6 * r["cpu"] / max(r["relayed"], 1)
    sys.stdout.write(
        f"  {name:<10} {per:6.2f} us/pkt  CPU {r['cpu']:.2f} s, relayed {r['relayed']}, lost "
        f"{sent - received} of {sent}, e2e p50 {percentile(lg['latency_10us'], 0.5, 10):.2f} "
        f"ms p99 {percentile(lg['latency_10us'], 0.99, 10):.2f} ms; load gen CPU "
        f"{lg['cpu']:.2f} s\n")
    return per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mode", choices=["plain", "srtp", "both"], default="both")
    ap.add_argument("--realtime", action="store_true",
                    help="both relays and the load generator SCHED_FIFO (root): on a shared "
                         "machine, packets are then not queued behind other processes")
    args = ap.parse_args(argv)
    modes = ["plain", "srtp"] if args.mode == "both" else [args.mode]
    sys.stdout.write(f"{args.calls} audio+video calls ({args.calls * 600} pkt/s offered), "
                     f"{args.seconds:g} s each; load average {uptime()}\n")
    for mode in modes:
        srtp = mode == "srtp"
        sys.stdout.write(f"{'SDES-SRTP <-> RTP' if srtp else 'plain RTP <-> RTP'} "
                         "(latched both sides)\n")
        ours = report("ours", run_ours(args.calls, args.seconds, srtp, args.realtime))
        theirs = report("rtpengine", run_rtpengine(args.calls, args.seconds, srtp,
                                                   args.realtime))
        sys.stdout.write(f"  ratio ours/rtpengine {ours / theirs:.2f} (goal <= 1.0); load "
                         f"average {uptime()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
