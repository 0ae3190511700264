"""The portable packet path: ``media.relay``'s interface in pure Python over pylibsrtp, used
where the native extension is not built, and the oracle the native path is tested against
(every rule of ``media/relay_native/_relay.c`` ``process`` has its line in ``_process``)."""

from __future__ import annotations

import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

import pylibsrtp

from media.relay import (
    COUNTER_NAMES,
    MAP_CAP,
    MAX_PACKET,
    Address,
    ForwardingPlan,
    Latching,
    LatchSink,
    Relay,
    Side,
    SidePlan,
    StunSink,
    Verdict,
)
from media.srtp import AUTH_TAG_LEN
from media.ssrc import SsrcMapper, rewrite_rtcp

__all__ = ["PyHub", "PyRelay"]

_BUF = 2048
_BATCH = 64
_U32 = struct.Struct("!I")
_TIMESPEC = struct.Struct("@qq")
_LAT_BUCKETS = 20000


def _same(ssrc: int) -> int:
    return ssrc


def _session(key: bytes, inbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind))


@dataclass(slots=True)
class _SideState:
    plan: SidePlan = SidePlan()
    rx: pylibsrtp.Session | None = None
    tx: pylibsrtp.Session | None = None
    latched: Address | None = None
    last_heard: int = 0
    relatches: int = 0
    latch_changed: bool = False
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    verdicts: list[int] = field(default_factory=lambda: [0] * len(Verdict))
    sock: socket.socket | None = None

    def take(self, plan: SidePlan) -> None:
        old = self.plan
        # sessions are kept while the keys are, so replay windows and ROCs survive a re-INVITE
        if plan.rx_key is None:
            self.rx = None
        elif self.rx is None or old.rx_key != plan.rx_key:
            self.rx = _session(plan.rx_key, inbound=True)
        if plan.tx_key is None:
            self.tx = None
        elif self.tx is None or old.tx_key != plan.tx_key:
            self.tx = _session(plan.tx_key, inbound=False)
        if plan.address != old.address:
            self.latched = None
        self.plan = plan


@dataclass(slots=True)
class _SsrcTable:
    """An SSRC map the relays of one stream share (``Relay.share_map``)."""

    mapper: SsrcMapper | None = None
    """None until a plan brings a range."""
    holders: int = 1


