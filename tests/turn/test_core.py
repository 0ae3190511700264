"""Sans-IO tests of TurnCore: every deadline is driven by hand, no sockets, no sleeping."""

from __future__ import annotations

import logging
import os
import struct

import pytest
from aioice import stun as aioice_stun

from turn import stun
from turn.allocation import (
    AttachData,
    CloseConnection,
    CloseRelay,
    ConnectPeer,
    FiveTuple,
    OpenRelay,
    SendToClient,
    SendToPeer,
    Transport,
)
from turn.auth import Authenticator, long_term_key, rest_password
from turn.config import TurnConfig
from turn.core import TurnCore
from turn.stun import Attr, Class, Method

REALM = "example.com"
USER, PASSWORD = "GatewayB2BUA", "secret"
SERVER = ("127.0.4.1", 3478)
PEER = ("127.0.0.1", 5000)


def make_core(**overrides: object) -> TurnCore:
    settings: dict[str, object] = dict(
        realm=REALM,
        users=((USER, PASSWORD), ("other", "pw")),
        relay_ports=(24000, 24099),
        allow_peers=("127.0.0.0/8",),
        listen="127.0.4.1",
    )
    settings.update(overrides)
    return TurnCore(TurnConfig(**settings))  # type: ignore[arg-type]


def ft(port: int = 40000, transport: Transport = Transport.UDP) -> FiveTuple:
    return FiveTuple(transport, ("127.0.0.1", port), SERVER)


class Client:
    """Builds requests for one 5-tuple and reads the core's answers."""

    def __init__(
        self, core: TurnCore, five_tuple: FiveTuple, user: str = USER, password: str = PASSWORD
    ):
        self.core = core
        self.ft = five_tuple
        self.user = user
        self.key = long_term_key(user, REALM, password)
        self.nonce: bytes | None = None

    def request(
        self,
        method: Method,
        attrs: list[tuple[int, bytes]] | None = None,
        *,
        now: float = 0.0,
        auth: bool = True,
        tid: bytes | None = None,
    ) -> list[object]:
        tid = tid or os.urandom(12)
        attrs = list(attrs or [])
        if auth:
            if self.nonce is None:
                self.nonce = self.core.auth.make_nonce(now)
            attrs += [
                (Attr.USERNAME, self.user.encode()),
                (Attr.REALM, REALM.encode()),
                (Attr.NONCE, self.nonce),
            ]
        data = stun.encode(method, Class.REQUEST, tid, attrs, key=self.key if auth else None)
        return self.core.handle_stun(data, self.ft, now)

    def response(self, actions: list[object]) -> stun.StunMessage:
        sends = [a for a in actions if isinstance(a, SendToClient)]
        assert len(sends) == 1, actions
        return stun.parse(sends[0].data)

    def allocate(
        self,
        attrs: list[tuple[int, bytes]] | None = None,
        *,
        now: float = 0.0,
        transport: int = stun.TRANSPORT_UDP,
        tid: bytes | None = None,
    ) -> stun.StunMessage:
        base = [(Attr.REQUESTED_TRANSPORT, bytes([transport, 0, 0, 0]))]
        actions = self.request(Method.ALLOCATE, base + list(attrs or []), now=now, tid=tid)
        opens = [a for a in actions if isinstance(a, OpenRelay)]
        if opens:
            actions = self.core.relay_opened(opens[0].allocation, now)
        return self.response(actions)

    def peer_attr(self, peer: tuple[str, int], tid: bytes) -> tuple[int, bytes]:
        return (Attr.XOR_PEER_ADDRESS, stun.pack_xor_address(peer, tid))

    def permit(self, peer: tuple[str, int], now: float = 0.0) -> stun.StunMessage:
        tid = os.urandom(12)
        return self.response(
            self.request(Method.CREATE_PERMISSION, [self.peer_attr(peer, tid)], now=now, tid=tid)
        )

    def channel_bind(
        self, number: int, peer: tuple[str, int], now: float = 0.0
    ) -> stun.StunMessage:
        tid = os.urandom(12)
        attrs = [(Attr.CHANNEL_NUMBER, struct.pack("!HH", number, 0)), self.peer_attr(peer, tid)]
        return self.response(self.request(Method.CHANNEL_BIND, attrs, now=now, tid=tid))


