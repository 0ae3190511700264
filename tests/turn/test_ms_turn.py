"""MS-TURN: the codec against libnice's bytes, the captured session replayed byte for byte,
and every refusal (an MS-TURN error response or a drop, never a relay, no state left)."""

from __future__ import annotations

import struct

import pytest

from turn import ms_turn, stun
from turn.allocation import (
    CloseClient,
    CloseRelay,
    FiveTuple,
    OpenRelay,
    SendToPeer,
    Transport,
)
from turn.errors import DecodeError
from turn.ms_turn import MsAttr, MsType

from .ms_vectors import Session, replay, resign, sent, vector

SESSION = Session.load("udp")
EVENTS = SESSION.events
ALLOCATE, SEND, SAD = 1, 4, 10  # indexes of libnice's requests in the capture


def request(index: int) -> bytes:
    return bytes.fromhex(EVENTS[index]["in"])


def ft_of(index: int = 0) -> FiveTuple:
    return SESSION.five_tuple(EVENTS[index])


# -- the codec on libnice's bytes ---------------------------------------------------------


def test_libnice_allocate_without_credentials_is_ms_turn() -> None:
    data = vector("udp/01-allocate-request-no-credentials.bin")
    assert ms_turn.is_ms_turn(data) and not stun.is_stun(data)
    msg = ms_turn.parse(data)
    assert msg.msg_type == MsType.ALLOCATE_REQUEST
    assert len(msg.transaction_id) == 16
    assert msg.attributes[0] == (MsAttr.MAGIC_COOKIE, b"\x72\xc6\x4b\xc6")
    assert ms_turn.unpack_u32(msg.get(MsAttr.MS_VERSION) or b"") == 1
    assert msg.integrity_offset is None


def test_our_401_carries_nonce_and_realm_under_ms_types() -> None:
    msg = ms_turn.parse(vector("udp/02-allocate-401.bin"))
    assert msg.msg_type == MsType.ALLOCATE_ERROR
    assert ms_turn.unpack_error_code(msg.get(MsAttr.ERROR_CODE) or b"")[0] == 401
    assert msg.get(0x0015) == b"example.com"  # REALM is 0x0015 in MS-TURN
    assert msg.get(0x0014)  # NONCE is 0x0014


def test_libnice_allocate_is_signed_with_the_mras_key_and_64_byte_padding() -> None:
    data = vector("udp/03-allocate-request.bin")
    msg = ms_turn.parse(data)
    assert msg.get(MsAttr.USERNAME) == SESSION.username
    assert msg.get(MsAttr.REALM) == b"example.com"
    assert msg.check_integrity(SESSION.key)
    assert not msg.check_integrity(ms_turn.long_term_key(SESSION.username, b"x", SESSION.password))
    # libnice writes attributes unaligned: the message does not parse 4-byte aligned.
    assert any(len(v) % 4 for _, v in msg.attributes)
    # the RFC 8489 HMAC (no padding) is not what signs it
    off = msg.integrity_offset
    assert off is not None
    plain = stun.aioice_stun.message_integrity(data[:off], SESSION.key)
    assert plain != data[off + 4 : off + 24]


def test_allocate_response_names_the_relay_and_the_mapped_address() -> None:
    msg = ms_turn.parse(vector("udp/04-allocate-response.bin"))
    assert msg.msg_type == MsType.ALLOCATE_RESPONSE
    assert msg.check_integrity(SESSION.key)
    relay = EVENTS[2]["relay"]
    assert ms_turn.unpack_address(msg.get(MsAttr.MAPPED_ADDRESS) or b"") == tuple(relay)
    mapped = ms_turn.unpack_xor_mapped(
        msg.get(MsAttr.XOR_MAPPED_ADDRESS) or b"", msg.transaction_id
    )
    assert mapped == tuple(EVENTS[0]["client"])
    connection_id, number = ms_turn.unpack_sequence(msg.get(MsAttr.MS_SEQUENCE_NUMBER) or b"")
    assert number == 0 and connection_id.hex() == EVENTS[2]["connection_id"]


