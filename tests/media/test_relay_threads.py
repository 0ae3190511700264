"""The native relay on worker threads (media.relay_native hubs started by attach): the same
bytes out as the pure-Python oracle with 1 and 2 workers, plans re-published and relays
closed while the workers relay, callbacks on the event loop's thread, counters that add up
whenever they are read. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import pylibsrtp
import pytest

from media.ms_dialect import SsrcRange
from media.relay import (
    COALESCE_ENV,
    COALESCE_US,
    COUNTER_NAMES,
    THREADS_ENV,
    ForwardingPlan,
    Hub,
    Latching,
    Relay,
    SidePlan,
    attach,
    make_hub,
    make_relay,
    media_coalesce_us,
    media_threads,
)
from tests.media.relay_helpers import (
    KEY_MS_RX,
    KEY_MS_TX,
    binding_request,
    needs_native,
    session,
    udp,
    with_mki,
)

pytestmark = needs_native

KEY_OTHER = bytes(range(200, 230))
MKI = b"\x01"
RELAYS = 6


def rtp(ssrc: int, seq: int, size: int = 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 160, ssrc) + bytes([seq & 0xFF]) * size


def rtcp_rr(sender: int, about: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 201, 7, sender, about) + bytes(20)


def tasks() -> int:
    """Threads of this process (worker pthreads are invisible to ``threading``)."""
    return len(os.listdir("/proc/self/task"))


class Stream:
    """One relay with its Microsoft-side and video-side peers."""

    def __init__(self, index: int, impl: str, tx_key: bytes = KEY_MS_TX,
                 rcvbuf: int = 0) -> None:
        a, b = udp(), udp()
        self.a_addr, self.b_addr = a.getsockname(), b.getsockname()
        self.ms, self.video = udp(rcvbuf), udp(rcvbuf)
        self.relay: Relay = make_relay(a.detach(), b.detach(), impl=impl)
        first = 0x01000000 + 256 * index
        self.plan = ForwardingPlan(
            a=SidePlan(address=self.ms.getsockname(), rx_key=KEY_MS_RX, rx_mki=MKI,
                       tx_key=tx_key),
            b=SidePlan(latching=Latching.STRICT, address=self.video.getsockname()),
            a_to_b=True, b_to_a=True, rtcp=True, ssrc_range=SsrcRange(first, first + 15))
        self.relay.publish(self.plan)

    def close(self) -> None:
        self.relay.close()
        self.ms.close()
        self.video.close()


def hub_with_streams(count: int, impl: str = "native", threads: int = 2,
                     rcvbuf: int = 0, coalesce_us: int | None = None
                     ) -> tuple[Hub, list[Stream]]:
    """A hub with ``threads`` workers and ``count`` streams registered (not yet attached);
    ``rcvbuf`` sizes the hub's and the peers' receive queues; ``coalesce_us``: the workers'
    nap after a busy round (None: the gateway's default)."""
    hub = make_hub(impl=impl, threads=threads, rcvbuf=rcvbuf, coalesce_us=coalesce_us)
    streams = [Stream(i, impl, rcvbuf=rcvbuf) for i in range(count)]
    for st in streams:
        hub.register(st.relay)
    return hub, streams


async def receive(loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                  counts: list[int], timeout: float = 20.0) -> list[list[bytes]]:
    """What each socket receives until it has its count (or the timeout)."""
    got: list[list[bytes]] = [[] for _ in socks]
    done = asyncio.Event()

    def reader(i: int) -> Callable[[], None]:
        def read() -> None:
            while True:
                try:
                    got[i].append(socks[i].recv(4096))
                except BlockingIOError:
                    break
            if all(len(g) >= c for g, c in zip(got, counts, strict=True)):
                done.set()
        return read

    for i, s in enumerate(socks):
        loop.add_reader(s.fileno(), reader(i))
    try:
        if any(counts):
            await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        pass
    finally:
        for s in socks:
            loop.remove_reader(s.fileno())
    return got


async def relay_script(impl: str, threads: int, coalesce_us: int | None = None
                       ) -> list[tuple[list[bytes], list[bytes]]]:
    """RELAYS streams through one hub: the video side's RTP and RTCP first (two SSRCs, mapped
    into the range), then the Microsoft side's SRTP and SRTCP reporting on the mapped SSRCs;
    per stream, what its Microsoft peer and its video peer received, in order."""
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(RELAYS, impl=impl, threads=threads,
                                    coalesce_us=coalesce_us)
    detach = attach(hub, loop)
    n = 30
    try:
        for st in streams:
            for seq in range(n):
                st.video.sendto(rtp(0x5000 + seq % 2, seq), st.b_addr)
            st.video.sendto(rtcp_rr(0x5000, 0x7777), st.b_addr)
        to_ms = await receive(loop, [st.ms for st in streams], [n + 1] * RELAYS)
        for st in streams:
            microsoft = session(KEY_MS_RX, inbound=False)
            first = st.plan.ssrc_range.first if st.plan.ssrc_range else 0
            for seq in range(n):
                packet = microsoft.protect(rtp(0x9000, seq))
                st.ms.sendto(with_mki(packet, MKI), st.a_addr)
            report = microsoft.protect_rtcp(rtcp_rr(0x9000, first + 1))
            st.ms.sendto(with_mki(report, MKI), st.a_addr)
        to_video = await receive(loop, [st.video for st in streams], [n + 1] * RELAYS)
        return list(zip(to_ms, to_video, strict=True))
    finally:
        detach()
        for st in streams:
            st.close()


@pytest.mark.parametrize(("threads", "coalesce_us"), [(0, 0), (1, 0), (2, 0), (2, 200),
                                                     (2, 5000)])
async def test_workers_send_the_same_bytes_as_the_python_oracle(threads: int,
                                                                coalesce_us: int) -> None:
    before = tasks()
    oracle = await relay_script("python", 0)
    native = await relay_script("native", threads, coalesce_us)
    assert [len(ms) for ms, _ in oracle] == [31] * RELAYS
    assert [len(video) for _, video in oracle] == [31] * RELAYS
    assert native == oracle
    assert tasks() == before  # detach joined the workers


async def test_callbacks_run_on_the_event_loop_thread() -> None:
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(4)
    assert sorted(Counter(id(st.relay._core.hub) for st in streams).values()) == [2, 2]  # type: ignore[attr-defined]
    seen: list[tuple[str, int, int]] = []
    every = asyncio.Event()

    def note(kind: str, i: int) -> None:
        seen.append((kind, i, threading.get_ident()))
        if len(seen) == 2 * len(streams):
            every.set()

    for i, st in enumerate(streams):
        st.relay.on_stun = lambda side, data, addr, i=i: note("stun", i)
        st.relay.on_latch = lambda side, addr, i=i: note("latch", i)
    before = tasks()
    detach = attach(hub, loop)
    try:
        assert tasks() == before + 2
        assert hub.stats()["threads"] == 2
        request = bytes(binding_request())
        for st in streams:
            st.ms.sendto(request, st.a_addr)
            st.video.sendto(rtp(0x5000, 1), st.b_addr)
        await asyncio.wait_for(every.wait(), 20)
        await receive(loop, [st.ms for st in streams], [1] * len(streams))
    finally:
        detach()
        for st in streams:
            st.close()
    assert tasks() == before
    assert sorted((kind, i) for kind, i, _ in seen) == sorted(
        [("latch", i) for i in range(4)] + [("stun", i) for i in range(4)])
    assert {ident for _, _, ident in seen} == {threading.get_ident()}
    assert hub.stats()["packets"] >= 8


class Blaster:
    """A thread sending plain RTP to the video side of every stream until stopped."""

    def __init__(self, streams: list[Stream]) -> None:
        self.targets = [(st.video, st.b_addr) for st in streams]
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set() and seq < 60000:
            for sock, addr in self.targets:
                try:
                    sock.sendto(rtp(0x5000, seq), addr)
                    self.sent += 1
                except OSError:   # closed by the test, or its buffer full
                    pass
            seq += 1
            if seq % 16 == 0:
                time.sleep(0.001)   # paced, not a test wait: <= 16 packets/ms per stream

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def check_counters(relay: Relay) -> dict[str, int]:
    for side in (0, 1):
        c = relay.counters(side)
        assert sum(c[name] for name in COUNTER_NAMES) == c["packets_in"], c
    return relay.counters(0) | {f"b_{k}": v for k, v in relay.counters(1).items()}


async def test_plan_swaps_under_traffic_never_use_a_freed_key() -> None:
    """Each publish alternates the key toward Microsoft, so that the previous plan's SRTP
    session is freed at once: every packet out must authenticate under one of the two keys
    (a freed session would give garbage, or a crash under AddressSanitizer)."""
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(4, rcvbuf=1 << 22)
    detach = attach(hub, loop)
    blaster = Blaster(streams)
    publishes = 0
    received: list[list[bytes]] = [[] for _ in streams]
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and blaster.sent < 120000:
            for st in streams:
                key = KEY_OTHER if publishes % 2 else KEY_MS_TX
                st.relay.publish(ForwardingPlan(
                    a=SidePlan(address=st.plan.a.address, rx_key=KEY_MS_RX, rx_mki=MKI,
                               tx_key=key),
                    b=st.plan.b, a_to_b=True, b_to_a=True, rtcp=True,
                    ssrc_range=st.plan.ssrc_range))
                check_counters(st.relay)
            publishes += 1
            for i, st in enumerate(streams):
                while True:
                    try:
                        received[i].append(st.ms.recv(4096))
                    except BlockingIOError:
                        break
            await asyncio.sleep(0)
    finally:
        blaster.stop()
        got = await receive(loop, [st.ms for st in streams], [0] * len(streams), timeout=1)
        for i, more in enumerate(got):
            received[i] += more
        detach()
    assert publishes > 100
    valid = 0
    for i, packets in enumerate(received):
        assert packets, f"stream {i} relayed nothing"
        first, other = session(KEY_MS_TX, inbound=True), session(KEY_OTHER, inbound=True)
        for packet in packets:
            try:
                plain = first.unprotect(packet)
            except pylibsrtp.Error:
                plain = other.unprotect(packet)   # raises: a key no plan had
            assert plain[:2] == b"\x80\x60" and len(plain) == 172
            valid += 1
        totals = check_counters(streams[i].relay)
        assert totals["packets_out"] == totals["b_forwarded"]
    for st in streams:
        st.close()
    assert valid > 1000


async def test_close_and_unregister_while_workers_relay() -> None:
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(8)
    stun_after_close: list[int] = []
    detach = attach(hub, loop)
    blaster = Blaster(streams)
    request = bytes(binding_request())
    try:
        got = await receive(loop, [st.ms for st in streams], [20] * len(streams))
        assert all(len(g) >= 20 for g in got), [len(g) for g in got]
        for i, st in enumerate(streams):
            if i % 2:
                hub.unregister(st.relay)   # then closed later, unregistered
            # a STUN packet queued for the loop just before the close: never delivered
            st.relay.on_stun = lambda side, data, addr, i=i: stun_after_close.append(i)
            st.ms.sendto(request, st.a_addr)
            st.relay.close()
            assert hub.stats()["relays"] == len(streams) - i - 1
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)   # lets the loop run whatever callbacks were queued
    finally:
        blaster.stop()
        detach()
    assert stun_after_close == []
    for st in streams:
        with pytest.raises(ValueError):
            st.relay.sendto(0, b"x", ("127.0.0.1", 9))
        st.ms.close()
        st.video.close()
    assert blaster.sent > 0