def error_code(msg: stun.StunMessage) -> int | None:
    value = msg.get(Attr.ERROR_CODE)
    return None if value is None else stun.unpack_error_code(value)[0]


def relayed(msg: stun.StunMessage) -> tuple[str, int]:
    value = msg.get(Attr.XOR_RELAYED_ADDRESS)
    assert value is not None, msg
    return stun.unpack_xor_address(value, msg.transaction_id)


# -- binding and authentication -------------------------------------------------------------


def test_binding_gives_xor_mapped_address_without_auth() -> None:
    core = make_core()
    c = Client(core, ft(40001))
    msg = c.response(c.request(Method.BINDING, auth=False))
    assert msg.cls == Class.RESPONSE
    assert stun.unpack_xor_address(msg.get(Attr.XOR_MAPPED_ADDRESS) or b"", msg.transaction_id) == (
        "127.0.0.1",
        40001,
    )


def test_no_credentials_401_with_realm_and_nonce() -> None:
    core = make_core()
    c = Client(core, ft())
    msg = c.response(
        c.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")], auth=False)
    )
    assert error_code(msg) == 401
    assert msg.get(Attr.REALM) == REALM.encode()
    nonce = msg.get(Attr.NONCE)
    assert nonce and core.auth.nonce_valid(nonce, 0.0)
    assert not core.allocations


