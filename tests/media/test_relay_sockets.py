"""Each packet path on real loopback sockets, through its hub: RTP/SRTP both ways with the
same bytes out of both paths, STUN handed up (and answered through the relay's socket),
strangers dropped, the relay-added latency recorded."""

from __future__ import annotations

import socket
import time

import pytest
from aioice import stun

from media.relay import (
    ForwardingPlan,
    Latching,
    Side,
    SidePlan,
    Verdict,
    make_hub,
    make_relay,
    native_available,
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

IMPLS = ["python", pytest.param("native", marks=needs_native)]


def rtp(ssrc: int, seq: int) -> bytes:
    return bytes([0x80, 96, seq >> 8, seq & 0xFF, 0, 0, 0, seq, *ssrc.to_bytes(4, "big")]) \
        + b"\x22" * 160


def collect(hub: object, sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """Poll the hub until ``sock`` received ``count`` datagrams (or the timeout)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        hub.poll(10)  # type: ignore[attr-defined]
        while True:
            try:
                got.append(sock.recv(4096))
            except BlockingIOError:
                break
    return got


class Rig:
    def __init__(self, impl: str, plan_b_latching: Latching = Latching.STRICT) -> None:
        self.a, self.b = udp(), udp()
        self.ms_peer, self.video_peer, self.stranger = udp(), udp(), udp()
        self.a_addr, self.b_addr = self.a.getsockname(), self.b.getsockname()
        self.relay = make_relay(self.a.detach(), self.b.detach(), impl=impl)
        self.hub = make_hub(timestamps=True, impl=impl)
        self.hub.register(self.relay)
        self.plan = ForwardingPlan(
            a=SidePlan(address=self.ms_peer.getsockname(), rx_key=KEY_MS_RX, rx_mki=b"\x01",
                       tx_key=KEY_MS_TX),
            b=SidePlan(latching=plan_b_latching, address=self.video_peer.getsockname()),
            a_to_b=True, b_to_a=True, rtcp=True)
        self.relay.publish(self.plan)

    def close(self) -> None:
        self.relay.close()
        for s in (self.ms_peer, self.video_peer, self.stranger):
            s.close()


@pytest.fixture(params=IMPLS)
def rig(request: pytest.FixtureRequest) -> Rig:
    r = Rig(request.param)
    yield r  # type: ignore[misc]
    r.close()


def test_srtp_microsoft_side_to_plain_video_side_and_back(rig: Rig) -> None:
    latched: list[tuple[int, tuple[str, int]]] = []
    rig.relay.on_latch = lambda side, source: latched.append((side, source))
    microsoft = session(KEY_MS_RX, inbound=False)
    sent = [rtp(7, i) for i in range(1, 201)]
    for packet in sent:
        protected = microsoft.protect(packet)
        rig.ms_peer.sendto(with_mki(protected, b"\x01"), rig.a_addr)
    assert collect(rig.hub, rig.video_peer, 200) == sent
    back = [rtp(9, i) for i in range(1, 101)]
    for packet in back:
        rig.video_peer.sendto(packet, rig.b_addr)
    rig.stranger.sendto(rtp(66, 1), rig.b_addr)          # another port of the SDP host
    got = collect(rig.hub, rig.ms_peer, 100)
    ours = session(KEY_MS_TX, inbound=True)
    assert [ours.unprotect(p) for p in got] == back
    a, b = rig.relay.counters(Side.A), rig.relay.counters(Side.B)
    assert a["forwarded"] == 200 and b["packets_out"] == 200
    assert b["forwarded"] == 100 and a["packets_out"] == 100
    deadline = time.monotonic() + 5
    while rig.relay.counters(Side.B)["dropped_source"] < 1 and time.monotonic() < deadline:
        rig.hub.poll(10)
    assert rig.relay.counters(Side.B)["dropped_source"] == 1
    assert rig.relay.latched(Side.B) == rig.video_peer.getsockname()
    assert latched == [(Side.B, rig.video_peer.getsockname())]
    latency = rig.hub.latency()
    assert sum(latency) == 300                            # one sample per relayed packet


def test_stun_is_handed_up_and_answered_through_the_relay_socket(rig: Rig) -> None:
    seen: list[tuple[int, bytes, tuple[str, int]]] = []

    def on_stun(side: int, data: bytes, addr: tuple[str, int]) -> None:
        seen.append((side, data, addr))
        request = stun.parse_message(data)
        response = stun.Message(message_method=request.message_method,
                                message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        rig.relay.sendto(side, bytes(response), addr)

    rig.relay.on_stun = on_stun
    request = binding_request()
    rig.ms_peer.sendto(bytes(request), rig.a_addr)
    answer = collect(rig.hub, rig.ms_peer, 1)
    assert len(answer) == 1
    assert stun.parse_message(answer[0]).transaction_id == request.transaction_id
    assert seen[0][0] == Side.A and seen[0][2] == rig.ms_peer.getsockname()
    assert rig.relay.counters(Side.A)["stun"] == 1
    assert rig.relay.counters(Side.A)["forwarded"] == 0


def test_both_paths_send_the_same_bytes_for_the_same_input() -> None:
    if not native_available():
        pytest.skip("native relay not built")
    outputs = []
    for impl in ("native", "python"):
        rig = Rig(impl)
        try:
            for i in range(1, 51):
                rig.video_peer.sendto(rtp(9, i), rig.b_addr)
            outputs.append(collect(rig.hub, rig.ms_peer, 50))
        finally:
            rig.close()
    assert len(outputs[0]) == 50 and outputs[0] == outputs[1]


def test_verdict_numbers_match_the_counter_names() -> None:
    relay = make_relay(impl="python")
    assert set(relay.counters(Side.A)) >= {"forwarded", "dropped_malformed", "dropped_send"}
    assert Verdict.SEND == 7


def test_the_path_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from media import relay
    monkeypatch.setenv(relay.ENV, "python")
    assert relay.implementation() == "python"
    assert type(relay.make_relay()).__name__ == "PyRelay"
    monkeypatch.setenv(relay.ENV, "fast")
    with pytest.raises(ValueError, match=relay.ENV):
        relay.implementation()
    monkeypatch.delenv(relay.ENV)
    assert relay.implementation() == ("native" if native_available() else "python")


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_hub_attached_to_the_running_loop_relays_and_hands_stun_up(impl: str) -> None:
    import asyncio

    from media.relay import attach
    rig = Rig(impl)
    loop = asyncio.get_running_loop()
    detach = attach(rig.hub, loop)
    stun_seen = asyncio.Event()
    rig.relay.on_stun = lambda side, data, addr: stun_seen.set()
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()
        loop.add_reader(rig.video_peer.fileno(), lambda: got.put_nowait(rig.video_peer.recv(4096)))
        microsoft = session(KEY_MS_RX, inbound=False)
        for i in range(1, 21):
            protected = microsoft.protect(rtp(7, i))
            rig.ms_peer.sendto(with_mki(protected, b"\x01"), rig.a_addr)
        request = binding_request()
        rig.ms_peer.sendto(bytes(request), rig.a_addr)
        received = [await asyncio.wait_for(got.get(), 10) for _ in range(20)]
        assert received == [rtp(7, i) for i in range(1, 21)]
        await asyncio.wait_for(stun_seen.wait(), 10)
        loop.remove_reader(rig.video_peer.fileno())
    finally:
        detach()
        rig.close()