def test_libnice_send_and_set_active_destination_carry_our_connection_id() -> None:
    response = ms_turn.parse(vector("udp/04-allocate-response.bin"))
    cid = ms_turn.unpack_sequence(response.get(MsAttr.MS_SEQUENCE_NUMBER) or b"")[0]
    numbers = []
    for name in ("udp/05-send-request.bin", "udp/07-set-active-destination-request.bin"):
        msg = ms_turn.parse(vector(name))
        assert msg.check_integrity(SESSION.key)
        assert msg.get(MsAttr.NONCE) is None  # MS clients send no NONCE here
        got_cid, number = ms_turn.unpack_sequence(msg.get(MsAttr.MS_SEQUENCE_NUMBER) or b"")
        assert got_cid == cid
        numbers.append(number)
        assert (
            ms_turn.unpack_address(msg.get(MsAttr.DESTINATION_ADDRESS) or b"")[0] == "10.198.77.2"
        )
    assert numbers[0] == 1 and numbers[1] > numbers[0]
    assert ms_turn.parse(vector("udp/05-send-request.bin")).msg_type == MsType.SEND_REQUEST


def test_data_indication_is_0x0115_with_remote_address_and_no_integrity() -> None:
    data = vector("udp/06-data-indication.bin")
    assert struct.unpack("!H", data[:2])[0] == 0x0115
    msg = ms_turn.parse(data)
    assert msg.integrity_offset is None
    assert ms_turn.unpack_address(msg.get(MsAttr.REMOTE_ADDRESS) or b"") == tuple(EVENTS[5]["peer"])
    assert msg.get(MsAttr.DATA) == bytes.fromhex(EVENTS[5]["in"])


def test_tcp_frames_are_type_zero_length() -> None:
    framer = ms_turn.MsStreamFramer()
    for name in ("tcp/01-allocate-request-no-credentials.frame", "tcp/03-allocate-request.frame"):
        framer.feed(vector(name))
    kinds = []
    while (frame := framer.next_frame()) is not None:
        kinds.append(frame[0])
        assert ms_turn.parse(frame[1]).msg_type == MsType.ALLOCATE_REQUEST
    assert kinds == [ms_turn.FRAME_CONTROL] * 2
    for name in ("tcp/02-allocate-401.frame", "tcp/04-allocate-response.frame"):
        data = vector(name)
        assert (
            data[0] == 0x02 and data[1] == 0 and struct.unpack("!H", data[2:4])[0] == len(data) - 4
        )
    bad = ms_turn.MsStreamFramer()
    bad.feed(b"\x07\x00\x00\x04abcd")
    with pytest.raises(DecodeError):
        bad.next_frame()


@pytest.mark.parametrize("cut", range(0, 40, 3))
def test_garbage_gives_decode_error_only(cut: int) -> None:
    data = vector("udp/03-allocate-request.bin")
    for bad in (
        data[:cut],
        data[:cut] + b"\xff" * 7,
        data[:20] + b"\x00\x0f\x00\x04" + data[24:cut],
    ):
        try:
            ms_turn.parse(bad)
        except DecodeError:
            pass


# -- the captured session, replayed ------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_replaying_libnice_gives_back_the_captured_answers(transport: str) -> None:
    session = Session.load(transport)
    core = session.core()
    alloc = None
    for event in session.events:
        kind, now = event.get("event", "stun"), event["now"]
        if kind == "stun":
            actions = core.handle_stun(bytes.fromhex(event["in"]), session.five_tuple(event), now)
            alloc = next((a.allocation for a in actions if isinstance(a, OpenRelay)), alloc)
            assert [d.hex() for d in sent(actions)] == event["out"]
        elif kind == "relay_opened":
            assert alloc is not None
            assert [d.hex() for d in sent(core.relay_opened(alloc, now))] == event["out"]
        else:
            assert alloc is not None
            out = core.data_from_peer(alloc, tuple(event["peer"]), bytes.fromhex(event["in"]), now)
            assert ([out.hex()] if out else []) == event["out"]
    stats = core.stats(session.events[-1]["now"])
    assert stats.allocations == 1
    if transport == "udp":
        assert stats.packets_to_peer >= 4 and stats.packets_to_client >= 5


def test_peer_data_before_any_send_is_dropped() -> None:
    core = SESSION.core()
    alloc = replay(SESSION, core, upto=3)
    assert alloc is not None
    assert (
        core.data_from_peer(alloc, tuple(EVENTS[3]["peer"]), request(3), EVENTS[3]["now"]) is None
    )