async def test_counters_add_up_whenever_the_loop_reads_them() -> None:
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(4, rcvbuf=1 << 22)
    detach = attach(hub, loop)
    blaster = Blaster(streams)
    try:
        reads = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for st in streams:
                check_counters(st.relay)
                reads += 1
            await asyncio.sleep(0)
    finally:
        blaster.stop()
    # quiescent: everything sent has been received and relayed (or counted as dropped)
    want = blaster.sent
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if sum(st.relay.counters(1)["packets_in"] for st in streams) >= want:
            break
        await asyncio.sleep(0.01)
    detach()
    totals = [check_counters(st.relay) for st in streams]
    assert reads > 100
    assert sum(t["b_packets_in"] for t in totals) == want
    assert hub.stats()["packets"] == want
    for t in totals:
        assert t["b_forwarded"] == t["packets_out"]
    for st in streams:
        st.close()


def test_the_number_of_workers_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert media_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv(THREADS_ENV, "3")
    assert media_threads() == 3
    hub: Hub = make_hub(impl="native")
    assert hub.stats()["threads"] == 0   # workers start with attach (or start)
    before = tasks()
    hub.start()
    assert tasks() == before + 3
    hub.stop()
    assert tasks() == before
    monkeypatch.setenv(THREADS_ENV, "0")
    plain = make_hub(impl="native")
    plain.start()   # no workers: the caller's thread pumps, as before
    assert tasks() == before and plain.stats()["threads"] == 0
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        make_hub(impl="native")


