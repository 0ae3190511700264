"""Latching decisions, in the packet path (``media.relay``: both implementations take the
same decisions), and the video leg's view of them."""

from __future__ import annotations

import pytest

from media.relay import (
    ForwardingPlan,
    Latching,
    Relay,
    Side,
    SidePlan,
    Verdict,
    make_relay,
    native_available,
)
from media.rtp_leg import LatchMode, LatchSettings, RtpLeg, looks_like_rtp

SDP = ("127.0.0.1", 20000)
PACKET = b"\x80\x00" + bytes(10)


STRICT = LatchSettings(LatchMode.STRICT, relatch_after=5.0)
NAT = LatchSettings(LatchMode.NAT, relatch_after=5.0)
IMPLS = ["python"] + (["native"] if native_available() else [])


class Latch:
    """One component's video side of a relay, asked through ``feed`` (time in seconds)."""

    def __init__(self, settings: LatchSettings, sdp: tuple[str, int] | None = None,
                 impl: str = "python") -> None:
        self.relay: Relay = make_relay(impl=impl)
        self.settings = settings
        self.update_sdp(sdp)

    def update_sdp(self, sdp: tuple[str, int] | None) -> None:
        self.sdp_address = sdp
        mode = Latching.STRICT if self.settings.mode is LatchMode.STRICT else Latching.NAT
        self.relay.publish(ForwardingPlan(
            a=SidePlan(address=("127.0.0.1", 9)),
            b=SidePlan(latching=mode, address=sdp, relatch_after=self.settings.relatch_after),
            b_to_a=True))

    def accept(self, source: tuple[str, int], now: float) -> bool:
        verdict, _, _ = self.relay.feed(Side.B, PACKET, source, round(now * 1e9) + 1)
        assert verdict in (Verdict.FORWARD, Verdict.SOURCE)
        return verdict is Verdict.FORWARD

    @property
    def latched(self) -> tuple[str, int] | None:
        return self.relay.latched(Side.B)

    @property
    def target(self) -> tuple[str, int] | None:
        return self.latched or self.sdp_address

    @property
    def relatches(self) -> int:
        return self.relay.counters(Side.B)["relatches"]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)

def test_strict_latches_to_the_sdp_host_then_keeps_it(impl: str) -> None:
    latch = Latch(STRICT, SDP, impl)
    assert latch.target == SDP
    assert not latch.accept(("127.0.0.9", 20000), 0.0)  # another host: never
    assert latch.latched is None and latch.target == SDP
    assert latch.accept(("127.0.0.1", 31000), 0.1)  # NAT'd port on the same host
    assert not latch.accept(("127.0.0.1", 31002), 0.2)
    assert latch.target == ("127.0.0.1", 31000) and latch.relatches == 0


def test_strict_the_exact_sdp_address_takes_over_from_another_port_at_once(impl: str) -> None:
    latch = Latch(STRICT, SDP, impl)
    assert latch.accept(("127.0.0.1", 31000), 0.0)
    assert latch.accept(SDP, 0.1)
    assert latch.target == SDP and latch.relatches == 1
    assert not latch.accept(("127.0.0.1", 31000), 0.2)


def test_strict_without_sdp_accepts_nothing(impl: str) -> None:
    latch = Latch(STRICT, None, impl)
    assert not latch.accept(SDP, 0.0) and latch.target is None


def test_nat_latches_to_the_first_source_and_a_stranger_cannot_steal_it(impl: str) -> None:
    latch = Latch(NAT, None, impl)  # before the endpoint's SDP is known, too
    endpoint, stranger = ("192.0.2.7", 4000), ("127.0.0.9", 4000)
    assert latch.accept(endpoint, 0.0)
    for t in (0.02, 1.0, 4.9):
        assert latch.accept(endpoint, t)
        assert not latch.accept(stranger, t + 0.01)
    assert latch.target == endpoint and latch.relatches == 0


def test_another_source_takes_over_only_after_the_latched_one_is_silent(impl: str) -> None:
    latch = Latch(NAT, SDP, impl)
    moved = ("127.0.0.9", 4002)
    assert latch.accept(("127.0.0.9", 4000), 10.0)
    assert not latch.accept(moved, 14.9)  # 4.9 s of silence: not yet
    assert latch.accept(moved, 15.0)
    assert latch.target == moved and latch.relatches == 1
    strict = Latch(STRICT, SDP, impl)
    assert strict.accept(("127.0.0.1", 31000), 0.0)
    assert not strict.accept(("127.0.0.9", 31000), 60.0)  # silence does not open STRICT up


def test_new_sdp_address_starts_over_and_same_address_keeps_latch(impl: str) -> None:
    latch = Latch(NAT, SDP, impl)
    latch.accept(("127.0.0.9", 4000), 0.0)
    latch.update_sdp(SDP)
    assert latch.latched == ("127.0.0.9", 4000)
    latch.update_sdp(("127.0.0.1", 20002))
    assert latch.latched is None and latch.target == ("127.0.0.1", 20002)


@pytest.mark.parametrize("data, component, ok", [
    (b"\x80\x00" + bytes(10), 1, True),
    (b"\x80\xc8" + bytes(6), 2, True),
    (b"\x80\x00" + bytes(9), 1, False),   # shorter than the RTP header
    (b"\x00\x00" + bytes(10), 1, False),  # version 0: not RTP (e.g. STUN)
    (b"\xc0" + bytes(20), 1, False),        # version 3
    (b"GET / HTTP/1.1\r\n", 1, False),
    (b"", 2, False),
])
def test_garbage_is_not_rtp(data: bytes, component: int, ok: bool) -> None:
    assert looks_like_rtp(data, component) is ok


def test_leg_reads_its_latches_from_the_relays_and_sends_through_them(impl: str) -> None:
    leg = RtpLeg("127.0.0.1", 20000, NAT)
    assert not leg.send(b"x", 1)  # no relay yet: nowhere to send
    latch = Latch(NAT, SDP, impl)
    leg.relays = (latch.relay, latch.relay)
    leg.set_remote(SDP, ("127.0.0.1", 20001))
    assert leg.latches[0].target == SDP and leg.latches[1].sdp_address == ("127.0.0.1", 20001)
    assert latch.accept(("127.0.0.3", 5), 0.0)
    assert leg.latches[0].latched == ("127.0.0.3", 5) == leg.latches[0].target
    assert not leg.send(b"x", 1)  # a relay without sockets refuses: counted, never raised
    assert leg.send_errors == 1
