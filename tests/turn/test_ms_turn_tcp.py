"""MS-TURN TCP relays in the sans-IO core: libnice's ICE-TCP session through a TCP relayed
address replayed byte for byte (tests/data/stun/ms-turn/tcp-relay, captured by
``tests/peers/capture_ms_turn_tcp.py``), its framing, and every refusal: a peer connecting
before its permission is held, not relayed; nothing for a deleted allocation; the
per-allocation connection limit; denied peers; no relay ever for a refused Send."""

from __future__ import annotations

import struct

import pytest

from turn import ms_turn
from turn.allocation import (
    Action,
    Allocation,
    OpenPeerStream,
    OpenRelay,
    ResumePeerStream,
    SendToPeer,
    Transport,
)
from turn.core import TurnCore
from turn.ms_handler import MAX_STREAMS, STREAM_CHUNK, Admission
from turn.ms_turn import MsAttr, MsType

from .ms_vectors import Session, resign, summary

SESSION = Session.load("tcp-relay")
EVENTS = SESSION.events
FIRST_SEND = next(i for i, e in enumerate(EVENTS) if e.get("in", "").startswith("0004"))


def replay(core: TurnCore, upto: int | None = None) -> Allocation:
    """Feed the capture into ``core``, checking every answer; the allocation last opened."""
    alloc: Allocation | None = None
    for event in EVENTS[:upto]:
        kind, now = event["event"], event.get("now", 0.0)
        expected = {k: event[k] for k in ("out", "to_peer", "open", "resume") if k in event}
        if kind in ("stun", "client_data"):
            ft = SESSION.five_tuple(event)
            data = bytes.fromhex(event["in"])
            actions = (
                core.handle_stun(data, ft, now)
                if kind == "stun"
                else core.client_data(ft, data, now)
            )
            alloc = next((a.allocation for a in actions if isinstance(a, OpenRelay)), alloc)
            assert summary(actions) == expected, kind
        elif kind == "relay_opened":
            assert alloc is not None
            assert summary(core.relay_opened(alloc, now)) == expected
        elif kind == "stream_incoming":
            assert alloc is not None
            got = core.ms.stream_incoming(alloc, tuple(event["peer"]), now)
            assert got.value == event["admission"]
        elif kind == "stream_data":
            assert alloc is not None
            out = core.ms.stream_data(alloc, tuple(event["peer"]), bytes.fromhex(event["in"]), now)
            assert [o.hex() for o in out] == event["out"]
        else:
            assert alloc is not None
            core.ms.stream_closed(alloc, tuple(event["peer"]))
    assert alloc is not None
    return alloc


def allocated() -> tuple[TurnCore, Allocation, float]:
    core = SESSION.core()
    alloc = replay(core, upto=FIRST_SEND)
    return core, alloc, EVENTS[FIRST_SEND]["now"]


def send(
    core: TurnCore, alloc: Allocation, peer: tuple[str, int], now: float, seq: int
) -> list[Action]:
    """libnice's first Send, re-signed to name ``peer`` with sequence number ``seq``."""
    assert alloc.ms is not None
    raw = bytes.fromhex(EVENTS[FIRST_SEND]["in"])
    data = resign(
        raw,
        SESSION.key,
        destination_address=ms_turn.pack_address(peer),
        ms_sequence_number=ms_turn.pack_sequence(alloc.ms.connection_id, seq),
    )
    return core.handle_stun(data, alloc.five_tuple, now)


# -- the capture, replayed -----------------------------------------------------------------


def test_replaying_libnices_tcp_relay_session_gives_back_the_captured_bytes() -> None:
    core = SESSION.core()
    alloc = replay(core)
    assert alloc.transport is Transport.TCP and alloc.five_tuple.transport is Transport.TCP
    assert SESSION.meta["report"]["ms_pair"]["local_transport"].startswith("tcp")
    kinds = [e["event"] for e in EVENTS]
    assert "client_data" in kinds  # 0x03 frames once the peer is the active destination
    # libnice releases once per relay candidate (and repeats): one allocation made, ever
    assert kinds.count("relay_opened") == 1 and core.allocations == {}


def test_the_allocate_over_tcp_gets_a_tcp_relayed_address() -> None:
    core, alloc, _ = allocated()
    assert alloc.transport is Transport.TCP and core.stats(0).tcp_allocations == 1
    opened = next(e for e in EVENTS if e["event"] == "relay_opened")
    (frame,) = opened["out"]
    msg = ms_turn.parse(bytes.fromhex(frame)[4:])
    assert ms_turn.unpack_address(msg.get(MsAttr.MAPPED_ADDRESS) or b"") == tuple(opened["relay"])


def test_libnice_frames_ice_tcp_inside_the_ms_turn_frames() -> None:
    """On the wire: 0x02 / 0x03, 0x00, length; inside a Send, DATA is one RFC 4571 frame
    (length + ICE check), the byte stream written to the peer as it is."""
    for event in EVENTS:
        if event["event"] != "stun" or not event["in"].startswith("0004"):
            continue
        msg = ms_turn.parse(bytes.fromhex(event["in"]))
        data = msg.get(MsAttr.DATA) or b""
        assert struct.unpack("!H", data[:2])[0] == len(data) - 2
        for _peer, written in event["to_peer"]:
            assert bytes.fromhex(written) == data
    for event in EVENTS:
        for out in event.get("out", []):
            raw = bytes.fromhex(out)
            assert raw[0] in (ms_turn.FRAME_CONTROL, ms_turn.FRAME_DATA) and raw[1] == 0
            assert struct.unpack("!H", raw[2:4])[0] == len(raw) - 4