def test_after_set_active_destination_data_is_unencapsulated_both_ways() -> None:
    core = SESSION.core()
    alloc = replay(SESSION, core, upto=SAD + 1)
    assert alloc is not None and alloc.ms is not None
    peer = alloc.ms.active_destination
    named = ms_turn.parse(request(SAD)).get(MsAttr.DESTINATION_ADDRESS) or b""
    assert peer is not None and peer == ms_turn.unpack_address(named)
    now = EVENTS[SAD]["now"]
    rtp = b"\x80\x00" + bytes(30)
    assert core.data_from_peer(alloc, peer, rtp, now) == rtp
    actions = core.handle_stun(b"\x00\x01\x00\x00" + stun.COOKIE_BYTES + bytes(12), ft_of(), now)
    assert [(type(a), a.peer) for a in actions] == [(SendToPeer, peer)]  # type: ignore[union-attr]
    assert core.client_data(ft_of(), rtp, now) == [SendToPeer(alloc, peer, rtp)]
    # another peer (permitted by a Send) still comes as a Data indication
    other = ("10.198.77.2", peer[1] + 1)
    out = core.data_from_peer(alloc, other, b"hi", now)
    assert out is not None and ms_turn.parse(out).msg_type == MsType.DATA_INDICATION


def test_allocate_again_refreshes_and_lifetime_zero_deletes() -> None:
    core = SESSION.core()
    alloc = replay(SESSION, core, upto=3)
    assert alloc is not None
    now = EVENTS[3]["now"] + 100
    nonce = ms_turn.parse(request(ALLOCATE)).get(MsAttr.NONCE)
    refresh = resign(
        request(ALLOCATE), SESSION.key, tid=b"R" * 16, lifetime=ms_turn.pack_u32(300), nonce=nonce
    )
    (answer,) = sent(core.handle_stun(refresh, ft_of(), now))
    msg = ms_turn.parse(answer)
    assert msg.msg_type == MsType.ALLOCATE_RESPONSE and msg.check_integrity(SESSION.key)
    # the same lifetime rule as RFC 8656 allocations: below the default is raised to it
    assert ms_turn.unpack_u32(msg.get(MsAttr.LIFETIME) or b"") == 600
    assert alloc.expiry == pytest.approx(now + 600)
    delete = resign(
        request(ALLOCATE), SESSION.key, tid=b"D" * 16, lifetime=ms_turn.pack_u32(0), nonce=nonce
    )
    actions = core.handle_stun(delete, ft_of(), now)
    assert CloseRelay(alloc) in actions
    assert ms_turn.unpack_u32(ms_turn.parse(sent(actions)[0]).get(MsAttr.LIFETIME) or b"") == 0
    assert core.allocations == {} and core._per_user == {}
    assert core.pool.take() is not None  # the relay port went back
    # a second release (libnice sends one per relay candidate) makes nothing: 437
    again = resign(
        request(ALLOCATE), SESSION.key, tid=b"E" * 16, lifetime=ms_turn.pack_u32(0), nonce=nonce
    )
    actions = core.handle_stun(again, ft_of(), now)
    (answer,) = sent(actions)
    msg = ms_turn.parse(answer)
    assert msg.msg_type == MsType.ALLOCATE_ERROR and msg.check_integrity(SESSION.key)
    assert ms_turn.unpack_error_code(msg.get(MsAttr.ERROR_CODE) or b"")[0] == 437
    assert not any(isinstance(a, OpenRelay) for a in actions) and core.allocations == {}


def test_both_dialects_share_the_listener_and_the_user_quota() -> None:
    core = SESSION.core(user_quota=1)
    replay(SESSION, core, upto=3)
    other = FiveTuple(Transport.UDP, ("10.198.77.2", 40000), ft_of().server)
    (answer,) = sent(core.handle_stun(request(ALLOCATE), other, EVENTS[1]["now"]))
    msg = ms_turn.parse(answer)
    assert msg.msg_type == MsType.ALLOCATE_ERROR
    assert ms_turn.unpack_error_code(msg.get(MsAttr.ERROR_CODE) or b"")[0] == 486
    # an RFC 8656 request on the same listener still gets an RFC 8656 answer
    rfc = stun.encode(stun.Method.ALLOCATE, stun.Class.REQUEST, b"T" * 12, [], fingerprint=False)
    (answer,) = sent(core.handle_stun(rfc, other, EVENTS[1]["now"]))
    assert stun.parse(answer).cls == stun.Class.ERROR and answer[4:8] == stun.COOKIE_BYTES


# -- refusals ------------------------------------------------------------------------------


def _no_state(core: object) -> None:
    assert core.allocations == {}  # type: ignore[attr-defined]
    assert core.stats(0).packets_to_peer == 0  # type: ignore[attr-defined]