class PyRelay:
    """media.relay.Relay in Python: the same verdicts, bytes and counters as the native one."""

    def __init__(self, fd_a: int = -1, fd_b: int = -1) -> None:
        self._sides = (_SideState(), _SideState())
        for state, fd in zip(self._sides, (fd_a, fd_b), strict=True):
            if fd >= 0:
                state.sock = socket.socket(fileno=fd)
                state.sock.setblocking(False)
        self._plan = ForwardingPlan()
        self._table: _SsrcTable | None = None
        """None until a publish or share_map, and once closed (as the native path)."""
        self._mapping = False
        self.on_stun: StunSink | None = None
        self.on_latch: LatchSink | None = None
        self.hub: PyHub | None = None

    def _latch_callback(self, side: int) -> None:
        state = self._sides[side]
        if not state.latch_changed:
            return
        state.latch_changed = False
        if self.on_latch is not None and state.latched is not None:
            self.on_latch(side, state.latched)

    def publish(self, plan: ForwardingPlan) -> None:
        self._sides[0].take(plan.a)
        self._sides[1].take(plan.b)
        if self._table is None:
            self._table = _SsrcTable()
        # another range than the (shared) table's starts a new one, for both relays; a plan
        # without one stops this relay mapping and leaves the table as it is
        rng = plan.ssrc_range
        mapper = self._table.mapper
        if rng is not None and (mapper is None or mapper.range != rng):
            self._table.mapper = SsrcMapper(rng, MAP_CAP)
        self._mapping = rng is not None
        self._plan = plan

    def share_map(self, other: Relay) -> None:
        if not isinstance(other, PyRelay):
            raise TypeError("a PyRelay")
        if self._table is None:
            self._table = _SsrcTable()
        if other._table is self._table:
            return
        self._table.holders += 1
        if other._table is not None:
            other._table.holders -= 1
        other._table = self._table

    def map_holders(self) -> int:
        """How many relays hold this one's SSRC map (0: none yet, or closed)."""
        return 0 if self._table is None else self._table.holders

    def _process(self, side: int, data: bytes, source: Address,
                 now: int) -> tuple[Verdict, bytes | None, Address | None]:
        src, dst = self._sides[side], self._sides[1 - side]
        size = len(data)
        src.packets_in += 1
        src.bytes_in += size
        if size and data[0] < 4:
            return Verdict.STUN, None, None
        if size > MAX_PACKET or size < 8 or data[0] >> 6 != 2:
            return Verdict.MALFORMED, None, None
        rtcp = 192 <= data[1] <= 223
        if not rtcp and size < 12:
            return Verdict.MALFORMED, None, None
        rules = src.plan
        if rules.latching is not Latching.FIXED:
            if src.latched != source:
                exact = rules.latching is Latching.STRICT and source == rules.address
                if (src.latched is not None and not exact
                        and now - src.last_heard < round(rules.relatch_after * 1e9)):
                    return Verdict.SOURCE, None, None
                if rules.latching is Latching.STRICT and (
                        rules.address is None or source[0] != rules.address[0]):
                    return Verdict.SOURCE, None, None
                if src.latched is not None:
                    src.relatches += 1
                src.latched = source
                src.latch_changed = True
            src.last_heard = now
        plan = self._plan
        try:
            # the receiving context sees every packet of the peer, even one the direction
            # then drops (a hold): its rollover counter is implicit too, and a wrap it did
            # not see would leave it a rollover behind the sender after the resume
            if src.rx is not None:
                mki = rules.rx_mki
                if mki:
                    if size < 12 + len(mki) + AUTH_TAG_LEN:
                        return Verdict.SRTP, None, None
                    at = size - AUTH_TAG_LEN - len(mki)
                    if data[at:at + len(mki)] != mki:
                        return Verdict.SRTP, None, None
                    data = data[:at] + data[at + len(mki):]
                data = src.rx.unprotect_rtcp(data) if rtcp else src.rx.unprotect(data)
            if not (plan.rtcp if rtcp else (plan.a_to_b if side == Side.A else plan.b_to_a)):
                return Verdict.DIRECTION, None, None
            table = self._table
            mapper = table.mapper if self._mapping and table is not None else None
            if mapper is not None:
                if side == Side.B:
                    if rtcp:
                        data = rewrite_rtcp(data, mapper.map, mapper.unmap)
                    else:
                        data = data[:8] + _U32.pack(mapper.map(_U32.unpack_from(data, 8)[0])) \
                            + data[12:]
                elif rtcp:
                    data = rewrite_rtcp(data, _same, mapper.unmap)
            # Where it goes is settled after the receiving context saw the packet and before
            # the sending one does: SRTP's rollover counter is implicit (RFC 3711 §3.3.1),
            # each end counts the wraps of the sequence numbers it saw, so the receiver
            # must see what the peer sent and the sender must protect only what leaves. A
            # wrap among packets protected and then dropped here (no ICE pair yet) put our
            # ROC one ahead of Microsoft's, and every later packet failed authentication
            # there: a dead direction (issue 13).
            out_rules = dst.plan
            target = (dst.latched if out_rules.latching is not Latching.FIXED
                      and dst.latched is not None else out_rules.address)
            if target is None:
                return Verdict.NO_ROUTE, None, None
            if dst.tx is not None:
                data = dst.tx.protect_rtcp(data) if rtcp else dst.tx.protect(data)
        except (pylibsrtp.Error, ValueError):  # ValueError: over pylibsrtp's 1500-byte buffer
            return Verdict.SRTP, None, None
        return Verdict.FORWARD, data, target

    def feed(self, side: int, data: bytes, source: Address,
             now_ns: int) -> tuple[Verdict, bytes | None, Address | None]:
        verdict, out, dest = self._process(side, data, source, now_ns)
        self._sides[side].verdicts[verdict] += 1
        self._latch_callback(side)
        if out is not None:
            peer = self._sides[1 - side]
            peer.packets_out += 1
            peer.bytes_out += len(out)
        return verdict, out, dest

    def pump(self, side: int, stamps: list[int] | None) -> int:
        """Drain one side's socket (at most a batch at a time, like the native path)."""
        state, peer = self._sides[side], self._sides[1 - side]
        sock = state.sock
        count = 0
        while sock is not None:
            try:
                data, anc, flags, addr = sock.recvmsg(_BUF, 64)
            except (BlockingIOError, InterruptedError):
                return count
            except ConnectionRefusedError:
                continue
            count += 1
            if flags & socket.MSG_TRUNC:
                data = data + b"\0" * (_BUF + 1 - len(data))  # as the native path counts it
            now = time.monotonic_ns()
            verdict, out, dest = self._process(side, data, (addr[0], addr[1]), now)
            self._latch_callback(side)
            if verdict is Verdict.STUN:
                state.verdicts[verdict] += 1
                if self.on_stun is not None:
                    self.on_stun(side, data, (addr[0], addr[1]))
                continue
            if out is None or dest is None:
                state.verdicts[verdict] += 1
                continue
            try:
                if peer.sock is None:
                    raise OSError("closed")
                peer.sock.sendto(out, dest)
            except OSError:
                state.verdicts[Verdict.SEND] += 1
                continue
            state.verdicts[Verdict.FORWARD] += 1
            peer.packets_out += 1
            peer.bytes_out += len(out)
            if stamps is not None:
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                        sec, nsec = _TIMESPEC.unpack(value[:_TIMESPEC.size])
                        stamps.append(time.time_ns() - (sec * 1_000_000_000 + nsec))
            if count >= _BATCH:
                return count
        return count

    def sendto(self, side: int, data: bytes, address: Address) -> None:
        sock = self._sides[side].sock
        if sock is None:
            raise ValueError("bad side, address or closed")
        sock.sendto(data, address)

    def counters(self, side: int) -> dict[str, int]:
        s = self._sides[side]
        out = {"packets_in": s.packets_in, "bytes_in": s.bytes_in, "packets_out": s.packets_out,
               "bytes_out": s.bytes_out, "relatches": s.relatches}
        out.update(zip(COUNTER_NAMES, s.verdicts, strict=True))
        return out

    def latched(self, side: int) -> Address | None:
        return self._sides[side].latched

    def sockets(self) -> list[tuple[int, socket.socket]]:
        return [(i, s.sock) for i, s in enumerate(self._sides) if s.sock is not None]

    def close(self) -> None:
        if self.hub is not None:
            self.hub.unregister(self)
        if self._table is not None:
            self._table.holders -= 1
            self._table = None
        for state in self._sides:
            if state.sock is not None:
                state.sock.close()
                state.sock = None


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class PyHub:
    """media.relay.Hub in Python (selectors)."""

    def __init__(self, timestamps: bool = False, rcvbuf: int = 0) -> None:
        self._selector = selectors.DefaultSelector()
        self._timestamps = timestamps
        self._rcvbuf = rcvbuf
        self._relays: set[PyRelay] = set()
        self._latency = [0] * (_LAT_BUCKETS + 1)
        self._stamps: list[int] = []
        self._batches = 0
        self._packets = 0

    def register(self, relay: Relay) -> None:
        if not isinstance(relay, PyRelay):
            raise TypeError("a PyRelay")
        if relay.hub is not None:
            raise ValueError("relay already registered")
        for side, sock in relay.sockets():
            if self._timestamps:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            if self._rcvbuf > 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            self._selector.register(sock, selectors.EVENT_READ, (relay, side))
        relay.hub = self
        self._relays.add(relay)

    def unregister(self, relay: Relay) -> None:
        if not isinstance(relay, PyRelay) or relay.hub is not self:
            raise ValueError("not a relay of this hub")
        for _, sock in relay.sockets():
            self._selector.unregister(sock)
        relay.hub = None
        self._relays.discard(relay)

    def start(self) -> None:
        """No worker threads: the portable path stays on the polling thread."""

    def stop(self) -> None:
        pass

    def poll(self, timeout_ms: int = 0) -> int:
        events = self._selector.select(timeout_ms / 1000)
        stamps = self._stamps if self._timestamps else None
        for key, _ in events:
            relay, side = key.data
            self._packets += relay.pump(side, stamps)
            self._batches += 1
        if stamps:
            for ns in stamps:
                us = max(ns // 1000, 0)
                self._latency[min(us, _LAT_BUCKETS)] += 1
            stamps.clear()
        return len(events)

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(20)

    def fileno(self) -> int:
        return self._selector.fileno() if hasattr(self._selector, "fileno") else -1

    def latency(self, reset: bool = False) -> list[int]:
        out = list(self._latency)
        if reset:
            self._latency = [0] * (_LAT_BUCKETS + 1)
        return out

    def stats(self) -> dict[str, int]:
        return {"batches": self._batches, "packets": self._packets, "relays": len(self._relays)}
