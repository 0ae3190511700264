"""The Lync client's media guard (lab.lync.client_media): ICE and media go only to
``ClientConfig.allowed_networks`` (loopback unless configured); other destinations are
refused and logged, never sent to. Real UDP sockets on 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioice.stun import Class, Message, Method

from gateway.cli import main as gateway_main
from gateway.configkit import ConfigError, load_dataclass
from lab.lync.client_media import LOOPBACK, ClientIce, GuardedProtocol, IceServers, networks
from lab.lync.config import ClientConfig

CONFIGS = Path(__file__).resolve().parents[2] / "lab" / "configs"
WAIT = 10.0


def test_allowed_networks_default_to_loopback_and_name_a_bad_item(tmp_path: Path) -> None:
    assert ClientConfig().allowed_networks == ("127.0.0.0/8", "::1/128")
    assert networks(ClientConfig().allowed_networks) == LOOPBACK
    path = tmp_path / "alice.toml"
    path.write_text((CONFIGS / "lync-client-alice.toml").read_text())
    config = load_dataclass(ClientConfig, path, overrides=['allowed_networks=["10.201.0.0/16"]'])
    assert config.allowed_networks == ("10.201.0.0/16",)
    with pytest.raises(ConfigError) as info:
        load_dataclass(ClientConfig, path,
                       overrides=['allowed_networks=["127.0.0.0/8", "10.201.0.1/16"]'])
    assert str(info.value).startswith("allowed_networks[1]: not a network in CIDR form")
    with pytest.raises(ConfigError, match="allowed_networks: empty"):
        load_dataclass(ClientConfig, path, overrides=["allowed_networks=[]"])


def test_check_config_with_set(capsys: pytest.CaptureFixture[str]) -> None:
    alice = str(CONFIGS / "lync-client-alice.toml")
    assert gateway_main(["lync-client", "--check-config", alice,
                         "--set", 'allowed_networks=["172.28.1.0/24"]']) == 0
    assert gateway_main(["lync-client", "--check-config", alice,
                         "--set", 'allowed_networks=["lab"]']) == 1
    assert "allowed_networks[0]" in capsys.readouterr().err


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """Two UDP sockets: one inside 127.0.1.0/24 (allowed), one outside (127.0.9.1)."""
    inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inside.bind(("127.0.1.30", 0))
    outside.bind(("127.0.9.1", 0))
    for sock in (inside, outside):
        sock.setblocking(False)
    yield inside, outside
    inside.close()
    outside.close()


async def test_guard_sends_inside_the_networks_and_refuses_the_rest(
        receivers: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    inside, outside = receivers
    loop = asyncio.get_running_loop()
    ice = ClientIce("127.0.1.10", IceServers(), controlling=True, on_media=lambda d, c: None,
                    allowed=networks(["127.0.1.0/24"]))
    await ice.gather()
    try:
        protocol = ice._protocols[0]
        assert isinstance(protocol, GuardedProtocol)
        request = Message(message_method=Method.BINDING, message_class=Class.REQUEST)
        caplog.set_level(logging.WARNING, "lab.lync.client_media")
        protocol.send_stun(request, inside.getsockname())
        first = await asyncio.wait_for(loop.sock_recv(inside, 2048), WAIT)
        protocol.send_stun(request, outside.getsockname())
        await protocol.send_data(b"\x80" + bytes(20), outside.getsockname())
        await protocol.send_data(b"\x80" + bytes(20), inside.getsockname())
        # Loopback delivers in send order: once the inside socket has the packet sent after
        # the refused ones, anything sent to the outside socket would be there already.
        second = await asyncio.wait_for(loop.sock_recv(inside, 2048), WAIT)
        assert first[:2] == b"\x00\x01" and second[0] == 0x80
        with pytest.raises(BlockingIOError):
            outside.recv(2048)
        assert ice.refused == {outside.getsockname()}
        refusals = [r for r in caplog.records if "refusing to send" in r.getMessage()]
        assert len(refusals) == 1 and "127.0.9.1" in refusals[0].getMessage()
        assert not ice.allows("127.0.2.1") and ice.allows("127.0.1.99")
    finally:
        await ice.close()


async def test_two_agents_connect_inside_the_networks_and_not_outside() -> None:
    got: list[bytes] = []
    inside = networks(["127.0.1.0/24"])
    a = ClientIce("127.0.1.10", IceServers(), controlling=True, on_media=lambda d, c: None,
                  allowed=inside)
    b = ClientIce("127.0.1.11", IceServers(), controlling=False,
                  on_media=lambda d, c: got.append(d), allowed=inside)
    c = ClientIce("127.0.1.12", IceServers(), controlling=False, on_media=lambda d, c: None,
                  allowed=networks(["127.0.9.0/24"]))
    try:
        for agent in (a, b, c):
            await agent.gather()
        await asyncio.gather(
            a.run(b.local_username, b.local_password, b.sdp_candidates, WAIT),
            b.run(a.local_username, a.local_password, a.sdp_candidates, WAIT))
        assert a.pair_type == "host/host"
        assert a.send_media(b"\x80" + bytes(20), 1)
        async with asyncio.timeout(WAIT):
            while not got:
                await asyncio.sleep(0.01)
        # c may reach nothing of a's: every candidate is ignored and ICE fails at once.
        with pytest.raises(ConnectionError):
            await c.run(a.local_username, a.local_password, a.sdp_candidates, WAIT)
    finally:
        for agent in (a, b, c):
            await agent.close()


def bindable(address: tuple[str, int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(address)
        except OSError:
            return False
    return True


@pytest.mark.parametrize("dialect", ["ms-turn", "rfc8656"])
async def test_stream_close_is_prompt_when_the_turn_server_is_gone(dialect: str) -> None:
    # aioice closed the relays one by one, each waiting for its deallocation (MS-TURN:
    # 7.5 s of retransmissions, RFC 8656: 31.5 s); the stream's close gave up after 5 s
    # with the sockets still bound. The client's agent releases them together, bounded, as
    # the gateway's leg does (media.ice_leg.PriorityAgent.close).
    from lab.lync.client_media import MediaStream
    from media.ice_leg import TURN_RELEASE_TIMEOUT
    from tests.lab.test_ms_turn_client import edge_turn, mras, udp_address

    async with edge_turn() as server:
        username, password = mras()
        servers = IceServers(
            turn=udp_address(server), turn_username="static", turn_password="static-pw",
            ms_turn=dialect == "ms-turn", ms_turn_username=username,
            ms_turn_password=password)
        stream = MediaStream("audio", "127.0.0.1", servers, controlling=True,
                             on_packet=lambda: None, rate=50)
        await stream.ice.gather()
        assert sum(c.type == "relay" for c in stream.ice.local_candidates) == 2
        assert server.stats().allocations == 2
    sockets = [p.transport.get_extra_info("sockname")[:2] for p in stream.ice._protocols
               if p not in [r.protocol for r in stream.ice.relays]]
    for relay in stream.ice.relays:  # the sockets toward the TURN server
        turn_client = relay.release.__self__  # type: ignore[attr-defined]
        sockets.append(turn_client.transport.get_extra_info("sockname")[:2])
    assert len(sockets) == 4
    before = asyncio.all_tasks()
    started = time.monotonic()
    await stream.close()
    took = time.monotonic() - started
    assert took < TURN_RELEASE_TIMEOUT + 1.0, f"close took {took:.1f} s"
    assert all(bindable(address) for address in sockets), "a socket stayed bound"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() <= before, asyncio.all_tasks() - before