def test_the_workers_nap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COALESCE_ENV, raising=False)
    assert media_coalesce_us() == COALESCE_US > 0
    monkeypatch.setenv(COALESCE_ENV, "0")
    assert media_coalesce_us() == 0
    monkeypatch.setenv(COALESCE_ENV, "750")
    assert media_coalesce_us() == 750
    for bad in ("soon", "-1", "1000000"):
        monkeypatch.setenv(COALESCE_ENV, bad)
        with pytest.raises(ValueError, match=COALESCE_ENV):
            media_coalesce_us()
    with pytest.raises(ValueError, match="coalesce_us"):
        make_hub(impl="native", threads=1, coalesce_us=1_000_000)


async def burst_rounds(coalesce_us: int, bursts: int = 100) -> int:
    """A worker's epoll rounds while 24 streams each get one packet per millisecond (as 24
    video streams at 1000 packets/s would), every packet delivered."""
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(24, threads=1, rcvbuf=1 << 22, coalesce_us=coalesce_us)
    detach = attach(hub, loop)
    try:
        before = hub.stats()["rounds"]
        for seq in range(bursts):
            for st in streams:
                st.video.sendto(rtp(0x5000, seq), st.b_addr)
            await asyncio.sleep(0.001)
        got = await receive(loop, [st.ms for st in streams], [bursts] * len(streams))
        assert [len(g) for g in got] == [bursts] * len(streams)
        return hub.stats()["rounds"] - before
    finally:
        detach()
        for st in streams:
            st.close()


