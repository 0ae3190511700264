"""The native packet path against its pure-Python oracle: the same packets in give the same
verdicts, bytes, destinations, latches and counters out (media/relay.py's rules)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys

import pytest

from media.ms_dialect import SsrcRange
from media.relay import (
    ForwardingPlan,
    Latching,
    Relay,
    Side,
    SidePlan,
    Verdict,
    make_relay,
)
from tests.media.relay_helpers import (
    KEY_MS_RX,
    KEY_MS_TX,
    binding_request,
    needs_native,
    session,
    with_mki,
)

pytestmark = needs_native

MS = ("127.0.0.10", 50000)
VIDEO = ("127.0.0.20", 40000)
KEY_V_RX = bytes(range(50, 80))
KEY_V_TX = bytes(range(150, 180))
SEC = 1_000_000_000


def rtp(ssrc: int, seq: int, payload: bytes = b"\x11" * 40, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 960, ssrc) + payload


def rtcp_rr(sender: int, about: list[int]) -> bytes:
    body = b"".join(struct.pack("!I", s) + bytes(20) for s in about)
    words = (8 + len(body)) // 4 - 1
    return struct.pack("!BBHI", 0x80 | len(about), 201, words, sender) + body


def rtcp_pli(sender: int, media: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, sender, media)


def both(plan: ForwardingPlan) -> tuple[Relay, Relay]:
    native, python = make_relay(impl="native"), make_relay(impl="python")
    native.publish(plan)
    python.publish(plan)
    return native, python


Step = tuple[int, bytes, tuple[str, int], int]


def run_same(native: Relay, python: Relay, steps: list[Step]) -> list[tuple[Verdict, bytes | None,
                                                                          tuple[str, int] | None]]:
    """Feed both; assert identical results step by step and identical state after."""
    results = []
    for i, (side, data, source, now) in enumerate(steps):
        got_n = native.feed(side, data, source, now)
        got_p = python.feed(side, data, source, now)
        assert got_n == got_p, f"step {i}: native {got_n[0]!r} != python {got_p[0]!r}"
        results.append(got_n)
    for side in (Side.A, Side.B):
        assert native.counters(side) == python.counters(side)
        assert native.latched(side) == python.latched(side)
    return results


def plain_plan(**b_rules: object) -> ForwardingPlan:
    return ForwardingPlan(a=SidePlan(address=MS),
                          b=SidePlan(latching=Latching.STRICT, address=VIDEO, **b_rules),  # type: ignore[arg-type]
                          a_to_b=True, b_to_a=True, rtcp=True)


def test_plain_rtp_and_rtcp_both_ways_unchanged() -> None:
    native, python = both(plain_plan())
    steps: list[Step] = [
        (Side.A, rtp(7, 1), MS, 0), (Side.B, rtp(9, 1), VIDEO, 1),
        (Side.A, rtcp_rr(7, [9]), MS, 2), (Side.B, rtcp_pli(9, 7), VIDEO, 3),
    ]
    out = run_same(native, python, steps)
    assert [v for v, _, _ in out] == [Verdict.FORWARD] * 4
    assert [o for _, o, _ in out] == [s[1] for s in steps]
    assert [d for _, _, d in out] == [VIDEO, MS, VIDEO, MS]
    assert native.counters(Side.B)["packets_out"] == 2


def test_strict_latching_refuses_strangers_and_relatches_after_silence() -> None:
    native, python = both(plain_plan(relatch_after=1.0))
    latches: dict[str, list[tuple[int, tuple[str, int]]]] = {"native": [], "python": []}
    native.on_latch = lambda side, source: latches["native"].append((side, source))
    python.on_latch = lambda side, source: latches["python"].append((side, source))
    same_host_other_port = (VIDEO[0], VIDEO[1] + 100)
    stranger = ("127.0.0.99", VIDEO[1])
    out = run_same(native, python, [
        (Side.A, rtp(7, 1), MS, 0),                       # before any latch: to the SDP address
        (Side.B, rtp(9, 1), stranger, 1),                 # another host: never
        (Side.B, rtp(9, 2), same_host_other_port, 2),     # SDP host, other port: latches
        (Side.A, rtp(7, 2), MS, 3),                       # now sent to the latched source
        (Side.B, rtp(9, 3), (VIDEO[0], 1), 4),            # same host, another port: too early
        (Side.B, rtp(9, 4), VIDEO, 5),                    # the exact SDP address takes over
        (Side.B, rtp(9, 5), same_host_other_port, 6),     # back: not before the silence
        (Side.B, rtp(9, 6), same_host_other_port, 5 + SEC),  # silence over: relatches
        (Side.B, rtp(9, 7), stranger, 10 * SEC),          # another host still never
    ])
    assert [v for v, _, _ in out] == [
        Verdict.FORWARD, Verdict.SOURCE, Verdict.FORWARD, Verdict.FORWARD, Verdict.SOURCE,
        Verdict.FORWARD, Verdict.SOURCE, Verdict.FORWARD, Verdict.SOURCE]
    assert out[0][2] == VIDEO and out[3][2] == same_host_other_port
    assert native.latched(Side.B) == same_host_other_port
    assert native.counters(Side.B)["relatches"] == 2
    # one call per new source, not per packet
    assert latches["native"] == latches["python"] == [
        (Side.B, same_host_other_port), (Side.B, VIDEO), (Side.B, same_host_other_port)]


def test_nat_latching_takes_the_first_source_and_a_new_sdp_address_starts_over() -> None:
    plan = ForwardingPlan(a=SidePlan(address=MS), b=SidePlan(latching=Latching.NAT),
                          a_to_b=True, b_to_a=True, rtcp=True)
    native, python = both(plan)
    behind_nat = ("127.0.0.77", 3333)
    out = run_same(native, python, [
        (Side.A, rtp(7, 1), MS, 0),              # nowhere to send yet
        (Side.B, rtp(9, 1), behind_nat, 1),
        (Side.A, rtp(7, 2), MS, 2),
    ])
    assert [v for v, _, _ in out] == [Verdict.NO_ROUTE, Verdict.FORWARD, Verdict.FORWARD]
    assert out[2][2] == behind_nat
    moved = ForwardingPlan(a=plan.a, b=SidePlan(latching=Latching.NAT, address=VIDEO),
                           a_to_b=True, b_to_a=True, rtcp=True)
    native.publish(moved)
    python.publish(moved)
    out = run_same(native, python, [(Side.A, rtp(7, 3), MS, 3)])
    assert out[0][2] == VIDEO


def test_directions_hold_rtp_but_not_rtcp() -> None:
    plan = ForwardingPlan(a=SidePlan(address=MS), b=SidePlan(address=VIDEO), a_to_b=False,
                          b_to_a=True, rtcp=True)
    native, python = both(plan)
    out = run_same(native, python, [
        (Side.A, rtp(7, 1), MS, 0), (Side.A, rtcp_rr(7, [9]), MS, 1),
        (Side.B, rtp(9, 1), VIDEO, 2)])
    assert [v for v, _, _ in out] == [Verdict.DIRECTION, Verdict.FORWARD, Verdict.FORWARD]


@pytest.mark.parametrize("mki", [b"", b"\x01", b"\x00\x00\x00\x07"])
def test_srtp_toward_microsoft_with_and_without_mki_and_plain_video(mki: bytes) -> None:
    plan = ForwardingPlan(
        a=SidePlan(address=MS, rx_key=KEY_MS_RX, rx_mki=mki, tx_key=KEY_MS_TX),
        b=SidePlan(latching=Latching.STRICT, address=VIDEO),
        a_to_b=True, b_to_a=True, rtcp=True)
    native, python = both(plan)
    microsoft = session(KEY_MS_RX, inbound=False)
    steps: list[Step] = []
    plain_in = [rtp(7, i) for i in range(1, 6)]
    for i, packet in enumerate(plain_in):
        steps.append((Side.A, with_mki(microsoft.protect(packet), mki), MS, i))
    rr = rtcp_rr(7, [9])
    steps.append((Side.A, with_mki(microsoft.protect_rtcp(rr), mki), MS, 10))
    steps.append((Side.A, steps[0][1], MS, 11))                       # a replay
    steps.append((Side.A, with_mki(microsoft.protect(rtp(7, 6)), b"\xee" * max(len(mki), 1)),
                  MS, 12))                                           # a wrong MKI / garbage tag
    for i in range(1, 4):
        steps.append((Side.B, rtp(9, i), VIDEO, 20 + i))
    steps.append((Side.B, rtcp_pli(9, 7), VIDEO, 30))
    out = run_same(native, python, steps)
    assert [o for _, o, _ in out[:6]] == [*plain_in, rr]
    assert [v for v, _, _ in out[6:8]] == [Verdict.SRTP, Verdict.SRTP]
    # toward Microsoft: the bytes (identical on both paths) are SRTP under our key
    ours = session(KEY_MS_TX, inbound=True)
    assert [ours.unprotect(o) for _, o, _ in out[8:11] if o] == [rtp(9, i) for i in range(1, 4)]
    assert ours.unprotect_rtcp(out[11][1] or b"") == rtcp_pli(9, 7)


def test_sdes_srtp_video_side_to_srtp_microsoft_side_and_republish_keeps_replay_state() -> None:
    plan = ForwardingPlan(
        a=SidePlan(address=MS, rx_key=KEY_MS_RX, rx_mki=b"\x01", tx_key=KEY_MS_TX),
        b=SidePlan(latching=Latching.STRICT, address=VIDEO, rx_key=KEY_V_RX, tx_key=KEY_V_TX),
        a_to_b=True, b_to_a=True, rtcp=True)
    native, python = both(plan)
    endpoint = session(KEY_V_RX, inbound=False)
    first = endpoint.protect(rtp(9, 1))
    out = run_same(native, python, [(Side.B, first, VIDEO, 0),
                                    (Side.B, endpoint.protect(rtp(9, 2)), VIDEO, 1)])
    assert session(KEY_MS_TX, inbound=True).unprotect(out[0][1] or b"") == rtp(9, 1)
    held = ForwardingPlan(a=plan.a, b=plan.b, a_to_b=True, b_to_a=True, rtcp=True)
    native.publish(held)
    python.publish(held)
    out = run_same(native, python, [(Side.B, first, VIDEO, 2)])   # the same keys: still a replay
    assert out[0][0] is Verdict.SRTP


def test_ssrc_mapping_into_the_microsoft_range_and_back_in_rtcp() -> None:
    plan = ForwardingPlan(a=SidePlan(address=MS), b=SidePlan(address=VIDEO), a_to_b=True,
                          b_to_a=True, rtcp=True, ssrc_range=SsrcRange(1000, 1002))
    native, python = both(plan)
    endpoint_ssrcs = [0xAAAA0001, 0xAAAA0002, 0xAAAA0003, 0xAAAA0004, 0xAAAA0001]
    steps: list[Step] = [(Side.B, rtp(s, i), VIDEO, i) for i, s in enumerate(endpoint_ssrcs)]
    steps.append((Side.B, rtcp_rr(0xAAAA0002, [7]) + rtcp_pli(0xAAAA0003, 7), VIDEO, 10))
    steps.append((Side.A, rtcp_rr(7, [1000, 1001, 1002, 5555]) + rtcp_pli(7, 1001), MS, 11))
    out = run_same(native, python, steps)
    mapped = [struct.unpack_from("!I", o or b"", 8)[0] for _, o, _ in out[:5]]
    # the range holds three: the fourth SSRC reuses the oldest mapping (0xAAAA0001's 1000),
    # so 0xAAAA0001 coming back gets the next oldest
    assert mapped == [1000, 1001, 1002, 1000, 1001]
    # the endpoint's RTCP senders 0xAAAA0002 and 0xAAAA0003 evicted the two oldest again:
    # 1000 -> 0xAAAA0003, 1001 -> 0xAAAA0001, 1002 -> 0xAAAA0002; unknown SSRCs pass
    back = out[6][1] or b""
    about = [struct.unpack_from("!I", back, 8 + 24 * i)[0] for i in range(4)]
    assert about == [0xAAAA0003, 0xAAAA0001, 0xAAAA0002, 5555]
    assert struct.unpack_from("!I", back, 8 + 24 * 4 + 8)[0] == 0xAAAA0001  # the PLI's media


def test_stun_goes_up_and_garbage_is_dropped_and_counted_never_raised() -> None:
    plan = ForwardingPlan(
        a=SidePlan(address=MS, rx_key=KEY_MS_RX, rx_mki=b"\x01", tx_key=KEY_MS_TX),
        b=SidePlan(latching=Latching.STRICT, address=VIDEO),
        a_to_b=True, b_to_a=True, rtcp=True, ssrc_range=SsrcRange(1, 100))
    native, python = both(plan)
    request = binding_request()
    request.attributes["USERNAME"] = "a:b"
    steps: list[Step] = [(Side.A, bytes(request), MS, 0), (Side.B, bytes(request), VIDEO, 0)]
    rng = random.Random(13)
    for i in range(400):
        size = rng.choice([0, 1, 7, 8, 11, 12, 13, 40, 200, 1300, 1984, 1985, 2048, 3000])
        data = bytearray(rng.randbytes(size))
        if data and rng.random() < 0.7:
            data[0] = 0x80 | (data[0] & 0x3F)       # looks like RTP/RTCP: reaches deeper rules
        if len(data) > 1 and rng.random() < 0.3:
            data[1] = rng.choice([200, 201, 202, 203, 204, 205, 206])
        side = rng.choice([Side.A, Side.B])
        steps.append((side, bytes(data), MS if side == Side.A else VIDEO, i))
    out = run_same(native, python, steps)
    assert out[0][0] is Verdict.STUN and out[1][0] is Verdict.STUN
    verdicts = {v for v, _, _ in out}
    assert {Verdict.MALFORMED, Verdict.SRTP, Verdict.FORWARD} <= verdicts
    counts = native.counters(Side.A)
    assert counts["packets_in"] == sum(1 for s in steps if s[0] == Side.A)
    assert counts["dropped_malformed"] > 0 and counts["stun"] == 1


@pytest.mark.skipif(os.environ.get("GATEWAY_MEDIA_SRTP") == "system",
                    reason="this is the child run")
def test_the_system_libsrtp2_backend_matches_the_oracle_too() -> None:
    """The native path's SRTP runs on pylibsrtp's libsrtp by default; with
    GATEWAY_MEDIA_SRTP=system on Debian's libsrtp2 (chosen at import: a child process)."""
    env = dict(os.environ, GATEWAY_MEDIA_SRTP="system")
    done = subprocess.run(
        [sys.executable, "-c", "import media.relay_native as m; print(m.SRTP_BACKEND)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "system", done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
         "srtp or garbage"],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert " passed" in done.stdout


def shared_pairs(plan: ForwardingPlan) -> tuple[tuple[Relay, Relay], tuple[Relay, Relay]]:
    """Per implementation, a stream's RTP and RTCP relays sharing one SSRC map."""
    pairs = []
    for impl in ("native", "python"):
        rtp_relay, rtcp_relay = make_relay(impl=impl), make_relay(impl=impl)
        rtp_relay.share_map(rtcp_relay)
        rtp_relay.publish(plan)
        rtcp_relay.publish(plan)
        pairs.append((rtp_relay, rtcp_relay))
    return (pairs[0][0], pairs[1][0]), (pairs[0][1], pairs[1][1])


def test_a_shared_ssrc_map_unmaps_in_one_relay_what_the_other_mapped() -> None:
    plan = ForwardingPlan(a=SidePlan(address=MS), b=SidePlan(address=VIDEO), a_to_b=True,
                          b_to_a=True, rtcp=True, ssrc_range=SsrcRange(1000, 1002))
    rtps, rtcps = shared_pairs(plan)
    out = run_same(*rtps, [(Side.B, rtp(0xBEEF0001, 1), VIDEO, 1),
                           (Side.B, rtp(0xBEEF0002, 2), VIDEO, 2)])
    assert [struct.unpack_from("!I", o or b"", 8)[0] for _, o, _ in out] == [1000, 1001]
    # the RTCP relay saw neither SSRC, yet maps Microsoft's report back, and maps the
    # endpoint's RTCP sender to the SSRC its RTP went out with
    out = run_same(*rtcps, [(Side.A, rtcp_r := rtcp_rr(7, [1001, 1000, 5555]), MS, 3),
                            (Side.B, rtcp_rr(0xBEEF0002, [7]), VIDEO, 4)])
    back = out[0][1] or b""
    assert [struct.unpack_from("!I", back, 8 + 24 * i)[0] for i in range(3)] == [
        0xBEEF0002, 0xBEEF0001, 5555]
    assert struct.unpack_from("!I", out[1][1] or b"", 4)[0] == 1001
    # a third SSRC first seen in RTCP takes the next slot for the RTP relay too
    run_same(*rtcps, [(Side.B, rtcp_rr(0xBEEF0003, []), VIDEO, 5)])
    out = run_same(*rtps, [(Side.B, rtp(0xBEEF0003, 3), VIDEO, 6)])
    assert struct.unpack_from("!I", out[0][1] or b"", 8)[0] == 1002
    # a plan without a range stops that relay mapping; the other keeps the table
    for relay in rtps:
        relay.publish(ForwardingPlan(a=plan.a, b=plan.b, a_to_b=True, b_to_a=True, rtcp=True))
    out = run_same(*rtps, [(Side.B, rtp(0xBEEF0001, 4), VIDEO, 7)])
    assert struct.unpack_from("!I", out[0][1] or b"", 8)[0] == 0xBEEF0001
    out = run_same(*rtcps, [(Side.A, rtcp_r, MS, 8)])
    assert struct.unpack_from("!I", out[0][1] or b"", 8)[0] == 0xBEEF0002
    # a new range (re-INVITE) starts a new table for both
    for relay in (*rtps, *rtcps):
        relay.publish(ForwardingPlan(a=plan.a, b=plan.b, a_to_b=True, b_to_a=True, rtcp=True,
                                     ssrc_range=SsrcRange(2000, 2009)))
    out = run_same(*rtcps, [(Side.A, rtcp_r, MS, 9)])
    assert out[0][1] == rtcp_r
    out = run_same(*rtps, [(Side.B, rtp(0xBEEF0003, 5), VIDEO, 10)])
    assert struct.unpack_from("!I", out[0][1] or b"", 8)[0] == 2000


def test_a_shared_ssrc_map_goes_with_the_last_relay_holding_it() -> None:
    for impl in ("native", "python"):
        first, second, third = (make_relay(impl=impl) for _ in range(3))
        assert first.map_holders() == 0
        first.share_map(second)
        first.share_map(second)          # again: no second hold
        assert first.map_holders() == second.map_holders() == 2
        third.publish(ForwardingPlan(ssrc_range=SsrcRange(1, 9)))
        third.share_map(second)          # second leaves first's map for third's
        assert first.map_holders() == 1
        assert third.map_holders() == 2
        third.close()
        assert second.map_holders() == 1
        assert third.map_holders() == 0
        second.close()
        first.close()
        with pytest.raises(TypeError):
            first.share_map(make_relay(impl="python" if impl == "native" else "native"))



def test_a_hold_does_not_hide_a_sequence_wrap_from_the_srtp_receiver() -> None:
    """Microsoft keeps sending while the call is held (its direction dropped here) and its
    sequence numbers wrap meanwhile. SRTP's rollover counter is implicit (RFC 3711 3.3.1):
    had our receiving context not seen those packets, it would be a rollover behind after
    the resume, and every packet of that direction would fail to authenticate."""
    held = ForwardingPlan(a=SidePlan(address=MS, rx_key=KEY_MS_RX, rx_mki=b"\x01"),
                          b=SidePlan(latching=Latching.STRICT, address=VIDEO),
                          a_to_b=False, b_to_a=True, rtcp=True)
    native, python = both(held)
    microsoft = session(KEY_MS_RX, inbound=False)
    wrap = [(Side.A, with_mki(microsoft.protect(rtp(7, seq)), b"\x01"), MS, i)
            for i, seq in enumerate([65533, 65534, 65535, 0, 1])]
    out = run_same(native, python, wrap)
    assert [v for v, _, _ in out] == [Verdict.DIRECTION] * len(wrap)
    resumed = ForwardingPlan(a=held.a, b=held.b, a_to_b=True, b_to_a=True, rtcp=True)
    native.publish(resumed)
    python.publish(resumed)
    out = run_same(native, python, [(Side.A, with_mki(microsoft.protect(rtp(7, seq)), b"\x01"),
                                     MS, 10 + seq) for seq in range(2, 6)])
    assert [(v, o) for v, o, _ in out] == [(Verdict.FORWARD, rtp(7, seq)) for seq in range(2, 6)]