def _error(data: bytes) -> tuple[int, int]:
    msg = ms_turn.parse(data)
    return msg.msg_type, ms_turn.unpack_error_code(msg.get(MsAttr.ERROR_CODE) or b"")[0]


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_wrong_magic_cookie_value_is_ignored_and_tcp_closed(transport: Transport) -> None:
    core = SESSION.core()
    data = bytearray(request(ALLOCATE))
    data[24:28] = b"\x21\x12\xa4\x42"
    ft = ft_of()._replace(transport=transport)
    actions = core.handle_stun(bytes(data), ft, EVENTS[1]["now"])
    assert actions == ([CloseClient(ft)] if transport is Transport.TCP else [])
    _no_state(core)


def test_magic_cookie_not_first_is_not_ms_turn_and_not_answered() -> None:
    core = SESSION.core()
    data = request(0)
    moved = data[:20] + data[28:] + data[20:28]  # MS-VERSION first, MAGIC-COOKIE last
    assert not ms_turn.is_ms_turn(moved)
    assert core.handle_stun(moved, ft_of(), EVENTS[0]["now"]) == []
    _no_state(core)


def test_bad_integrity_gets_401_and_counts_a_failure() -> None:
    core = SESSION.core()
    data = bytearray(request(ALLOCATE))
    data[-1] ^= 0x01
    (answer,) = sent(core.handle_stun(bytes(data), ft_of(), EVENTS[1]["now"]))
    assert _error(answer) == (MsType.ALLOCATE_ERROR, 401)
    assert ms_turn.parse(answer).get(MsAttr.NONCE)
    assert core.counters.auth_failures == 1
    _no_state(core)


def test_expired_mras_credentials_get_401() -> None:
    core = SESSION.core(wall=SESSION.wall + 8 * 3600 + 1)
    (answer,) = sent(core.handle_stun(request(ALLOCATE), ft_of(), EVENTS[1]["now"]))
    assert _error(answer) == (MsType.ALLOCATE_ERROR, 401)
    assert core.counters.auth_failures == 1
    _no_state(core)


def test_another_mras_key_refuses_the_same_credentials() -> None:
    core = SESSION.core(ms_turn_secret="another-key")
    (answer,) = sent(core.handle_stun(request(ALLOCATE), ft_of(), EVENTS[1]["now"]))
    assert _error(answer) == (MsType.ALLOCATE_ERROR, 401)
    _no_state(core)


def test_stale_nonce_gets_438() -> None:
    core = SESSION.core()
    (answer,) = sent(core.handle_stun(request(ALLOCATE), ft_of(), EVENTS[1]["now"] + 10_000))
    assert _error(answer) == (MsType.ALLOCATE_ERROR, 438)
    _no_state(core)


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    core = SESSION.core()
    nonce = ms_turn.parse(request(ALLOCATE)).get(MsAttr.NONCE)
    data = resign(request(ALLOCATE), SESSION.key, nonce=nonce)
    msg = ms_turn.parse(data)
    attrs = [(t, v) for t, v in msg.attributes[1:] if t != MsAttr.MESSAGE_INTEGRITY] + [
        (0x0030, b"\0" * 4)
    ]
    data = ms_turn.encode(msg.msg_type, msg.transaction_id, attrs, key=SESSION.key)
    (answer,) = sent(core.handle_stun(data, ft_of(), EVENTS[1]["now"]))
    assert _error(answer) == (MsType.ALLOCATE_ERROR, 420)
    assert ms_turn.parse(answer).get(MsAttr.UNKNOWN_ATTRIBUTES) == b"\x00\x30"
    _no_state(core)


def _after_allocate(**overrides: object) -> tuple[object, object]:
    core = SESSION.core(**overrides)
    alloc = replay(SESSION, core, upto=3)
    return core, alloc


def test_unauthenticated_send_is_dropped_not_relayed() -> None:
    core, alloc = _after_allocate()
    unsigned = resign(request(SEND), None)  # type: ignore[arg-type]
    assert ms_turn.parse(unsigned).integrity_offset is None
    assert core.handle_stun(unsigned, ft_of(), EVENTS[SEND]["now"]) == []  # type: ignore[attr-defined]
    forged = bytearray(request(SEND))
    forged[-1] ^= 0x80
    assert core.handle_stun(bytes(forged), ft_of(), EVENTS[SEND]["now"]) == []  # type: ignore[attr-defined]
    assert core.stats(0).packets_to_peer == 0  # type: ignore[attr-defined]
    assert alloc.permissions == {}  # type: ignore[attr-defined]
    assert core.counters.auth_failures == 1  # the forged one (the unsigned one presented none)  # type: ignore[attr-defined]


