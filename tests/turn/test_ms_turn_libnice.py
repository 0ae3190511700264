"""The real-peer proof of MS-TURN: libnice (pidgin-sipe's ICE) in its OC2007R2 mode allocates
on our TURN server with MRAS credentials, ICE selects its relay candidate and data flows both
ways through our relay.

libnice ignores loopback interfaces, so the agents run in a network namespace of their own
(``lab.netns.VethHost`` without its lab-loopback routing) and the server listens on the
veth's other end. The peer is the system ``/usr/bin/python3`` with Debian's PyGObject and
``gir1.2-nice-0.1`` (``scripts/install-peers.sh``), not the venv.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.netns import NetnsError, VethHost
from tests.media.libnice import SYSTEM_PYTHON, why_not
from tests.peers.procs import random_free_port
from turn.auth import mras_credentials
from turn.config import TurnConfig
from turn.server import TurnServer

from .helpers import relay_range

PEER = Path(__file__).parent.parent / "peers" / "libnice_msturn_peer.py"


@dataclass(frozen=True)
class Veth:
    namespace: str
    server_ip: str
    client_ip: str


@pytest.fixture
def veth() -> Iterator[Veth]:
    reason = why_not()
    if reason:
        pytest.skip(f"libnice MS-TURN test skipped: {reason}")
    host = VethHost.unique(lab_loopback=False)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(host)
        except NetnsError as error:
            pytest.skip(f"libnice MS-TURN test skipped: cannot make network namespaces here: "
                        f"{error}")
        yield Veth(host.namespace, host.outer, host.address)
    assert not host.exists()


async def _server(veth: Veth, secret: str) -> TurnServer:
    config = TurnConfig(
        listen=veth.server_ip,
        ports=(0, 0),
        relay_ports=relay_range(),
        ms_turn_secret=secret,
        allow_peers=(str(ipaddress.ip_network(f"{veth.server_ip}/24", strict=False)),),
    )
    server = TurnServer(config)
    await server.start()
    return server


async def _peer(veth: Veth, port: int, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", veth.namespace, SYSTEM_PYTHON, str(PEER),
        "--turn", veth.server_ip, "--port", str(port), *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture
async def running(veth: Veth) -> AsyncIterator[tuple[Veth, TurnServer, str]]:
    secret = secrets.token_urlsafe(16)
    server = await _server(veth, secret)
    try:
        yield veth, server, secret
    finally:
        await server.stop()


async def test_libnice_oc2007r2_relays_through_our_ms_turn_over_udp(
    running: tuple[Veth, TurnServer, str],
) -> None:
    veth, server, secret = running
    port = server.addresses[0][2]
    creds = mras_credentials(secret, "david@example.com", time.time())
    packets = 20
    proc = await _peer(
        veth, port, "--username", creds.username, "--password", creds.password,
        "--packets", str(packets), "--timeout", "40",
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()[-2000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, report
    low, high = server.config.relay_ports
    (relay,) = report["ms_candidates"]
    host, _, relay_port = relay.removeprefix("relay/").rpartition(":")
    assert host == veth.server_ip and low <= int(relay_port) <= high
    assert report["ms_pair"]["local"] == relay  # ICE selected the relay candidate
    assert report["far_pair"]["remote"] == relay
    assert report["far_received"] == packets and report["ms_received"] == packets
    stats = server.stats()
    assert stats.packets_to_peer >= packets and stats.packets_to_client >= packets
    assert stats.auth_failures == 0
    # libnice released its allocation on close (Allocate with LIFETIME 0)
    assert report["released"] and stats.allocations == 0


@pytest.mark.parametrize("relay_type", ["tcp", "tls"])
async def test_libnice_allocates_over_ms_turn_tcp_framing(
    running: tuple[Veth, TurnServer, str], relay_type: str
) -> None:
    """TCP, and pseudo-TLS (what pidgin-sipe asks libnice for on the Edge's port 443)."""
    veth, server, secret = running
    port = server.addresses[0][2]
    creds = mras_credentials(secret, "david@example.com", time.time())
    proc = await _peer(
        veth, port, "--relay-type", relay_type, "--gather-only",
        "--username", creds.username, "--password", creds.password, "--timeout", "30",
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 45)
        assert line, (await proc.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
        report = json.loads(line)
        relays = [c for c in report["ms_candidates"] if c.startswith(f"relay/{veth.server_ip}:")]
        assert relays, report
        stats = server.stats()
        assert stats.allocations == 1 and stats.auth_failures == 0
        (alloc,) = server.core.allocations.values()
        assert alloc.ms is not None and alloc.five_tuple.transport.name == "TCP"
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    # the control connection closed (or libnice deleted it): nothing is left
    for _ in range(200):
        if server.stats().allocations == 0:
            break
        await asyncio.sleep(0.05)
    assert server.stats().allocations == 0


@pytest.mark.parametrize("relay_type", ["tcp", "tls"])
async def test_libnice_oc2007r2_relays_through_our_ms_turn_over_tcp(
    running: tuple[Veth, TurnServer, str], relay_type: str
) -> None:
    """Over TCP (and pseudo-TLS) libnice gets a TCP relayed address ([MS-TURN]: the relay
    has the transport of the Allocate), offers it as TCP-ACT / TCP-PASS relay candidates and
    sends RFC 4571-framed ICE-TCP inside Send requests and 0x03 data frames; the server
    connects from the relayed address to the far side's TCP-PASS candidate (or accepts its
    TCP-ACT connection) and relays the byte streams both ways, with no loss."""
    veth, server, secret = running
    port = server.addresses[0][2]
    creds = mras_credentials(secret, "david@example.com", time.time())
    packets = 50
    proc = await _peer(
        veth, port, "--relay-type", relay_type,
        "--username", creds.username, "--password", creds.password,
        "--packets", str(packets), "--timeout", "40",
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()[-2000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, (report, err.decode()[-3000:])
    low, high = server.config.relay_ports
    relays = [c for c in report["ms_candidates"] if c.startswith("relay/")]
    assert relays, report
    for relay in relays:
        host, _, relay_port = relay.removeprefix("relay/").rpartition(":")
        assert host == veth.server_ip and low <= int(relay_port) <= high
    pair = report["ms_pair"]
    assert pair["local"] in relays and pair["local_transport"] in ("tcp-act", "tcp-pass"), pair
    assert report["far_pair"]["remote_transport"].startswith("tcp"), report
    assert report["far_received"] == packets and report["ms_received"] == packets
    stats = server.stats()
    # A byte stream: the peer's reads coalesce packets, so count bytes (each packet is
    # 14 bytes plus its RFC 4571 length).
    assert stats.bytes_to_peer >= packets * 16 and stats.bytes_to_client >= packets * 16
    assert stats.auth_failures == 0
    assert report["released"]
    for _ in range(200):  # released by libnice, or with its control connection
        if server.stats().allocations == 0 and not server._ms_streams:
            break
        await asyncio.sleep(0.05)
    assert server.stats().allocations == 0 and not server._ms_streams


async def test_expired_mras_credentials_gather_no_relay(
    running: tuple[Veth, TurnServer, str],
) -> None:
    veth, server, secret = running
    port = server.addresses[0][2]
    creds = mras_credentials(secret, "david@example.com", time.time() - 9 * 3600)
    proc = await _peer(
        veth, port, "--username", creds.username, "--password", creds.password,
        "--timeout", "20",
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 45)
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 1
    assert not any(c.startswith("relay/") for c in report.get("ms_candidates", [])), report
    stats = server.stats()
    assert stats.allocations == 0 and stats.auth_failures >= 1 and stats.packets_to_peer == 0


async def test_libnice_with_pidgin_sipes_relay_set_udp_and_tls_443(veth: Veth) -> None:
    """The relays pidgin-sipe hands libnice for an A/V Edge: UDP 3478 and "tls" on TCP 443
    (here a free port in tcp_ports), ICE-TCP on. Both allocations are made; ICE selects the
    UDP relay and media flows both ways."""
    secret = secrets.token_urlsafe(16)
    tls_port = random_free_port(veth.server_ip, socket.SOCK_STREAM)
    config = TurnConfig(
        listen=veth.server_ip,
        ports=(0, 0),
        tcp_ports=(tls_port,),
        relay_ports=relay_range(),
        ms_turn_secret=secret,
        allow_peers=(str(ipaddress.ip_network(f"{veth.server_ip}/24", strict=False)),),
    )
    async with TurnServer(config) as server:
        port = server.addresses[0][2]
        creds = mras_credentials(secret, "david@example.com", time.time())
        proc = await _peer(
            veth, port, "--sipe-tls-port", str(tls_port),
            "--username", creds.username, "--password", creds.password, "--timeout", "40",
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert out, err.decode()[-2000:]
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert proc.returncode == 0, report
        relays = [c for c in report["ms_candidates"] if c.startswith("relay/")]
        assert len(relays) >= 2, report  # the UDP relay and the one allocated over TLS
        assert report["ms_pair"]["local"].startswith(f"relay/{veth.server_ip}:")
        assert report["far_received"] == report["ms_received"] == report["sent_each_way"]
        assert server.stats().auth_failures == 0
