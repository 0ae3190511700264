"""The batched UDP path (turn.fastpath): the native hub and its pure-Python twin, on real
loopback sockets, send the same datagrams for the same datagrams in, and together with the
core (which gets every datagram they do not forward) exactly what the core alone sends;
published entries stop forwarding at their expiry, with the time passed in."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from turn import stun
from turn.allocation import Allocation, FiveTuple, Transport
from turn.core import ForwardingEntry, TurnCore
from turn.fastpath import ENV, Hub, PyHub, make_hub, native_hub_type
from turn.stun import Attr, Method

from .test_core import Client, make_core

T0 = 1000.0
NATIVE = native_hub_type()
HUBS: dict[str, Callable[[], Hub]] = {"python": PyHub}
if NATIVE is not None:
    HUBS["native"] = NATIVE


def udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def frame(number: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HH", number, len(payload) if length is None else length) + payload


def drain(s: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    got = []
    while True:
        try:
            data, addr = s.recvfrom(65536)
        except BlockingIOError:
            return got
        got.append((data, addr))


def normal(data: bytes) -> Any:
    """A datagram with a Data indication's random transaction id left out."""
    if data[:2] == b"\x00\x17":
        msg = stun.parse(data)
        peer = msg.get(Attr.XOR_PEER_ADDRESS)
        assert peer is not None
        return ("data-indication", stun.unpack_xor_address(peer, msg.transaction_id),
                msg.get(Attr.DATA))
    return data


@dataclass
class Rig:
    """A core with one UDP allocation on real sockets: listener, relay, client, peers."""

    core: TurnCore
    client: Client
    alloc: Allocation
    listener: socket.socket
    relay: socket.socket
    ends: dict[str, socket.socket]
    sockets: list[socket.socket] = field(default_factory=list)

    def addr(self, name: str) -> tuple[str, int]:
        return self.ends[name].getsockname()  # type: ignore[no-any-return]


@pytest.fixture
def rig() -> Iterator[Rig]:
    listener, relay = udp(), udp()
    ends = {"client": udp(), "other_client": udp(), "peer": udp(), "peer2": udp(),
            "stranger": udp("127.0.0.2")}
    core = make_core()
    core.publish_forwarding = True
    five = FiveTuple(Transport.UDP, ends["client"].getsockname(), listener.getsockname())
    client = Client(core, five)
    client.allocate(now=T0)
    alloc = core.allocations[five]
    r = Rig(core, client, alloc, listener, relay, ends, [listener, relay, *ends.values()])
    yield r
    for s in r.sockets:
        s.close()


class Wired:
    """A hub on the rig, with the slow paths the server gives it: the core's own hot paths."""

    def __init__(self, rig: Rig, make: Callable[[], Hub]) -> None:
        self.rig = rig
        self.hub = make()
        self.now = T0
        core, alloc = rig.core, rig.alloc
        five = alloc.five_tuple

        def from_client(data: bytes, addr: tuple[str, int]) -> None:
            ft = FiveTuple(Transport.UDP, addr, five.server)
            result = core.channel_data_from_client(ft, data, self.now)
            if result is not None:
                rig.relay.sendto(result[2], result[1])

        def from_peer(data: bytes, addr: tuple[str, int]) -> None:
            out = core.data_from_peer(alloc, addr, data, self.now)
            if out is not None:
                rig.listener.sendto(out, five.client)

        self.listener = self.hub.listener(rig.listener, from_client)
        self.relay = self.hub.relay(rig.relay, self.listener, five.client, from_peer)
        self.publish()

    def publish(self) -> None:
        table = self.rig.core.forwarding(self.rig.alloc)
        self.relay.publish([(e.channel, e.peer[0], e.peer[1], e.expires) for e in table])

    def close(self) -> None:
        self.relay.close()
        self.listener.close()


def core_alone(rig: Rig, src: str, to: str, data: bytes, now: float) -> dict[str, list[Any]]:
    """What the core's hot paths send for one datagram (the transports' path)."""
    core, alloc = rig.core, rig.alloc
    out: dict[str, list[Any]] = {}
    if to == "listener":
        ft = FiveTuple(Transport.UDP, rig.addr(src), alloc.five_tuple.server)
        result = core.channel_data_from_client(ft, data, now)
        if result is not None:
            for name in rig.ends:
                if rig.addr(name) == result[1]:
                    out[name] = [(result[2], rig.relay.getsockname())]
    else:
        frame_out = core.data_from_peer(alloc, rig.addr(src), data, now)
        if frame_out is not None:
            out["client"] = [(normal(frame_out), rig.listener.getsockname())]
    return out