def test_send_without_allocation_is_dropped() -> None:
    core = SESSION.core()
    assert core.handle_stun(request(SEND), ft_of(), EVENTS[SEND]["now"]) == []
    _no_state(core)


def test_duplicate_sequence_number_send_is_dropped() -> None:
    core, alloc = _after_allocate()
    now = EVENTS[SEND]["now"]
    first = core.handle_stun(request(SEND), ft_of(), now)  # type: ignore[attr-defined]
    assert [type(a) for a in first] == [SendToPeer]
    assert core.handle_stun(request(SEND), ft_of(), now) == []  # type: ignore[attr-defined]
    assert core.stats(now).packets_to_peer == 1  # type: ignore[attr-defined]


def test_send_naming_another_connection_is_dropped() -> None:
    core, alloc = _after_allocate()
    seq = ms_turn.pack_sequence(b"\x55" * 20, 7)
    data = resign(request(SEND), SESSION.key, ms_sequence_number=seq)
    assert core.handle_stun(data, ft_of(), EVENTS[SEND]["now"]) == []  # type: ignore[attr-defined]
    assert alloc.permissions == {}  # type: ignore[attr-defined]


def test_set_active_destination_with_old_sequence_number_gets_400() -> None:
    core = SESSION.core()
    alloc = replay(SESSION, core, upto=SAD + 1)
    assert alloc is not None and alloc.ms is not None
    before = alloc.ms.active_destination
    msg = ms_turn.parse(request(SAD))
    cid, number = ms_turn.unpack_sequence(msg.get(MsAttr.MS_SEQUENCE_NUMBER) or b"")
    elsewhere = ms_turn.pack_address(("10.198.77.2", 9))
    for seq in (
        ms_turn.pack_sequence(cid, number),
        ms_turn.pack_sequence(b"\x00" * 20, number + 1),
    ):
        data = resign(
            request(SAD),
            SESSION.key,
            tid=b"S" * 16,
            ms_sequence_number=seq,
            destination_address=elsewhere,
        )
        (answer,) = sent(core.handle_stun(data, ft_of(), EVENTS[SAD]["now"]))
        assert _error(answer) == (MsType.SET_ACTIVE_DESTINATION_ERROR, 400)
        assert ms_turn.parse(answer).check_integrity(SESSION.key)
    assert alloc.ms.active_destination == before
    # a retransmission of the accepted request gets the same answer again
    assert sent(core.handle_stun(request(SAD), ft_of(), EVENTS[SAD]["now"])) == [
        bytes.fromhex(EVENTS[SAD]["out"][0])
    ]


def test_denied_peer_gets_403_on_set_active_destination_and_no_relay_on_send() -> None:
    core, alloc = _after_allocate(allow_peers=())
    now = EVENTS[SEND]["now"]
    assert core.handle_stun(request(SEND), ft_of(), now) == []  # type: ignore[attr-defined]
    (answer,) = sent(core.handle_stun(request(SAD), ft_of(), now))  # type: ignore[attr-defined]
    assert _error(answer) == (MsType.SET_ACTIVE_DESTINATION_ERROR, 403)
    assert alloc.ms.active_destination is None and alloc.permissions == {}  # type: ignore[attr-defined]
    assert core.counters.peers_denied == 2  # type: ignore[attr-defined]
    assert core.stats(now).packets_to_peer == 0  # type: ignore[attr-defined]


def test_set_active_destination_without_allocation_gets_437() -> None:
    core = SESSION.core()
    (answer,) = sent(core.handle_stun(request(SAD), ft_of(), EVENTS[SAD]["now"]))
    assert _error(answer) == (MsType.SET_ACTIVE_DESTINATION_ERROR, 437)
    _no_state(core)


def test_rfc_allocation_is_not_taken_over_by_ms_turn() -> None:
    core = SESSION.core()
    ft = ft_of()
    # an MS-TURN Allocate on a 5-tuple holding an RFC 8656 allocation: 437
    alloc = replay(SESSION, core, upto=3)
    assert alloc is not None
    alloc.ms = None  # as if RFC 8656 had made it
    nonce = ms_turn.parse(request(ALLOCATE)).get(MsAttr.NONCE)
    data = resign(request(ALLOCATE), SESSION.key, tid=b"Z" * 16, nonce=nonce)
    (answer,) = sent(core.handle_stun(data, ft, EVENTS[3]["now"]))
    assert _error(answer) == (MsType.ALLOCATE_ERROR, 437)


