"""Benchmark of the gateway's media path: N calls, each audio (50 packets/s each way) + video
(250 packets/s each way), Microsoft leg ICE (RTP and RTCP components) + SRTP, video leg plain
RTP.

    .venv/bin/python bench/media_relay.py --calls 50 --seconds 10

The gateway (a MediaSession per call: per stream one relay per component, ``media.relay``)
runs in this process; the Lync peers (aioice with components 1 and 2, as Lync offers them;
SRTP by pylibsrtp) and the video endpoints (an RTP and an RTCP socket each) run in a child
process, the load generator, whose own CPU is reported. Each stream also sends one RTCP
sender report per second each way, through the RTCP component. Latency is end to end,
peer -> relay -> peer, from a CLOCK_MONOTONIC stamp in the RTP payload: an upper bound of
what the relay adds (and of the generator's own delays). Traffic stays on 127.0.0.0/8.
``GATEWAY_MEDIA_RELAY`` / ``GATEWAY_MEDIA_THREADS`` pick the packet path, as in the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing as mp
import os
import resource
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any

GATEWAY = "127.0.2.1"
PEER = "127.0.0.1"
RATES = {"audio": 1, "video": 5}
"""Packets per 20 ms tick: 50/s audio, 250/s video."""
TICK = 0.02
RTCP_EVERY = 50
"""Ticks between two RTCP sender reports of a stream (1 s)."""
SSRC_MS, SSRC_VIDEO = 1000, 5000
"""The senders' SSRCs: the Lync peer's lies in its x-ssrc-range (1000-1099)."""
_HDR = struct.Struct("!BBHII")
_STAMP = struct.Struct("!QI")  # send time (ns, CLOCK_MONOTONIC), sequence
_SR = struct.Struct("!BBHIQIII")
"""An RTCP sender report without report blocks (RFC 3550 §6.4.1): 28 bytes."""
WAYS = ("to_video", "to_ms")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread: the native hub's workers too
    return r.ru_utime + r.ru_stime


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- peer process (the load generator) --------------------------------------------------------

class _Sink(asyncio.DatagramProtocol):
    """Counts what arrives on one component of one side (SRTP/SRTCP unprotected first)."""

    def __init__(self, stats: dict[str, Any], way: str, rtcp: bool,
                 unprotect: Callable[[bytes], bytes] | None = None) -> None:
        self.stats, self.unprotect = stats, unprotect
        self.rx_key = f"{way}_rtcp_rx" if rtcp else f"{way}_rx"
        self.lat: list[int] | None = None if rtcp else stats[f"{way}_lat"]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.unprotect is not None:
            try:
                data = self.unprotect(data)
            except Exception:
                self.stats["srtp_failures"] += 1
                return
        self.stats[self.rx_key] += 1
        if self.lat is not None and len(data) >= 24:
            sent, _ = _STAMP.unpack_from(data, 12)
            self.lat.append(time.monotonic_ns() - sent)


def _take_over(protocol: Any, sink: _Sink) -> None:
    """Media on an ICE socket goes straight to ``sink`` (skipping aioice's queue); STUN still
    goes to aioice, which answers the gateway's checks and consent requests (RFC 7675)."""
    stun = protocol.datagram_received

    def received(data: bytes, addr: Any) -> None:
        if data and 127 < data[0] < 192:
            sink.datagram_received(data, addr)
        else:
            stun(data, addr)
    protocol.datagram_received = received


async def _peer_main(pipe: Pipe, calls: int) -> None:
    import pylibsrtp
    from aioice import Candidate, Connection

    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {"srtp_failures": 0}
    for way in WAYS:
        stats.update({f"{way}_tx": 0, f"{way}_rx": 0, f"{way}_lat": [], f"{way}_rtcp_tx": 0,
                      f"{way}_rtcp_rx": 0})
    lync: list[list[dict[str, Any]]] = []
    offers = []
    for _ in range(calls):
        streams = []
        for kind in ("audio", "video"):
            conn = Connection(ice_controlling=True, components=2)  # RTP and RTCP, as Lync
            for component in (1, 2):
                conn._local_candidates += await conn.get_component_candidates(
                    component, addresses=[PEER])
            conn._local_candidates_start = conn._local_candidates_end = True
            video = []
            for rtcp in (False, True):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda rtcp=rtcp: _Sink(stats, "to_video", rtcp), local_addr=(PEER, 0))
                video.append(transport)
            streams.append({"kind": kind, "conn": conn, "key": os.urandom(30), "video": video,
                            "seq": 0})
        lync.append(streams)
        offers.append([(s["kind"], s["conn"].local_username, s["conn"].local_password,
                        [c.to_sdp() for c in s["conn"].local_candidates],
                        base64.b64encode(s["key"]).decode(),
                        [t.get_extra_info("sockname")[1] for t in s["video"]])
                       for s in streams])
    pipe.send(offers)
    # No blocking recv on the loop: aioice must keep answering the gateway's checks. A
    # controlling peer completes on its own first success, often before the (controlled)
    # gateway's checks have their answers; a loop blocked in pipe.recv() left those
    # unanswered until the ICE timeout (most legs, with 80 streams at once).
    # Per call, per stream: (ufrag, pwd, candidates, key b64, gw ports).
    answers = await loop.run_in_executor(None, pipe.recv)

    for streams, call in zip(lync, answers, strict=True):
        for s, ans in zip(streams, call, strict=True):
            conn = s["conn"]
            conn.remote_username, conn.remote_password = ans[0], ans[1]
            for c in ans[2]:
                await conn.add_remote_candidate(Candidate.from_sdp(c))
            await conn.add_remote_candidate(None)  # aioice drops components the answer lacks
    pipe.send("answered")  # as a Lync client holding the answer when the gateway's checks come
    await loop.run_in_executor(None, pipe.recv)

    async def connect(s: dict[str, Any], ans: tuple[Any, ...]) -> None:
        conn = s["conn"]
        await conn.connect()
        s["tx"] = pylibsrtp.Session(pylibsrtp.Policy(
            key=s["key"], ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=base64.b64decode(ans[3]), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        s["ms_send"] = {}
        for component, pair in conn._nominated.items():
            rtcp = component == 2
            _take_over(pair.protocol, _Sink(stats, "to_ms", rtcp,
                                            rx.unprotect_rtcp if rtcp else rx.unprotect))
            s["ms_send"][component] = (pair.protocol.transport, pair.remote_addr)
        s["video_gw"] = [(GATEWAY, port) for port in ans[4]]

    pairs = [(s, a) for streams, call in zip(lync, answers, strict=True)
             for s, a in zip(streams, call, strict=True)]
    await asyncio.gather(*(connect(s, a) for s, a in pairs))  # every stream at once
    flat = [s for streams in lync for s in streams]
    pipe.send({"components": sorted({len(s["ms_send"]) for s in flat})})
    seconds = await loop.run_in_executor(None, pipe.recv)
    cpu0 = _cpu_seconds()
    start = loop.time()
    next_tick = start
    tick = 0
    while loop.time() - start < seconds:
        for s in flat:
            pad = bytes(140 if s["kind"] == "audio" else 1000)
            transport, addr = s["ms_send"][1]
            for _ in range(RATES[s["kind"]]):
                s["seq"] += 1
                seq = s["seq"]
                now = time.monotonic_ns()
                pkt = _HDR.pack(0x80, 0, seq & 0xFFFF, seq, SSRC_MS) + _STAMP.pack(now, seq)
                transport.sendto(s["tx"].protect(pkt + pad), addr)
                stats["to_video_tx"] += 1
                pkt = _HDR.pack(0x80, 0, seq & 0xFFFF, seq, SSRC_VIDEO) + _STAMP.pack(now, seq)
                s["video"][0].sendto(pkt + pad, s["video_gw"][0])
                stats["to_ms_tx"] += 1
            if tick % RTCP_EVERY == 0 and 2 in s["ms_send"]:
                now = time.monotonic_ns()
                transport, addr = s["ms_send"][2]
                sr = _SR.pack(0x80, 200, 6, SSRC_MS, now, s["seq"], s["seq"], 0)
                transport.sendto(s["tx"].protect_rtcp(sr), addr)
                stats["to_video_rtcp_tx"] += 1
                sr = _SR.pack(0x80, 200, 6, SSRC_VIDEO, now, s["seq"], s["seq"], 0)
                s["video"][1].sendto(sr, s["video_gw"][1])
                stats["to_ms_rtcp_tx"] += 1
        tick += 1
        next_tick += TICK
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
    sending = loop.time() - start
    cpu = _cpu_seconds() - cpu0
    await asyncio.sleep(1.0)  # drain
    for way in WAYS:
        lat = sorted(stats.pop(f"{way}_lat"))
        stats[f"{way}_p50_us"] = lat[len(lat) // 2] / 1000 if lat else None
        stats[f"{way}_p99_us"] = lat[int(len(lat) * 0.99)] / 1000 if lat else None
    stats["cpu"] = cpu / sending
    stats["late_ms"] = max(0.0, (loop.time() - 1.0 - next_tick) * 1000)
    pipe.send(stats)
    for s in flat:
        await s["conn"].close()
        for transport in s["video"]:
            transport.close()


def _peer_process(pipe: Pipe, calls: int, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop
        uvloop.install()
    asyncio.run(_peer_main(pipe, calls))


# -- gateway side ---------------------------------------------------------------------------

def _lync_sdp(streams: list[tuple[Any, ...]]) -> str:
    lines = ["v=0", f"o=- 0 1 IN IP4 {PEER}", "s=session", f"c=IN IP4 {PEER}", "t=0 0"]
    for kind, ufrag, pwd, cands, key, _ in streams:
        ports = {int(c.split()[1]): c.split()[5] for c in cands}
        fmt, maps = (("0", ["a=rtpmap:0 PCMU/8000"]) if kind == "audio" else
                     ("122", ["a=rtpmap:122 X-H264UC/90000",
                              "a=fmtp:122 packetization-mode=1;mst-mode=NI-TC"]))
        lines += [f"m={kind} {ports[1]} RTP/SAVP {fmt}", f"a=rtcp:{ports[2]}",
                  f"a=x-ssrc-range:{SSRC_MS}-{SSRC_MS + 99}",
                  f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}",
                  *[f"a=candidate:{c}" for c in cands],
                  f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31", *maps,
                  "a=encryption:required"]
    return "\r\n".join(lines) + "\r\n"


def _video_answer(offer: Any, ports: list[list[int]]) -> str:
    lines = ["v=0", f"o=- 1 1 IN IP4 {PEER}", "s=-", f"c=IN IP4 {PEER}", "t=0 0"]
    for media, (rtp, rtcp) in zip(offer.media, ports, strict=True):
        lines += [f"m={media.kind} {rtp} RTP/AVP {' '.join(media.formats)}", f"a=rtcp:{rtcp}"]
        lines += [f"a={a}" for a in media.attributes if a.name in ("rtpmap", "fmtp")]
    return "\r\n".join(lines) + "\r\n"


async def _connected(session: Any, streams: int) -> None:
    """Until every stream's ICE completed; a failed one ends the bench (its figures would
    be a relay that never ran)."""
    from media.events import MediaConnected, MediaFailed

    connected = 0
    while connected < streams:
        event = await asyncio.wait_for(session.events.get(), 90)
        if isinstance(event, MediaFailed):
            raise SystemExit(f"{session.call_id}: {event.kind} stream failed: {event.reason}")
        connected += isinstance(event, MediaConnected)


async def _gateway(calls: int, seconds: float, pipe: Pipe) -> dict[str, Any]:
    from media.ice_leg import IceSettings
    from media.ms_dialect import Crypto
    from media.port_pool import PortPool, PortPoolSettings
    from media.relay import media_threads
    from media.rewrite import to_microsoft, to_standard
    from media.sdp import parse_sdp
    from media.session import MediaSession, MediaSettings

    loop = asyncio.get_running_loop()
    offers = await loop.run_in_executor(None, pipe.recv)
    pool = PortPool(PortPoolSettings(30000, 30000 + 8 * calls + 1))
    # The peers are aioice (RFC 5389 STUN): the gateway's "auto" dialect finds it out.
    settings = MediaSettings(GATEWAY, GATEWAY, IceSettings(connect_timeout=60))
    rss0 = _rss_kib()
    sessions: list[MediaSession] = []
    answers = []
    applies: list[dict[str, Any]] = []
    for index, call in enumerate(offers):
        session = MediaSession(f"bench-{index}", pool, settings)
        await session.prepare(["audio", "video"])
        ms_offer = parse_sdp(_lync_sdp(call))
        video_offer = to_standard(ms_offer, session.video_plan())
        video_answer = parse_sdp(_video_answer(video_offer, [s[5] for s in call]))
        ms_answer = to_microsoft(video_answer, session.microsoft_plan(), answer_to=ms_offer)
        applies.append(dict(microsoft_local=ms_answer, microsoft_remote=ms_offer,
                            video_local=video_offer, video_remote=video_answer))
        sessions.append(session)
        answers.append([(m.get("ice-ufrag"), m.get("ice-pwd"), m.get_all("candidate"),
                         base64.b64encode(Crypto.parse(m.get_all("crypto")[0]).key_salt).decode(),
                         list(s.video.ports))
                        for m, s in zip(ms_answer.media, session.streams, strict=True)
                        if s is not None])
    rss_sessions = _rss_kib() - rss0
    pipe.send(answers)
    # The gateway's checks start at apply: only once the peers hold the answers. Earlier, a
    # check reaching an aioice peer without the answer was seen to leave the gateway's pair
    # in progress until the ICE timeout (all calls failed at 40 calls; a gateway issue).
    await loop.run_in_executor(None, pipe.recv)
    for session, sdps in zip(sessions, applies, strict=True):
        await session.apply(**sdps)
    pipe.send("go")
    peer = await loop.run_in_executor(None, pipe.recv)  # the peers' ICE completed
    await asyncio.gather(*(_connected(s, 2) for s in sessions))  # and ours
    streams = [st for s in sessions for st in s.streams if st is not None]
    impl = {st.impl for st in streams}
    load0 = _load()
    cpu0, t0 = _cpu_seconds(), time.monotonic()
    pipe.send(seconds)
    stats = await loop.run_in_executor(None, pipe.recv)
    cpu1, t1 = _cpu_seconds(), time.monotonic()
    load1 = _load()
    relayed = sum(c.microsoft.packets_out + c.video.packets_out
                  for s in sessions for c in s.counters())
    fast = sum(sum(st.fast) for st in streams)  # at the end: no component fell back
    for session in sessions:
        await session.close()
    assert pool.ports_in_use == 0
    return {"stats": stats, "relayed": relayed, "wall": t1 - t0, "cpu": (cpu1 - cpu0) / (t1 - t0),
            "rss_kib_per_session": rss_sessions / max(calls, 1), "seconds": seconds,
            "impl": ",".join(sorted(impl)), "threads": media_threads() if impl == {"native"}
            else 0, "components": sum(len(st.relays) for st in streams),
            "fast": fast,
            "peer_components": peer["components"], "load": (load0, load1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the gateway into FILE")
    args = parser.parse_args(argv)
    ours, theirs = mp.get_context("fork").Pipe()
    peer = mp.get_context("fork").Process(target=_peer_process,
                                          args=(theirs, args.calls, not args.no_uvloop))
    peer.daemon = True  # a failed gateway side must not wait on it
    peer.start()
    theirs.close()  # the peer's death ends our recv (EOFError) instead of hanging it
    if not args.no_uvloop:
        import uvloop
        uvloop.install()
    if args.profile:
        import cProfile

        with cProfile.Profile() as prof:
            result = asyncio.run(_gateway(args.calls, args.seconds, ours))
        prof.dump_stats(args.profile)
    else:
        result = asyncio.run(_gateway(args.calls, args.seconds, ours))
    peer.join(30)
    s = result["stats"]
    out = sys.stdout
    threads = os.environ.get("GATEWAY_MEDIA_THREADS", "").strip() or "unset: one per core"
    if result["impl"] != "native":
        threads = "not used: the Python hub runs on the event loop's thread"
    out.write(f"calls                {args.calls} (audio 50 pps + video 250 pps, each way; "
              f"RTCP 1/s per stream each way)\n")
    out.write(f"relay path           {result['impl']}, fast path on {result['fast']} of "
              f"{result['components']} components (RTP+RTCP), {result['threads']} worker "
              f"threads (GATEWAY_MEDIA_THREADS {threads}); Lync peers' ICE components "
              f"{'/'.join(map(str, result['peer_components']))}\n")
    tx = s["to_video_tx"] + s["to_ms_tx"]
    out.write(f"offered              {tx / args.seconds:,.0f} RTP packets/s into the relay\n")
    out.write(f"relayed              {result['relayed'] / args.seconds:,.0f} packets/s\n")
    lost = 0
    for way, label in (("to_video", "Microsoft -> video"), ("to_ms", "video -> Microsoft")):
        sent, got = s[way + "_tx"], s[way + "_rx"]
        loss = 100.0 * (sent - got) / sent if sent else 0.0
        p50, p99 = s[way + "_p50_us"], s[way + "_p99_us"]
        p50s = f"{p50:,.0f}" if p50 is not None else "-"
        p99s = f"{p99:,.0f}" if p99 is not None else "-"
        rtcp_sent, rtcp_got = s[way + "_rtcp_tx"], s[way + "_rtcp_rx"]
        out.write(f"{label:20} RTP sent {sent}, received {got}, loss {loss:.3f}%, "
                  f"latency p50 {p50s} us, p99 {p99s} us; RTCP sent {rtcp_sent}, "
                  f"received {rtcp_got}\n")
        lost += sent - got + rtcp_sent - rtcp_got
    if s["srtp_failures"]:
        out.write(f"SRTP failures        {s['srtp_failures']} at the Lync peers\n")
    out.write(f"gateway CPU          {100 * result['cpu']:.0f}% of one core "
              f"({100 * result['cpu'] / max(args.calls, 1):.2f}% per call)\n")
    out.write(f"load generator CPU   {100 * s['cpu']:.0f}% of one core (its last tick "
              f"{s['late_ms']:.0f} ms late)\n")
    out.write(f"gateway memory       {result['rss_kib_per_session']:.0f} KiB RSS per session\n")
    out.write(f"load average         {result['load'][0]} before, {result['load'][1]} after "
              f"({os.cpu_count()} cores)\n")
    return 0 if lost == 0 and tx else 1


if __name__ == "__main__":
    sys.exit(main())
