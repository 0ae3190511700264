"""Benchmark of the media relay: N calls, each audio (50 packets/s each way) + video (about
250 packets/s each way), Microsoft leg ICE + SRTP, video leg plain RTP.

    .venv/bin/python bench/media_relay.py --calls 50 --seconds 10

The gateway (MediaSession per call) runs in this process; the Lync peers (aioice, SRTP) and
the video endpoints run in a child process, so each side has its own core. Latency is
end-to-end, peer -> relay -> peer, from a CLOCK_MONOTONIC stamp in the payload: an upper
bound of what the relay adds. Traffic stays on 127.0.0.0/8.
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
from multiprocessing.connection import Connection as Pipe
from typing import Any

GATEWAY = "127.0.2.1"
PEER = "127.0.0.1"
RATES = {"audio": 1, "video": 5}
"""Packets per 20 ms tick: 50/s audio, 250/s video."""
TICK = 0.02
_HDR = struct.Struct("!BBHII")
_STAMP = struct.Struct("!QI")  # send time (ns, CLOCK_MONOTONIC), sequence


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# -- peer process ---------------------------------------------------------------------------

class _Sink(asyncio.DatagramProtocol):
    def __init__(self, stats: dict[str, Any], way: str, srtp: Any = None) -> None:
        self.stats, self.way, self.srtp = stats, way, srtp

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.srtp is not None:
            if not 127 < data[0] < 192:
                return  # STUN consent checks share the socket
            try:
                data = self.srtp.unprotect(data)
            except Exception:
                return
        self.stats[self.way + "_rx"] += 1
        if len(data) >= 24 and data[1] & 0x7F != 200:
            sent, _ = _STAMP.unpack_from(data, 12)
            self.stats[self.way + "_lat"].append(time.monotonic_ns() - sent)


async def _peer_main(pipe: Pipe, calls: int) -> None:
    import pylibsrtp
    from aioice import Candidate, Connection

    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {"to_video_tx": 0, "to_video_rx": 0, "to_ms_tx": 0, "to_ms_rx": 0,
                             "to_video_lat": [], "to_ms_lat": []}
    lync: list[list[dict[str, Any]]] = []
    offers = []
    for _ in range(calls):
        streams = []
        for kind in ("audio", "video"):
            conn = Connection(ice_controlling=True, components=1)
            conn._local_candidates += await conn.get_component_candidates(1, addresses=[PEER])
            conn._local_candidates_start = conn._local_candidates_end = True
            vt, _ = await loop.create_datagram_endpoint(
                lambda: _Sink(stats, "to_video"), local_addr=(PEER, 0))
            streams.append({"kind": kind, "conn": conn, "key": os.urandom(30), "video": vt})
        lync.append(streams)
        offers.append([(s["kind"], s["conn"].local_username, s["conn"].local_password,
                        [c.to_sdp() for c in s["conn"].local_candidates],
                        base64.b64encode(s["key"]).decode(),
                        s["video"].get_extra_info("sockname")[1]) for s in streams])
    pipe.send(offers)
    answers = pipe.recv()  # per call, per stream: (ufrag, pwd, candidates, key b64, video gw port)

    async def connect(s: dict[str, Any], ans: tuple[Any, ...]) -> None:
        conn = s["conn"]
        conn.remote_username, conn.remote_password = ans[0], ans[1]
        for c in ans[2]:
            await conn.add_remote_candidate(Candidate.from_sdp(c))
        await conn.add_remote_candidate(None)
        await conn.connect()
        pair = conn._nominated[1]
        s["tx"] = pylibsrtp.Session(pylibsrtp.Policy(
            key=s["key"], ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=base64.b64decode(ans[3]), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        # Take the nominated socket over: the hot path skips aioice's queue.
        sink = _Sink(stats, "to_ms", rx)
        pair.protocol.datagram_received = sink.datagram_received
        s["ms_send"] = (pair.protocol.transport, pair.remote_addr)
        s["video_gw"] = (GATEWAY, ans[4])

    await asyncio.gather(*(connect(s, a) for streams, call in zip(lync, answers, strict=True)
                           for s, a in zip(streams, call, strict=True)))
    pipe.send("connected")
    seconds = pipe.recv()
    flat = [s for streams in lync for s in streams]
    seq = 0
    start = loop.time()
    next_tick = start
    while loop.time() - start < seconds:
        for s in flat:
            for _ in range(RATES[s["kind"]]):
                seq += 1
                now = time.monotonic_ns()
                pkt = _HDR.pack(0x80, 0, seq & 0xFFFF, seq, 1000) + _STAMP.pack(now, seq) + bytes(
                    140 if s["kind"] == "audio" else 1000)
                transport, addr = s["ms_send"]
                transport.sendto(s["tx"].protect(pkt), addr)
                stats["to_video_tx"] += 1
                pkt = _HDR.pack(0x80, 0, seq & 0xFFFF, seq, 5000) + _STAMP.pack(now, seq) + bytes(
                    140 if s["kind"] == "audio" else 1000)
                s["video"].sendto(pkt, s["video_gw"])
                stats["to_ms_tx"] += 1
        next_tick += TICK
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
    await asyncio.sleep(1.0)  # drain
    for way in ("to_video", "to_ms"):
        lat = sorted(stats.pop(way + "_lat"))
        stats[way + "_p50_us"] = lat[len(lat) // 2] / 1000 if lat else None
        stats[way + "_p99_us"] = lat[int(len(lat) * 0.99)] / 1000 if lat else None
    pipe.send(stats)
    for s in flat:
        await s["conn"].close()
        s["video"].close()


def _peer_process(pipe: Pipe, calls: int, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop
        uvloop.install()
    asyncio.run(_peer_main(pipe, calls))


# -- gateway side ---------------------------------------------------------------------------

def _lync_sdp(streams: list[tuple[Any, ...]]) -> str:
    lines = ["v=0", f"o=- 0 1 IN IP4 {PEER}", "s=session", f"c=IN IP4 {PEER}", "t=0 0"]
    for kind, ufrag, pwd, cands, key, _ in streams:
        port = cands[0].split()[5]
        fmt, maps = (("0", ["a=rtpmap:0 PCMU/8000"]) if kind == "audio" else
                     ("122", ["a=rtpmap:122 X-H264UC/90000",
                              "a=fmtp:122 packetization-mode=1;mst-mode=NI-TC"]))
        lines += [f"m={kind} {port} RTP/SAVP {fmt}", "a=x-ssrc-range:1000-1099",
                  f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}",
                  *[f"a=candidate:{c}" for c in cands],
                  f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31", *maps,
                  "a=encryption:required"]
    return "\r\n".join(lines) + "\r\n"


def _video_answer(offer: Any, ports: list[int]) -> str:
    lines = ["v=0", f"o=- 1 1 IN IP4 {PEER}", "s=-", f"c=IN IP4 {PEER}", "t=0 0"]
    for media, port in zip(offer.media, ports, strict=True):
        lines.append(f"m={media.kind} {port} RTP/AVP {' '.join(media.formats)}")
        lines += [f"a={a}" for a in media.attributes if a.name in ("rtpmap", "fmtp")]
    return "\r\n".join(lines) + "\r\n"


async def _gateway(calls: int, seconds: float, pipe: Pipe) -> dict[str, Any]:
    from media.ice_leg import IceSettings
    from media.ms_dialect import Crypto
    from media.port_pool import PortPool, PortPoolSettings
    from media.rewrite import to_microsoft, to_standard
    from media.sdp import parse_sdp
    from media.session import MediaSession, MediaSettings

    loop = asyncio.get_running_loop()
    offers = await loop.run_in_executor(None, pipe.recv)
    pool = PortPool(PortPoolSettings(30000, 30000 + 8 * calls + 1))
    settings = MediaSettings(GATEWAY, GATEWAY, IceSettings(connect_timeout=60))
    rss0 = _rss_kib()
    sessions: list[MediaSession] = []
    answers = []
    for index, call in enumerate(offers):
        session = MediaSession(f"bench-{index}", pool, settings)
        await session.prepare(["audio", "video"])
        ms_offer = parse_sdp(_lync_sdp(call))
        video_offer = to_standard(ms_offer, session.video_plan())
        video_answer = parse_sdp(_video_answer(video_offer, [s[5] for s in call]))
        ms_answer = to_microsoft(video_answer, session.microsoft_plan(), answer_to=ms_offer)
        await session.apply(microsoft_local=ms_answer, microsoft_remote=ms_offer,
                            video_local=video_offer, video_remote=video_answer)
        sessions.append(session)
        answers.append([(m.get("ice-ufrag"), m.get("ice-pwd"), m.get_all("candidate"),
                         base64.b64encode(Crypto.parse(m.get_all("crypto")[0]).key_salt).decode(),
                         s.video.ports[0])
                        for m, s in zip(ms_answer.media, session.streams, strict=True)
                        if s is not None])
    rss_sessions = _rss_kib() - rss0
    pipe.send(answers)
    await loop.run_in_executor(None, pipe.recv)  # peers connected
    for session in sessions:  # and so are we (events: MediaConnected x2)
        for _ in range(2):
            await asyncio.wait_for(session.events.get(), 60)
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    pipe.send(seconds)
    stats = await loop.run_in_executor(None, pipe.recv)
    ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    relayed = sum(c.microsoft.packets_out + c.video.packets_out
                  for s in sessions for c in s.counters())
    cpu = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / (t1 - t0)
    for session in sessions:
        await session.close()
    assert pool.ports_in_use == 0
    return {"stats": stats, "relayed": relayed, "wall": t1 - t0, "cpu": cpu,
            "rss_kib_per_session": rss_sessions / max(calls, 1), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the gateway into FILE")
    args = parser.parse_args(argv)
    ours, theirs = mp.Pipe()
    peer = mp.get_context("fork").Process(target=_peer_process,
                                          args=(theirs, args.calls, not args.no_uvloop))
    peer.start()
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
    tx = s["to_video_tx"] + s["to_ms_tx"]
    rx = s["to_video_rx"] + s["to_ms_rx"]
    out.write(f"calls                {args.calls} (audio 50 pps + video 250 pps, each way)\n")
    out.write(f"offered              {tx / args.seconds:,.0f} packets/s into the relay\n")
    out.write(f"relayed              {result['relayed'] / args.seconds:,.0f} packets/s\n")
    for way, label in (("to_video", "Microsoft -> video"), ("to_ms", "video -> Microsoft")):
        sent, got = s[way + "_tx"], s[way + "_rx"]
        loss = 100.0 * (sent - got) / sent if sent else 0.0
        out.write(f"{label:20} sent {sent}, received {got}, loss {loss:.3f}%, "
                  f"latency p50 {s[way + '_p50_us']} us, p99 {s[way + '_p99_us']} us\n")
    out.write(f"gateway CPU          {100 * result['cpu']:.0f}% of one core "
              f"({100 * result['cpu'] / max(args.calls, 1):.2f}% per call)\n")
    out.write(f"gateway memory       {result['rss_kib_per_session']:.0f} KiB RSS per session\n")
    total_loss = (tx - rx) / tx if tx else 0
    return 0 if total_loss == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