def test_libnice_pseudo_tls_client_hello_is_accepted_and_answered_in_kind() -> None:
    hello = vector("tls/01-client-hello.bin")
    assert ms_turn.pseudo_tls_record_length(hello) == len(hello)
    ms_turn.check_pseudo_tls_client_hello(hello)
    ours = ms_turn.pseudo_tls_server_hello(bytes(32), bytes(32))
    captured = vector("tls/02-server-hello.bin")
    assert len(ours) == len(captured)
    # equal except the random (offset 11) and the session id (offset 44) that nobody reads
    masked = bytearray(captured)
    masked[11:43] = bytes(32)
    masked[44:76] = bytes(32)
    assert bytes(masked) == ours
    framer = ms_turn.MsStreamFramer()
    framer.feed(vector("tls/03-allocate-request-no-credentials.frame"))
    frame = framer.next_frame()
    assert frame is not None and frame[0] == ms_turn.FRAME_CONTROL
    assert ms_turn.parse(frame[1]).msg_type == MsType.ALLOCATE_REQUEST
    real = hello.replace(b"\x00\x02\x00\x18", b"\x00\x02\x13\x01")
    with pytest.raises(DecodeError):
        ms_turn.check_pseudo_tls_client_hello(real)
    with pytest.raises(DecodeError):
        ms_turn.pseudo_tls_record_length(b"\x17\x03\x03\x00\x10")


def test_our_pseudo_tls_client_hello_is_libnices_but_for_the_random() -> None:
    """The lab client's pseudo-TLS opening (``lab.lync.ms_turn_client`` on 443) is the bytes
    libnice sends, its random aside, and the server accepts it."""
    captured = vector("tls/01-client-hello.bin")
    ours = ms_turn.pseudo_tls_client_hello(captured[11:43])
    assert ours == captured
    ms_turn.check_pseudo_tls_client_hello(ms_turn.pseudo_tls_client_hello(bytes(32)))


def test_mutated_libnice_messages_never_raise_nor_relay_forged_data() -> None:
    """h11's fuzz invariant on the MS path: garbage in gives a refusal or nothing, never an
    exception; a mutated Send is never relayed (its integrity no longer holds)."""
    import random

    rng = random.Random(5)
    for index in (0, ALLOCATE, SEND, SAD):
        original = request(index)
        for _ in range(300):
            core = SESSION.core()
            replay(SESSION, core, upto=3)
            data = bytearray(original)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(len(data))]
            actions = core.handle_stun(bytes(data), ft_of(), EVENTS[index]["now"])
            for action in actions:
                if isinstance(action, SendToPeer):
                    # only an intact, validly signed Send may relay (a flip in ignored bytes)
                    assert ms_turn.parse(bytes(data)).check_integrity(SESSION.key)


def test_active_destination_outlives_the_five_minute_permissions() -> None:
    """Media to and from the active destination goes unencapsulated, so no Send refreshes a
    permission for it; it stays relayed while the allocation lives (refreshed here)."""
    core = SESSION.core()
    alloc = replay(SESSION, core, upto=SAD + 1)
    assert alloc is not None and alloc.ms is not None
    peer = alloc.ms.active_destination
    assert peer is not None
    later = EVENTS[SAD]["now"] + core.config.permission_lifetime + 60
    core.handle_timer(later)
    assert not alloc.permitted(peer[0], later)
    nonce = ms_turn.parse(request(ALLOCATE)).get(MsAttr.NONCE)
    refresh = resign(request(ALLOCATE), SESSION.key, tid=b"F" * 16, nonce=nonce)
    (answer,) = sent(core.handle_stun(refresh, ft_of(), later))
    assert ms_turn.parse(answer).msg_type == MsType.ALLOCATE_RESPONSE
    assert core.data_from_peer(alloc, peer, b"\x80rtp", later) == b"\x80rtp"
    assert core.client_data(ft_of(), b"\x80rtp", later) == [SendToPeer(alloc, peer, b"\x80rtp")]
    # other peers lost their permission: nothing from them
    other = (peer[0], peer[1] + 1)
    assert core.data_from_peer(alloc, other, b"x", later) is None