def step(rig: Rig, wired: Wired, src: str, to: str, data: bytes, now: float) -> tuple[
    dict[str, list[Any]], int
]:
    """Send one datagram into the listener or the relay, poll at ``now``; what came out where,
    and how many datagrams the hub forwarded itself."""
    wired.now = now
    before = wired.hub.stats()["fast"]
    target = rig.listener if to == "listener" else rig.relay
    rig.ends[src].sendto(data, target.getsockname())
    assert wired.hub.poll(now) == 1
    out = {}
    for name, s in rig.ends.items():
        got = drain(s)
        if got:
            out[name] = [(normal(d), a) for d, a in got]
    return out, wired.hub.stats()["fast"] - before


SCRIPT: list[tuple[str, str, str, bytes, float, bool]] = [
    # (what, from, into, datagram, at, forwarded by the hub itself)
    ("bound channel to the peer", "client", "listener", frame(0x4000, b"a"), 1, True),
    ("peer back as ChannelData", "peer", "relay", b"b", 1, True),
    ("unbound channel", "client", "listener", frame(0x4001, b"c"), 1, False),
    ("ChannelData shorter than its length", "client", "listener", frame(0x4000, b"d", 9), 1,
     False),
    ("bare header", "client", "listener", b"\x40\x00", 1, False),
    ("permitted host, other port: Data indication", "peer2", "relay", b"e", 1, False),
    ("host never permitted", "stranger", "relay", b"f", 1, False),
    ("another client's 5-tuple", "other_client", "listener", frame(0x4000, b"g"), 1, False),
    ("STUN on the listener", "client", "listener", bytes(20), 1, False),
    ("permission expired (channel still bound)", "client", "listener", frame(0x4000, b"h"),
     301, False),
    ("permission expired, from the peer", "peer", "relay", b"i", 301, False),
]


@pytest.mark.parametrize("kind", list(HUBS))
def test_hub_with_the_core_sends_what_the_core_alone_sends(rig: Rig, kind: str) -> None:
    rig.client.permit(rig.addr("peer"), T0)
    rig.client.channel_bind(0x4000, rig.addr("peer"), T0)
    wired = Wired(rig, HUBS[kind])
    try:
        for what, src, to, data, at, fast in SCRIPT:
            expected = core_alone(rig, src, to, data, T0 + at)
            out, forwarded = step(rig, wired, src, to, data, T0 + at)
            assert out == expected, what
            assert forwarded == (1 if fast else 0), what
        # A refreshed permission (and allocation) is republished: the hub forwards again.
        rig.client.permit(rig.addr("peer"), T0 + 302)
        rig.client.request(Method.REFRESH, [(Attr.LIFETIME, stun.pack_u32(3600))], now=T0 + 302)
        wired.publish()
        for src, to, data in (("client", "listener", frame(0x4000, b"j")),
                              ("peer", "relay", b"k")):
            expected = core_alone(rig, src, to, data, T0 + 303)
            assert step(rig, wired, src, to, data, T0 + 303) == (expected, 1)
        # The channel expires (600 s) before the refreshed permission (602 s): the peer's
        # data comes back as a Data indication, decided by the core.
        out, forwarded = step(rig, wired, "peer", "relay", b"l", T0 + 601)
        assert forwarded == 0 and out == core_alone(rig, "peer", "relay", b"l", T0 + 601)
        assert out["client"][0][0][0] == "data-indication"
    finally:
        wired.close()


def test_native_and_python_hubs_send_the_same_datagrams(rig: Rig) -> None:
    if NATIVE is None:
        pytest.skip("turn/fastpath_native is not built")
    rig.client.permit(rig.addr("peer"), T0)
    rig.client.channel_bind(0x4000, rig.addr("peer"), T0)
    runs = []
    for make in (NATIVE, PyHub):
        wired = Wired(rig, make)
        try:
            runs.append([step(rig, wired, s, t, d, T0 + at) for _, s, t, d, at, _ in SCRIPT])
            runs[-1].append(dict(counters=wired.hub.take_counters()))  # type: ignore[arg-type]
        finally:
            wired.close()
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", list(HUBS))
def test_entries_forward_until_their_expiry_exactly(rig: Rig, kind: str) -> None:
    rig.client.permit(rig.addr("peer"), T0)
    rig.client.channel_bind(0x4000, rig.addr("peer"), T0)
    (entry,) = rig.core.forwarding(rig.alloc)
    assert entry == ForwardingEntry(0x4000, rig.addr("peer"), T0 + 300)  # the permission's
    wired = Wired(rig, HUBS[kind])
    try:
        for at, fast in ((entry.expires - 0.001, True), (entry.expires, False)):
            assert step(rig, wired, "client", "listener", frame(0x4000, b"x"), at)[1] == fast
            assert step(rig, wired, "peer", "relay", b"y", at)[1] == fast
    finally:
        wired.close()


