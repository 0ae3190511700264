"""The Microsoft leg: host candidates only on the configured address and pool ports, srflx
and relay from the project's TURN server, no packet to anything outside 127.0.0.0/8."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from media.ice_leg import IceLeg, IceSettings, TurnServerSettings, _networks, address_allowed
from media.ms_dialect import Candidate, CandidateTransport, CandidateType
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

HOST = "127.0.2.1"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def free_pair() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        port -= port % 2
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair")


async def test_gathers_host_on_media_address_and_pool_ports_srflx_and_relay() -> None:
    async with running_server() as turn:
        server = ("127.0.0.1", server_port(turn))
        port, turn_port = free_pair(), free_pair()
        leg = IceLeg(HOST, port, IceSettings(
            stun_server=server, turn_servers=(TurnServerSettings(server, USER, PASSWORD),)),
            ufrag="abcd", pwd="a" * 24, turn_ports=[turn_port])
        try:
            await leg.gather()
            cands = leg.local_candidates
            hosts = {(c.address, c.port, c.component) for c in cands
                     if c.type is CandidateType.HOST}
            assert hosts == {(HOST, port, 1), (HOST, port + 1, 2)}
            assert {c.type for c in cands} == {CandidateType.HOST, CandidateType.SRFLX,
                                               CandidateType.RELAY}
            relays = [c for c in cands if c.type is CandidateType.RELAY]
            # The TURN connections come from the pool pair: TURN saw them as related addresses.
            assert {(c.related_address, c.related_port) for c in relays} == {
                (HOST, turn_port), (HOST, turn_port + 1)}
            assert all(ipaddress.ip_address(c.address) in LOOPBACK for c in cands)
            assert turn.stats().allocations == 2
        finally:
            await leg.close()
        assert turn.stats().allocations == 0


async def test_remote_candidates_outside_loopback_are_never_used() -> None:
    leg = IceLeg(HOST, free_pair(), IceSettings(connect_timeout=0.5), ufrag="abcd",
                 pwd="b" * 24)
    await leg.gather()
    outside = Candidate("1", 1, CandidateTransport.UDP, 2130706431, "192.0.2.7", 5000,
                        CandidateType.HOST)
    inside = Candidate("2", 1, CandidateTransport.UDP, 2130706430, "127.0.0.1", 9,
                       CandidateType.HOST)
    tcp = Candidate("3", 1, CandidateTransport.TCP_PASS, 2130706429, "127.0.0.1", 10,
                    CandidateType.HOST)
    try:
        with pytest.raises((ConnectionError, TimeoutError)):
            await leg.connect("wxyz", "c" * 24, [outside, inside, tcp], controlling=True)
        assert [c.host for c in leg.agent.remote_candidates] == ["127.0.0.1"]
        assert leg.destinations == {("127.0.0.1", 9)}
        assert not leg.guard(("192.0.2.7", 5000)) and ("192.0.2.7", 5000) in leg.refused
        assert not leg.send(b"\x80" * 12, 1)  # not connected
    finally:
        await leg.close()


async def test_failed_bind_leaves_nothing_bound() -> None:
    port = free_pair()
    squat = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squat.bind((HOST, port + 1))
    leg = IceLeg(HOST, port, IceSettings(), ufrag="abcd", pwd="d" * 24)
    try:
        with pytest.raises(OSError):
            await leg.gather()
    finally:
        squat.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((HOST, port))
    await leg.close()


def test_address_allowed_answers_stay_right_when_remembered() -> None:
    loopback = _networks(["127.0.0.0/8", "::1/128"])
    assert _networks(("127.0.0.0/8", "::1/128")) is loopback  # parsed once per configuration
    lab = _networks(["10.201.0.0/16"])
    for _ in range(2):  # the second round answers from the memo
        assert address_allowed("127.0.0.9", loopback) and address_allowed("::1", loopback)
        assert not address_allowed("10.201.3.4", loopback)
        assert address_allowed("10.201.3.4", lab) and not address_allowed("127.0.0.9", lab)
        assert not address_allowed("not-an-address", loopback)
        assert not address_allowed("127.0.0.1", ())