def test_wrong_password_401_logs_username_not_password(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core()
    c = Client(core, ft(), password="letmein-wrong")
    with caplog.at_level(logging.WARNING, logger="turn.core"):
        msg = c.allocate()
    assert error_code(msg) == 401
    assert USER in caplog.text and "letmein-wrong" not in caplog.text
    assert core.stats(0).auth_failures == 1 and not core.allocations


def test_unknown_user_401() -> None:
    c = Client(make_core(), ft(), user="mallory")
    assert error_code(c.allocate()) == 401


def test_nonce_goes_stale_438_then_fresh_nonce_works() -> None:
    core = make_core(nonce_lifetime=600)
    c = Client(core, ft())
    c.nonce = core.auth.make_nonce(0.0)
    msg = c.allocate(now=600.0)
    assert error_code(msg) == 438
    assert msg.get(Attr.REALM) == REALM.encode()
    c.nonce = msg.get(Attr.NONCE)
    assert c.allocate(now=600.0).cls == Class.RESPONSE


def test_forged_nonce_is_stale() -> None:
    core = make_core()
    c = Client(core, ft())
    c.nonce = b"ffffffff-000000000000"
    assert error_code(c.allocate()) == 438


def test_rest_secret_credentials_and_expiry() -> None:
    wall = [1_000_000.0]
    auth = Authenticator(realm=REALM, users={}, secret="s3cr3t", wall_clock=lambda: wall[0])
    core = TurnCore(
        TurnConfig(realm=REALM, relay_ports=(24000, 24099), auth_secret="s3cr3t"),
        authenticator=auth,
    )
    user = "1000600:alice"
    c = Client(core, ft(), user=user, password=rest_password("s3cr3t", user))
    assert c.allocate().cls == Class.RESPONSE
    wall[0] = 1_000_601.0  # the username's expiry has passed
    late = Client(core, ft(40002), user=user, password=rest_password("s3cr3t", user))
    assert error_code(late.allocate()) == 401


def test_integrity_without_username_is_400() -> None:
    core = make_core()
    data = stun.encode(
        Method.ALLOCATE,
        Class.REQUEST,
        os.urandom(12),
        [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")],
        key=b"k" * 16,
    )
    msg = stun.parse(core.handle_stun(data, ft(), 0.0)[0].data)  # type: ignore[attr-defined]
    assert error_code(msg) == 400


# -- allocations ----------------------------------------------------------------------------


def test_allocate_success_and_signed_response() -> None:
    core = make_core()
    c = Client(core, ft(40005))
    msg = c.allocate()
    assert msg.cls == Class.RESPONSE and msg.check_integrity(c.key)
    host, port = relayed(msg)
    assert host == "127.0.4.1" and 24000 <= port <= 24099
    assert stun.unpack_u32(msg.get(Attr.LIFETIME) or b"") == 600
    mapped = stun.unpack_xor_address(msg.get(Attr.XOR_MAPPED_ADDRESS) or b"", msg.transaction_id)
    assert mapped == ("127.0.0.1", 40005)
    assert core.stats(0).allocations == 1 and core.stats(0).clients == 1


def test_aioice_accepts_allocate_response() -> None:
    core = make_core()
    c = Client(core, ft())
    msg = c.allocate()
    parsed = aioice_stun.parse_message(msg.raw)
    assert parsed.check_message_integrity(c.key)
    assert parsed.attributes["XOR-RELAYED-ADDRESS"] == relayed(msg)


def test_lifetime_capped_at_3600() -> None:
    c = Client(make_core(), ft())
    msg = c.allocate([(Attr.LIFETIME, stun.pack_u32(100_000))])
    assert stun.unpack_u32(msg.get(Attr.LIFETIME) or b"") == 3600


def test_allocation_expires_at_its_lifetime() -> None:
    core = make_core()
    c = Client(core, ft())
    c.allocate([(Attr.LIFETIME, stun.pack_u32(1200))], now=100.0)
    assert core.get_timer() is not None and core.get_timer() <= 1300.0  # type: ignore[operator]
    assert core.handle_timer(1299.9) == []
    actions = core.handle_timer(1300.0)
    assert any(isinstance(a, CloseRelay) for a in actions)
    assert not core.allocations and core.pool.available == core.pool.size


@pytest.mark.parametrize("requested", [1, 60, 599])
def test_lifetime_below_the_default_is_raised_to_600(requested: int) -> None:
    """Issue 12: LIFETIME 1 was granted as 1 s. RFC 8656 §7.2/§7.3 (and coturn): a lifetime
    under the default gets the default, on Allocate and on Refresh."""
    core = make_core()
    c = Client(core, ft())
    msg = c.allocate([(Attr.LIFETIME, stun.pack_u32(requested))], now=100.0)
    assert stun.unpack_u32(msg.get(Attr.LIFETIME) or b"") == 600
    assert core.handle_timer(100.0 + requested) == [] and core.allocations
    refresh = c.response(c.request(Method.REFRESH, [(Attr.LIFETIME, stun.pack_u32(requested))],
                                   now=200.0))
    assert stun.unpack_u32(refresh.get(Attr.LIFETIME) or b"") == 600
    assert core.handle_timer(799.9) == [] and core.allocations
    assert any(isinstance(a, CloseRelay) for a in core.handle_timer(800.0))


def test_refresh_extends_and_zero_deletes() -> None:
    core = make_core()
    c = Client(core, ft())
    c.allocate([(Attr.LIFETIME, stun.pack_u32(60))])
    msg = c.response(c.request(Method.REFRESH, [(Attr.LIFETIME, stun.pack_u32(1200))], now=50.0))
    assert stun.unpack_u32(msg.get(Attr.LIFETIME) or b"") == 1200
    assert core.handle_timer(700.0) == [] and core.allocations
    actions = c.request(Method.REFRESH, [(Attr.LIFETIME, stun.pack_u32(0))], now=70.0)
    assert any(isinstance(a, CloseRelay) for a in actions)
    assert stun.unpack_u32(c.response(actions).get(Attr.LIFETIME) or b"") == 0
    assert not core.allocations
    assert error_code(c.response(c.request(Method.REFRESH, now=71.0))) == 437


def test_second_allocate_on_5tuple_437_but_retransmission_repeats_response() -> None:
    core = make_core()
    c = Client(core, ft())
    tid = os.urandom(12)
    first = c.allocate(tid=tid)
    again = c.response(
        c.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")], tid=tid)
    )
    assert again.raw == first.raw
    assert error_code(c.allocate()) == 437


def test_user_quota_486_and_total_quota_486() -> None:
    core = make_core(user_quota=1, total_quota=2)
    assert Client(core, ft(40001)).allocate().cls == Class.RESPONSE
    assert error_code(Client(core, ft(40002)).allocate()) == 486
    assert Client(core, ft(40003), "other", "pw").allocate().cls == Class.RESPONSE
    core2 = make_core(user_quota=5, total_quota=2)
    for port in (40001, 40002):
        assert Client(core2, ft(port)).allocate().cls == Class.RESPONSE
    assert error_code(Client(core2, ft(40003)).allocate()) == 486


def test_relay_range_exhausted_508() -> None:
    core = make_core(relay_ports=(24000, 24001))
    assert Client(core, ft(40001)).allocate().cls == Class.RESPONSE
    assert Client(core, ft(40002)).allocate().cls == Class.RESPONSE
    assert error_code(Client(core, ft(40003)).allocate()) == 508


def test_relay_bind_failure_retries_another_port_then_508() -> None:
    core = make_core(relay_ports=(24000, 24002))
    c = Client(core, ft())
    actions = c.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")])
    alloc = actions[0].allocation  # type: ignore[attr-defined]
    first = alloc.relay_port
    actions = core.relay_failed(alloc, 0.0)
    assert isinstance(actions[0], OpenRelay) and alloc.relay_port != first
    core.relay_failed(alloc, 0.0)
    actions = core.relay_failed(alloc, 0.0)  # all three ports tried
    assert error_code(c.response(actions)) == 508 and not core.allocations


def test_bad_requests_400() -> None:
    core = make_core()
    c = Client(core, ft())
    assert error_code(c.response(c.request(Method.ALLOCATE, []))) == 400  # no REQUESTED-TRANSPORT
    assert error_code(c.allocate(transport=stun.TRANSPORT_TCP)) == 400  # TCP relay over UDP
    assert error_code(c.allocate(transport=50)) == 442
    both = [(Attr.EVEN_PORT, b"\x80"), (Attr.RESERVATION_TOKEN, b"12345678")]
    assert error_code(c.allocate(both)) == 400
    assert c.allocate().cls == Class.RESPONSE
    bad_channel = c.response(c.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x40\x00")]))
    assert error_code(bad_channel) == 400


def test_unknown_comprehension_required_attribute_420() -> None:
    c = Client(make_core(), ft())
    msg = c.response(
        c.request(
            Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), (0x0077, b"\0\0\0\0")]
        )
    )
    assert error_code(msg) == 420
    assert msg.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x00\x77"


def test_garbage_is_dropped_and_malformed_request_gets_400() -> None:
    core = make_core()
    for junk in (b"", b"\x00", os.urandom(19), b"\x01\x01" + os.urandom(30), b"\xff" * 40):
        assert core.handle_stun(junk, ft(), 0.0) == []
    tid = os.urandom(12)
    truncated = struct.pack("!HHI12s", 0x0003, 8, stun.COOKIE, tid) + b"\x00\x19\x00\x10abcd"
    msg = stun.parse(core.handle_stun(truncated, ft(), 0.0)[0].data)  # type: ignore[attr-defined]
    assert error_code(msg) == 400 and msg.transaction_id == tid


def test_even_port_reservation_token() -> None:
    core = make_core()
    first = Client(core, ft(40001)).allocate([(Attr.EVEN_PORT, b"\x80")])
    port = relayed(first)[1]
    token = first.get(Attr.RESERVATION_TOKEN)
    assert port % 2 == 0 and token is not None and len(token) == 8
    second = Client(core, ft(40002)).allocate([(Attr.RESERVATION_TOKEN, token)], now=10.0)
    assert relayed(second)[1] == port + 1
    # A token is good once, and only for 30 seconds.
    assert (
        error_code(Client(core, ft(40003)).allocate([(Attr.RESERVATION_TOKEN, token)], now=11.0))
        == 508
    )
    third = Client(core, ft(40004)).allocate([(Attr.EVEN_PORT, b"\x80")], now=20.0)
    token3 = third.get(Attr.RESERVATION_TOKEN)
    core.handle_timer(51.0)
    assert token3 is not None
    assert (
        error_code(Client(core, ft(40005)).allocate([(Attr.RESERVATION_TOKEN, token3)], now=51.0))
        == 508
    )
    assert core.pool.take_specific(relayed(third)[1] + 1)  # released back to the pool


def test_dont_fragment_accepted() -> None:
    assert Client(make_core(), ft()).allocate([(Attr.DONT_FRAGMENT, b"")]).cls == Class.RESPONSE


# -- peers, permissions, channels -----------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "169.254.1.1",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "172.16.5.4",
    ],
)
def test_denied_peers_403_without_allow(host: str) -> None:
    core = make_core(allow_peers=())
    c = Client(core, ft())
    c.allocate()
    assert error_code(c.permit((host, 5000))) == 403
    assert core.stats(0).peers_denied == 1
    assert error_code(c.channel_bind(0x4001, (host, 5000))) == 403