async def test_a_busy_hub_takes_arrivals_in_fewer_wakeups_when_it_naps() -> None:
    """Steady traffic on many sockets: without the nap every arrival can wake the worker;
    with it, a round that found several sockets ready is followed by a nap and the packets
    of the next 20 ms come in one round (the worker's epoll rounds are counted in C)."""
    eager = await burst_rounds(0)
    napping = await burst_rounds(20_000)
    assert napping < eager / 3, (napping, eager)


async def test_a_lone_packet_is_not_held_by_the_nap() -> None:
    """Light traffic (one socket ready per round) is relayed at once, however long the nap."""
    loop = asyncio.get_running_loop()
    hub, streams = hub_with_streams(1, threads=1, coalesce_us=500_000)
    st = streams[0]
    detach = attach(hub, loop)
    try:
        for seq in range(5):
            start = time.monotonic()
            st.video.sendto(rtp(0x5000, seq), st.b_addr)
            got = await receive(loop, [st.ms], [1], timeout=5)
            assert len(got[0]) == 1
            assert time.monotonic() - start < 0.25   # half the nap: it did not nap
    finally:
        detach()
        st.close()


async def test_a_started_hub_dropped_without_detach_joins_its_workers() -> None:
    """A gateway that never detaches (the hub lives as long as its loop): once the hub is
    gone its workers are too, and its relays stay usable (closed on their own)."""
    import gc
    import weakref
    before = tasks()
    hub, streams = hub_with_streams(2)
    hub.start()
    assert tasks() == before + 2
    gone = weakref.ref(hub)
    del hub
    gc.collect()
    assert gone() is None
    assert tasks() == before
    for st in streams:
        assert st.relay.counters(0)["packets_in"] == 0
        st.close()


async def test_relays_come_and_go_while_workers_relay() -> None:
    """Registering grows the hub's slot table (swapped under the lock while the workers
    read it); relays registered and closed by the hundred while others carry traffic."""
    loop = asyncio.get_running_loop()
    hub, busy = hub_with_streams(2, rcvbuf=1 << 22)
    detach = attach(hub, loop)
    blaster = Blaster(busy)
    try:
        for _wave in range(3):
            extra = []
            for _ in range(150):
                relay = make_relay(udp().detach(), udp().detach(), impl="native")
                hub.register(relay)
                extra.append(relay)
            assert hub.stats()["relays"] == 2 + 150
            for relay in extra:
                relay.close()
            await asyncio.sleep(0)
        got = await receive(loop, [st.ms for st in busy], [50] * len(busy))
        assert all(len(g) >= 50 for g in got)
    finally:
        blaster.stop()
        detach()
    for st in busy:
        check_counters(st.relay)
        st.close()
    assert hub.stats()["relays"] == 0