def test_peer_bytes_come_back_as_data_indications_naming_the_connection() -> None:
    streams = [e for e in EVENTS if e["event"] == "stream_data"]
    assert streams
    for event in streams:
        for out in event["out"]:
            raw = bytes.fromhex(out)
            if raw[0] == ms_turn.FRAME_DATA:
                assert raw[4:] == bytes.fromhex(event["in"])
                continue
            msg = ms_turn.parse(raw[4:])
            assert msg.msg_type == MsType.DATA_INDICATION
            assert (
                list(ms_turn.unpack_address(msg.get(MsAttr.REMOTE_ADDRESS) or b"")) == event["peer"]
            )
            assert msg.get(MsAttr.DATA) == bytes.fromhex(event["in"])


# -- refusals and limits -------------------------------------------------------------------


def test_a_send_opens_one_connection_per_peer_and_reuses_it() -> None:
    core, alloc, now = allocated()
    peer = (SESSION.meta["listen"].rsplit(".", 1)[0] + ".10", 5000)
    first = send(core, alloc, peer, now, 1)
    assert [type(a) for a in first] == [OpenPeerStream, SendToPeer]
    again = send(core, alloc, peer, now, 2)
    assert [type(a) for a in again] == [SendToPeer]
    core.ms.stream_closed(alloc, peer)  # the connection ended: the next Send opens another
    assert [type(a) for a in send(core, alloc, peer, now, 3)] == [OpenPeerStream, SendToPeer]


def test_a_peer_connecting_before_its_permission_is_held_until_the_client_sends() -> None:
    core, alloc, now = allocated()
    early = (SESSION.meta["listen"].rsplit(".", 1)[0] + ".10", 6000)
    assert core.ms.stream_incoming(alloc, early, now) is Admission.HOLD
    assert core.ms.stream_data(alloc, early, b"\x00\x01x", now) == []  # nothing relayed
    assert core.ms.stream_incoming(alloc, early, now) is Admission.REFUSE  # same peer twice
    actions = send(core, alloc, (early[0], 7000), now, 1)  # a Send to its IP permits it
    assert ResumePeerStream(alloc, early) in actions
    (out,) = core.ms.stream_data(alloc, early, b"\x00\x01x", now)
    assert ms_turn.parse(out[4:]).msg_type == MsType.DATA_INDICATION


def test_nothing_for_a_deleted_or_expired_allocation() -> None:
    core, alloc, now = allocated()
    peer = (SESSION.meta["listen"].rsplit(".", 1)[0] + ".10", 5000)
    send(core, alloc, peer, now, 1)
    assert core.ms.stream_data(alloc, peer, b"late", alloc.expiry + 1) == []
    core.connection_lost(alloc.five_tuple, now)  # the control connection closed
    assert core.ms.stream_data(alloc, peer, b"late", now) == []
    assert core.ms.stream_incoming(alloc, (peer[0], 9), now) is Admission.REFUSE


def test_the_connection_limit_drops_sends_to_further_peers() -> None:
    core, alloc, now = allocated()
    base = SESSION.meta["listen"].rsplit(".", 1)[0] + ".10"
    opened = 0
    for i in range(MAX_STREAMS + 3):
        actions = send(core, alloc, (base, 20000 + i), now, i + 1)
        opened += sum(isinstance(a, OpenPeerStream) for a in actions)
        if i >= MAX_STREAMS:
            assert actions == []  # neither opened nor relayed
    assert opened == MAX_STREAMS
    assert core.ms.stream_incoming(alloc, (base, 1), now) is Admission.REFUSE


def test_a_denied_peer_gets_no_connection() -> None:
    core, alloc, now = allocated()
    assert send(core, alloc, ("10.1.2.3", 443), now, 1) == []  # private, not allowed
    assert alloc.ms is not None and not alloc.ms.streams
    assert core.stats(now).peers_denied == 1


@pytest.mark.parametrize("size", [1, STREAM_CHUNK, STREAM_CHUNK + 1, 3 * STREAM_CHUNK - 7])
def test_a_long_read_is_cut_to_fit_the_16_bit_frame_length(size: int) -> None:
    core, alloc, now = allocated()
    peer = (SESSION.meta["listen"].rsplit(".", 1)[0] + ".10", 5000)
    send(core, alloc, peer, now, 1)
    data = bytes(range(256)) * (size // 256 + 1)
    out = core.ms.stream_data(alloc, peer, data[:size], now)
    assert len(out) == -(-size // STREAM_CHUNK)
    joined = b""
    for frame in out:
        assert struct.unpack("!H", frame[2:4])[0] == len(frame) - 4 <= 0xFFFF
        joined += ms_turn.parse(frame[4:]).get(MsAttr.DATA) or b""
    assert joined == data[:size]