def test_allow_peer_exempts_loopback_including_mapped_form() -> None:
    core = make_core(allow_peers=("127.0.0.0/8",))
    c = Client(core, ft())
    c.allocate()
    assert c.permit(("127.0.0.1", 5000)).cls == Class.RESPONSE
    # Allowed by policy, but an IPv6 peer on an IPv4 relay is a family mismatch.
    assert error_code(c.permit(("::ffff:127.0.0.1", 5000))) == 443
    assert error_code(c.permit(("10.0.0.1", 5000))) == 403


def test_public_peer_allowed_by_default() -> None:
    c = Client(make_core(allow_peers=()), ft())
    c.allocate()
    assert c.permit(("198.51.100.7", 5000)).cls == Class.RESPONSE


def test_permission_expires_after_300s() -> None:
    core = make_core()
    c = Client(core, ft())
    alloc_msg = c.allocate()
    assert alloc_msg.cls == Class.RESPONSE
    alloc = core.allocations[c.ft]
    assert core.data_from_peer(alloc, PEER, b"x", 1.0) is None  # no permission yet
    c.permit(PEER, now=0.0)
    out = core.data_from_peer(alloc, ("127.0.0.1", 9999), b"hello", 299.0)  # any port of the IP
    assert out is not None
    ind = aioice_stun.parse_message(out)
    assert ind.message_method == aioice_stun.Method.DATA
    assert ind.attributes["DATA"] == b"hello" and ind.attributes["XOR-PEER-ADDRESS"] == (
        "127.0.0.1",
        9999,
    )
    core.handle_timer(300.0)
    assert core.data_from_peer(alloc, PEER, b"x", 300.0) is None
    assert core.stats(300.0).permissions == 0


