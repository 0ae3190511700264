"""The lab's A/V Edge in MS-TURN mode: the FE's MRAS answers name the running A/V Edge and
hand out time-limited credentials the Edge accepts; the external client (david) allocates
there with MS-TURN like a real client, media crosses the relay, allocations are released;
the per-client standard TURN setting still works."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from certs.pki import LabPKI
from gateway.configkit import ConfigError, load_dataclass
from lab.lync.client_media import ClientIce
from lab.lync.config import AvEdgeConfig, ClientConfig, EdgeConfig, FrontEndConfig
from lab.lync.edge import Edge
from lab.lync.mras import MrasError, parse_answer
from lab.lync.topology import MicrosoftSide
from sip.transport import Transport, TransportAddress
from tests.lab.test_lync_edge import call_across_the_edge
from tests.peers.procs import random_free_port
from turn.allocation import TurnStats
from turn.ms_turn import long_term_key
from turn.server import TurnServer

if TYPE_CHECKING:
    from lab.endpoint.agent import Endpoint
    from lab.lync.client import LyncClient
    from lab.topology import Lab


async def released(turn: TurnServer) -> TurnStats:
    async def zero() -> TurnStats:
        while (stats := turn.stats()).allocations:
            await asyncio.sleep(0.05)
        return stats
    return await asyncio.wait_for(zero(), 10)


async def test_mras_answer_names_the_av_edge_with_credentials_it_accepts(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki) as side:
        david = await side.client("david")
        assert side.edge is not None and side.edge.turn is not None
        assert david.remote_user  # signed in through the Access Edge
        answer = david.media_relay
        assert answer is not None
        (relay,) = answer.relays
        udp = side.edge.turn_address
        assert udp is not None and (relay.host, relay.udp_port) == udp
        assert relay.tcp_port == side.edge.turn_tcp_port
        assert answer.duration == 480  # minutes: what sipe asks for, the 8-hour cap
        username = base64.b64decode(answer.username)
        expiry, _, identity = username.partition(b":")
        assert identity == b"david.jones@example.com"  # the signed-in user
        assert abs(int(expiry) - (time.time() + 480 * 60)) < 60
        # The password is the Edge's to check: its MS-TURN key for these bytes exists
        # (the FE and Edge share the MRAS key by configuration) and matches the password.
        auth = side.edge.turn.core.auth
        key = auth.ms_key_for(username, b"example.com")
        assert key is not None
        assert key == long_term_key(username, b"example.com",
                                    base64.b64decode(answer.password))
        # A username changed (a later expiry) no longer goes with the password.
        forged = b"9" + username
        assert auth.ms_key_for(forged, b"example.com") != long_term_key(
            forged, b"example.com", base64.b64decode(answer.password))


def test_mras_answer_parsing_refuses_what_it_cannot_use() -> None:
    with pytest.raises(MrasError, match="not XML"):
        parse_answer(b"<nope")
    with pytest.raises(MrasError, match="no credentials"):
        parse_answer(b'<response xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"'
                     b' reasonPhrase="Forbidden"/>')


@pytest.mark.parametrize("direction", ["external-calls", "internal-calls"])
async def test_external_client_relays_through_ms_turn_and_releases(
        pki: LabPKI, direction: str) -> None:
    async with MicrosoftSide.run(pki) as side:
        assert side.edge is not None and side.edge.turn is not None
        turn = side.edge.turn
        placed = await call_across_the_edge(side, direction)
        david, call, incoming, external = (
            placed.david, placed.call, placed.incoming, placed.external)
        assert external.ice_pair is not None and external.ice_pair.startswith("relay/")
        # Every allocation on the Edge is an MS-TURN one (david's); none standard.
        allocations = list(turn.core.allocations.values())
        assert allocations and all(a.ms is not None for a in allocations)
        # The chosen peers became active destinations: media travels unencapsulated.
        assert any(a.ms is not None and a.ms.active_destination is not None
                   for a in allocations)
        stats = turn.stats()
        assert stats.packets_to_peer >= 20 and stats.packets_to_client >= 20
        await call.hangup()
        await asyncio.wait_for(incoming.ended.wait(), 5)
        await david.close()
        side.clients.remove(david)
        assert (await released(turn)).allocations == 0


async def test_standard_turn_setting_still_relays(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki) as side:
        assert side.edge is not None and side.edge.turn is not None
        alice = await side.client("alice")
        david = await side.client("david", relay_only=True, turn_dialect="rfc8656")
        assert david.media_relay is None
        call = await david.call("alice.parkes@example.com")
        incoming = await asyncio.wait_for(alice.incoming_calls.get(), 10)
        report = await call.wait_media(both_ways=True, min_packets=20)
        assert report.ice_pair is not None and report.ice_pair.startswith("relay/")
        allocations = list(side.edge.turn.core.allocations.values())
        assert allocations and all(a.ms is None for a in allocations)
        await call.hangup()
        await asyncio.wait_for(incoming.ended.wait(), 5)


async def test_mras_credentials_under_another_key_get_no_relay(pki: LabPKI) -> None:
    edge = replace(EdgeConfig(), turn=replace(AvEdgeConfig(), mras_secret="not-the-fe-key"))
    async with MicrosoftSide.run(pki, edge=edge) as side:
        assert side.edge is not None and side.edge.turn is not None
        david = await side.client("david")
        assert david.media_relay is not None  # MRAS answered, but the Edge refuses it
        ice = ClientIce(david.config.host, david.ice_servers, controlling=True,
                        on_media=lambda data, component: None, allowed=david.allowed_networks)
        try:
            await ice.gather()
            assert [c.type for c in ice.local_candidates if c.type == "relay"] == []
        finally:
            await ice.close()
        stats = side.edge.turn.stats()
        assert stats.allocations == 0 and stats.auth_failures >= 2


async def test_demo_external_row_relays_through_ms_turn_to_the_gateway(
        lab: Lab, lync_client: Callable[..., Awaitable[LyncClient]],
        sip_endpoint: Endpoint) -> None:
    """The demo's "external Lync via Edge and TURN -> endpoint" row, whole lab: david's
    media reaches the gateway only through his MS-TURN allocation on the A/V Edge."""
    assert lab.microsoft is not None and lab.microsoft.edge is not None
    turn = lab.microsoft.edge.turn
    assert turn is not None
    david = await lync_client("david")
    call = await david.call("3001@video.example.com")
    await call.wait_connected()
    answered = await sip_endpoint.next_call()
    assert (await answered.wait_media(both_ways=True)).packets_received >= 10
    media = await call.wait_media(both_ways=True)
    assert media.ice_pair is not None and media.ice_pair.startswith("relay/")
    allocations = list(turn.core.allocations.values())
    assert allocations and all(a.ms is not None for a in allocations)
    stats = turn.stats()
    assert stats.packets_to_peer >= 10 and stats.packets_to_client >= 10
    await call.hangup()
    await david.close()
    assert (await released(turn)).allocations == 0


async def test_av_edge_tcp_443_busy_falls_back_with_a_warning(
        pki: LabPKI, caplog: pytest.LogCaptureFixture) -> None:
    """The A/V Edge's extra TCP port (443) is served where it can be bound; taken (by the
    Access Edge's own TLS 443 on the same address, or anything else), the Edge warns and MRAS
    names its main TURN port for TCP instead."""
    av_host = AvEdgeConfig().listen
    busy = socket.socket()
    busy.bind((av_host, 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        config = replace(EdgeConfig(), listen=TransportAddress(Transport.TLS, "127.0.1.2", 0),
                         extra_ports=(), turn=replace(AvEdgeConfig(), port=0, tcp_ports=(port,)))
        with caplog.at_level(logging.WARNING, logger="lab.lync.edge"):
            edge = await Edge.start(config, pki)
        try:
            assert edge.turn is not None and edge.turn_address is not None
            assert f"TCP ports {port} not bound" in caplog.text
            assert edge.turn_tcp_port == edge.turn_address[1]
        finally:
            await edge.stop()
        extra = random_free_port(av_host, socket.SOCK_STREAM)
        edge = await Edge.start(replace(config, turn=replace(config.turn, tcp_ports=(extra,))),
                                pki)
        try:
            assert edge.turn is not None
            assert extra in [p for t, _, p in edge.turn.addresses if t == "tcp"]
            assert edge.turn_tcp_port == extra  # what MRAS then names for TCP
        finally:
            await edge.stop()
    finally:
        busy.close()


def test_shipped_configs_share_the_mras_key_and_name_the_dialects() -> None:
    """lync-fe.toml and lync-edge.toml carry the same MRAS key (shared by configuration, as
    a real FE and Edge share it); david is configured for MS-TURN; bad values name the key."""
    configs = Path(__file__).resolve().parents[2] / "lab" / "configs"
    fe = load_dataclass(FrontEndConfig, configs / "lync-fe.toml")
    edge = load_dataclass(EdgeConfig, configs / "lync-edge.toml")
    david = load_dataclass(ClientConfig, configs / "lync-client-david.toml")
    assert fe.mras_secret and fe.mras_secret == edge.turn.mras_secret
    assert edge.turn.tcp_ports == (443,) and fe.turn_tcp_port == 443
    assert (fe.turn_host, fe.turn_udp_port) == (edge.turn.listen, edge.turn.port)
    assert david.turn_dialect == "ms-turn"
    with pytest.raises(ConfigError, match="turn_dialect"):
        load_dataclass(ClientConfig, configs / "lync-client-david.toml",
                       overrides=["turn_dialect=stun"])
    with pytest.raises(ConfigError, match="max_lifetime"):
        load_dataclass(EdgeConfig, configs / "lync-edge.toml",
                       overrides=["turn.max_lifetime=0"])


async def test_access_and_av_edge_each_have_their_443_on_their_own_address(
        pki: LabPKI) -> None:
    """As a real Edge: the Access Edge (TLS) and the A/V Edge (MS-TURN over TCP) each serve
    the same port (443 in the lab) on an address of their own, and MRAS names it."""
    default = EdgeConfig()
    assert default.turn.listen == "127.0.1.3" != default.listen.host == "127.0.1.2"
    assert FrontEndConfig().turn_host == default.turn.listen
    for _ in range(20):  # a port free on both addresses
        port = random_free_port("127.0.1.2", socket.SOCK_STREAM)
        probe = socket.socket()
        try:
            probe.bind(("127.0.1.3", port))
            break
        except OSError:
            continue
        finally:
            probe.close()
    config = replace(default, listen=TransportAddress(Transport.TLS, "127.0.1.2", 0),
                     extra_ports=(port,),
                     turn=replace(default.turn, port=0, tcp_ports=(port,)))
    edge = await Edge.start(config, pki)
    try:
        assert any(a.host == "127.0.1.2" and a.port == port for a in edge.stack.listeners)
        assert edge.turn is not None
        assert ("tcp", "127.0.1.3", port) in edge.turn.addresses
        assert edge.turn_tcp_port == port
    finally:
        await edge.stop()


async def test_access_edge_keeps_its_tcp_port_on_a_shared_address(
        pki: LabPKI, caplog: pytest.LogCaptureFixture) -> None:
    """An Edge configured with one address for both roles: a port the Access Edge serves
    (its TLS 443) is left to it without a warning, and MRAS names the A/V Edge's main TCP
    port."""
    port = random_free_port("127.0.1.2", socket.SOCK_STREAM)
    config = replace(EdgeConfig(), listen=TransportAddress(Transport.TLS, "127.0.1.2", 0),
                     extra_ports=(port,), turn=replace(AvEdgeConfig(), listen="127.0.1.2", port=0,
                                                       tcp_ports=(port,)))
    with caplog.at_level(logging.INFO, logger="lab.lync.edge"):
        edge = await Edge.start(config, pki)
    try:
        assert any(a.port == port for a in edge.stack.listeners)  # the Access Edge's
        assert edge.turn is not None and edge.turn_address is not None
        assert port not in [p for _, _, p in edge.turn.addresses]
        assert edge.turn_tcp_port == edge.turn_address[1]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert f"TCP {port} is the Access Edge's" in caplog.text
    finally:
        await edge.stop()