def test_callbacks_past_the_queue_cap_are_dropped_and_counted() -> None:
    """A loop that stops running callbacks does not make the workers queue without end."""
    hub = make_hub(impl="native", threads=1, rcvbuf=1 << 23)
    st = Stream(0, "native")
    hub.register(st.relay)
    calls: list[int] = []
    st.relay.on_stun = lambda side, data, addr: calls.append(side)
    request = bytes(binding_request())
    hub.start()   # no attach: nobody runs the callbacks meanwhile
    try:
        sent = 5000
        for _ in range(sent):
            st.ms.sendto(request, st.a_addr)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and st.relay.counters(0)["stun"] < sent:
            time.sleep(0.01)   # waiting on the worker thread, bounded by the deadline
        assert st.relay.counters(0)["stun"] == sent
        stats = hub.stats()
        assert stats["callbacks_dropped"] == sent - 4096
        assert hub.poll() == 4096 and len(calls) == 4096
    finally:
        hub.stop()
        st.close()


@pytest.mark.parametrize("impl", ["native", "python"])
async def test_a_map_shared_by_relays_on_two_workers(impl: str) -> None:
    """A stream's RTP and RTCP relays on two worker hubs, one SSRC map: both rewrite it at
    once (RTP from 40 endpoint SSRCs evicting in a 16-SSRC range, RTCP senders mapping too),
    every SSRC out stays in the range, and the map still reads back what was mapped."""
    loop = asyncio.get_running_loop()
    hub = make_hub(impl=impl, threads=2)
    rtp_st, rtcp_st = Stream(0, impl), Stream(0, impl)
    rtp_st.relay.share_map(rtcp_st.relay)
    for st in (rtp_st, rtcp_st):
        st.relay.publish(st.plan)
        hub.register(st.relay)
    if impl == "native":
        cores = [st.relay._core.hub for st in (rtp_st, rtcp_st)]  # type: ignore[attr-defined]
        assert cores[0] is not cores[1]   # the least-loaded placement split them
    rng = rtp_st.plan.ssrc_range
    assert rng is not None
    detach = attach(hub, loop)
    got_rtp: list[bytes] = []
    got_rtcp: list[bytes] = []
    try:
        for wave in range(10):   # waves of 40 each: no loss in the sockets' queues
            for seq in range(40 * wave, 40 * wave + 40):
                rtp_st.video.sendto(rtp(0x5000 + seq % 40, seq), rtp_st.b_addr)
                rtcp_st.video.sendto(rtcp_rr(0x5000 + (seq * 7) % 40, 0x7777), rtcp_st.b_addr)
            to_rtp, to_rtcp = await receive(loop, [rtp_st.ms, rtcp_st.ms], [40, 40])
            assert len(to_rtp) == len(to_rtcp) == 40
            got_rtp += to_rtp
            got_rtcp += to_rtcp
        assert all(rng.first <= struct.unpack_from("!I", p, 8)[0] <= rng.last for p in got_rtp)
        assert all(rng.first <= struct.unpack_from("!I", p, 4)[0] <= rng.last
                   for p in got_rtcp)
        # now, quietly: an SSRC mapped in RTP is mapped back in a report on the RTCP relay
        rtp_st.video.sendto(rtp(0x6000, 400), rtp_st.b_addr)  # a new SRTP index
        (mapped_rtp,), _ = await receive(loop, [rtp_st.ms, rtcp_st.ms], [1, 0])
        mapped = struct.unpack_from("!I", mapped_rtp, 8)[0]
        microsoft = session(KEY_MS_RX, inbound=False)
        report = microsoft.protect_rtcp(rtcp_rr(0x9000, mapped))
        rtcp_st.ms.sendto(with_mki(report, MKI), rtcp_st.a_addr)
        _, (back,) = await receive(loop, [rtp_st.video, rtcp_st.video], [0, 1])
        assert back == rtcp_rr(0x9000, 0x6000)
    finally:
        detach()
        for st in (rtp_st, rtcp_st):
            st.close()
    assert rtp_st.relay.map_holders() == 0