def test_send_indication_needs_permission() -> None:
    core = make_core()
    c = Client(core, ft())
    c.allocate()
    tid = os.urandom(12)
    send = stun.encode(
        Method.SEND, Class.INDICATION, tid, [c.peer_attr(PEER, tid), (Attr.DATA, b"abc")]
    )
    assert core.handle_stun(send, c.ft, 1.0) == []
    c.permit(PEER)
    [action] = core.handle_stun(send, c.ft, 1.0)
    assert isinstance(action, SendToPeer) and action.peer == PEER and action.data == b"abc"


def test_channel_bind_relays_and_expires_after_600s() -> None:
    core = make_core()
    c = Client(core, ft(transport=Transport.TCP))
    c.allocate()
    assert c.channel_bind(0x4000, PEER, now=0.0).cls == Class.RESPONSE
    frame = struct.pack("!HH", 0x4000, 3) + b"abc"
    alloc, peer, payload = core.channel_data_from_client(c.ft, frame, 1.0)  # type: ignore[misc]
    assert peer == PEER and payload == b"abc"
    # Peer -> client uses the channel, padded to 4 bytes on a stream transport.
    assert core.data_from_peer(alloc, PEER, b"xyz", 2.0) == struct.pack("!HH", 0x4000, 3) + b"xyz\0"
    # With the allocation and permission refreshed, data flows by indication once the
    # channel has expired.
    c.request(Method.REFRESH, now=550.0)
    c.permit(PEER, now=550.0)
    core.handle_timer(600.0)
    assert core.channel_data_from_client(c.ft, frame, 600.0) is None
    out = core.data_from_peer(alloc, PEER, b"xyz", 600.0)
    assert (
        out is not None and aioice_stun.parse_message(out).message_method == aioice_stun.Method.DATA
    )
    assert core.stats(600.0).channels == 0


def test_channel_rules() -> None:
    core = make_core()
    c = Client(core, ft())
    c.allocate()
    assert c.channel_bind(0x4000, PEER).cls == Class.RESPONSE
    assert c.channel_bind(0x4000, PEER).cls == Class.RESPONSE  # refresh
    assert error_code(c.channel_bind(0x4000, ("127.0.0.1", 5001))) == 400  # other peer
    assert error_code(c.channel_bind(0x4001, PEER)) == 400  # peer already bound
    assert error_code(c.channel_bind(0x3FFF, ("127.0.0.1", 5002))) == 400
    strict = make_core(legacy_channels=False)
    s = Client(strict, ft())
    s.allocate()
    assert error_code(s.channel_bind(0x5000, PEER)) == 400
    assert c.channel_bind(0x7FFF, ("127.0.0.1", 5003)).cls == Class.RESPONSE  # RFC 5766 range