def test_the_core_publishes_what_changed_and_only_standard_udp_channels(rig: Rig) -> None:
    core, client = rig.core, rig.client
    peer = rig.addr("peer")
    assert core.forwarding(rig.alloc) == ()
    client.permit(peer, T0)
    assert core.take_forwarding() == [(rig.alloc, ())]  # a permission, no channel yet
    assert core.take_forwarding() == []
    client.channel_bind(0x4000, peer, T0 + 10)
    assert core.take_forwarding() == [(rig.alloc, (ForwardingEntry(0x4000, peer, T0 + 310),))]
    # An allocation refresh is republished; the entry ends with the earliest of the three.
    client.request(Method.REFRESH, [(Attr.LIFETIME, stun.pack_u32(600))], now=T0 + 20)
    assert core.take_forwarding() == [(rig.alloc, (ForwardingEntry(0x4000, peer, T0 + 310),))]
    client.permit(peer, T0 + 500)  # permission to 800, channel to 610, allocation to 620
    assert core.take_forwarding() == [(rig.alloc, (ForwardingEntry(0x4000, peer, T0 + 610),))]
    client.channel_bind(0x4000, peer, T0 + 590)  # channel to 1190, permission to 890
    (changed,) = core.take_forwarding()
    assert changed[1] == (ForwardingEntry(0x4000, peer, T0 + 620),)  # the allocation's
    client.request(Method.REFRESH, [(Attr.LIFETIME, stun.pack_u32(0))], now=T0 + 250)
    assert core.forwarding(rig.alloc) == ()  # deleted allocations publish nothing
    # TCP control connections are never on the hub.
    tcp = Client(core, FiveTuple(Transport.TCP, ("127.0.0.1", 41000), ("127.0.0.1", 3478)))
    tcp.allocate(now=T0)
    tcp.permit(peer, T0)
    tcp.channel_bind(0x4001, peer, T0)
    assert core.forwarding(core.allocations[tcp.ft]) == ()


def test_without_an_adapter_asking_the_core_keeps_no_change_list() -> None:
    core = make_core()
    five = FiveTuple(Transport.UDP, ("127.0.0.1", 40000), ("127.0.4.1", 3478))
    client = Client(core, five)
    client.allocate(now=T0)
    client.channel_bind(0x4000, ("127.0.0.1", 5000), T0)
    assert core.take_forwarding() == []


@pytest.mark.parametrize("kind", list(HUBS))
def test_a_closed_relay_forwards_nothing_and_hands_nothing_up(rig: Rig, kind: str) -> None:
    rig.client.channel_bind(0x4000, rig.addr("peer"), T0)
    wired = Wired(rig, HUBS[kind])
    try:
        wired.relay.close()
        assert wired.relay.closed
        rig.ends["client"].sendto(frame(0x4000, b"z"), rig.listener.getsockname())
        rig.ends["peer"].sendto(b"z", rig.relay.getsockname())
        wired.hub.poll(T0 + 1)
        # The listener's datagram went up to the core (slow 1), the relay's nowhere.
        assert wired.hub.stats()["fast"] == 0 and wired.hub.stats()["slow"] == 1
        assert drain(rig.ends["client"]) == []
    finally:
        wired.close()


def test_the_path_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "off")
    assert make_hub() is None
    monkeypatch.setenv(ENV, "python")
    assert isinstance(make_hub(), PyHub)
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(RuntimeError, match="TURN_FASTPATH='fast': native, python or off"):
        make_hub()
    monkeypatch.setenv(ENV, "native")
    if NATIVE is None:
        with pytest.raises(RuntimeError, match="not built"):
            make_hub()
    else:
        assert isinstance(make_hub(), NATIVE)  # type: ignore[arg-type]
    monkeypatch.delenv(ENV)
    default = make_hub()
    assert default is None if NATIVE is None else isinstance(default, NATIVE)  # type: ignore[arg-type]