def test_other_user_cannot_touch_allocation_441() -> None:
    core = make_core()
    Client(core, ft()).allocate()
    intruder = Client(core, ft(), "other", "pw")
    assert error_code(intruder.response(intruder.request(Method.REFRESH))) == 441


# -- RFC 6062 -------------------------------------------------------------------------------


def test_tcp_allocation_connect_and_connection_bind() -> None:
    core = make_core()
    control = Client(core, ft(41000, Transport.TCP))
    assert control.allocate(transport=stun.TRANSPORT_TCP).cls == Class.RESPONSE
    tid = os.urandom(12)
    [connect] = control.request(Method.CONNECT, [control.peer_attr(PEER, tid)], tid=tid)
    assert isinstance(connect, ConnectPeer) and connect.peer == PEER
    again = control.response(
        control.request(Method.CONNECT, [control.peer_attr(PEER, tid)], tid=tid)
    )
    assert error_code(again) == 446
    ok = control.response(core.peer_connected(connect.connection_id, 1.0))
    assert ok.transaction_id == tid and ok.check_integrity(control.key)
    cid = stun.unpack_u32(ok.get(Attr.CONNECTION_ID) or b"")
    data_conn = Client(core, ft(41001, Transport.TCP))
    actions = data_conn.request(
        Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, stun.pack_u32(cid))], now=2.0
    )
    assert data_conn.response(actions).cls == Class.RESPONSE
    assert any(isinstance(a, AttachData) and a.connection_id == cid for a in actions)
    # Closing the control connection deletes the allocation and its peer connections.
    actions = core.connection_lost(control.ft, 3.0)
    assert any(isinstance(a, CloseConnection) for a in actions)
    assert any(isinstance(a, CloseRelay) for a in actions)
    assert not core.connections


def test_incoming_peer_needs_permission_and_bind_deadline() -> None:
    core = make_core(connect_timeout=30.0)
    control = Client(core, ft(41000, Transport.TCP))
    control.allocate(transport=stun.TRANSPORT_TCP)
    alloc = core.allocations[control.ft]
    assert core.peer_connection_incoming(alloc, PEER, 1.0) == (None, [])
    control.permit(PEER, now=1.0)
    cid, actions = core.peer_connection_incoming(alloc, PEER, 2.0)
    attempt = control.response(actions)
    assert attempt.method == Method.CONNECTION_ATTEMPT and attempt.cls == Class.INDICATION
    assert stun.unpack_u32(attempt.get(Attr.CONNECTION_ID) or b"") == cid
    actions = core.handle_timer(32.0)  # no ConnectionBind within 30 s
    assert CloseConnection(cid) in actions and cid not in core.connections  # type: ignore[arg-type]


def test_connect_failure_447() -> None:
    core = make_core()
    control = Client(core, ft(41000, Transport.TCP))
    control.allocate(transport=stun.TRANSPORT_TCP)
    tid = os.urandom(12)
    [connect] = control.request(Method.CONNECT, [control.peer_attr(PEER, tid)], tid=tid)
    assert error_code(control.response(core.peer_connect_failed(connect.connection_id, 1.0))) == 447  # type: ignore[attr-defined]


def test_close_all_deletes_everything() -> None:
    core = make_core()
    for port in (40001, 40002):
        Client(core, ft(port)).allocate()
    actions = core.close_all()
    assert sum(isinstance(a, CloseRelay) for a in actions) == 2 and not core.allocations


# -- fuzz: bytes from the network give answers or nothing, never an exception ---------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ_CORE = make_core()


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([m.value for m in Method] + [0x0FF]),
    cls=st.sampled_from(list(Class)),
    attrs=st.lists(
        st.tuples(
            st.sampled_from([a.value for a in Attr] + [0x7777, 0xC001]), st.binary(max_size=24)
        ),
        max_size=6,
    ),
    transport=st.sampled_from(list(Transport)),
)
def test_fuzz_core_never_raises(
    method: int, cls: Class, attrs: list[tuple[int, bytes]], transport: Transport
) -> None:
    data = stun.encode(method, cls, os.urandom(12), attrs, fingerprint=False)
    actions = _FUZZ_CORE.handle_stun(data, ft(40100, transport), 0.0)
    for action in actions:
        if isinstance(action, SendToClient):
            stun.parse(action.data)  # every answer is itself well formed
    assert _FUZZ_CORE.channel_data_from_client(ft(40100, transport), data, 0.0) is None
