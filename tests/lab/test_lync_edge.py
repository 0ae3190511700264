"""The simulated Lync Edge on loopback: an external client registers through the Access
Edge (the FE sees the Edge's certificate), calls cross the Edge both ways with relay
candidates from the A/V Edge TURN server, and a busy 443 is skipped with a warning."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from certs.pki import LabPKI
from lab.api import MediaReport
from lab.lync.client import LyncCall, LyncClient
from lab.lync.config import EdgeConfig
from lab.lync.edge import Edge
from lab.lync.topology import MicrosoftSide
from sip.transport import Transport, TransportAddress

CONFIGS = Path(__file__).resolve().parents[2] / "lab" / "configs"


async def test_external_client_registers_through_the_access_edge(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki) as side:
        await side.client("david")
        (binding,) = side.fe.lookup("david.jones@example.com")
        assert binding.contact.host == "127.0.5.10"
        assert side.edge is not None
        connection = side.fe.stack.transports.connection(binding.hop.connection_id or -1)
        assert connection is not None and "edge.example.com" in connection.peer_names


@dataclass
class EdgeCall:
    """A call between alice (internal) and david (external, relay only), media flowing."""

    david: LyncClient
    call: LyncCall
    """The caller's side."""
    incoming: LyncCall
    """The callee's side."""
    external: MediaReport
    """david's media."""
    internal: MediaReport
    """alice's media."""


async def call_across_the_edge(side: MicrosoftSide, direction: str,
                               **david: object) -> EdgeCall:
    """david calls alice ("external-calls") or alice calls david ("internal-calls"); returns
    once the call is connected with 20 packets each way on both sides."""
    alice = await side.client("alice")
    outside = await side.client("david", relay_only=True, **david)
    caller, callee, target = (
        (outside, alice, "alice.parkes@example.com") if direction == "external-calls"
        else (alice, outside, "david.jones@example.com"))
    call = await caller.call(target)
    incoming = await asyncio.wait_for(callee.incoming_calls.get(), 10)
    await call.wait_connected()
    report = await call.wait_media(both_ways=True, min_packets=20)
    other = await incoming.wait_media(both_ways=True, min_packets=20)
    external, internal = (report, other) if caller is outside else (other, report)
    return EdgeCall(outside, call, incoming, external, internal)


@pytest.mark.parametrize("direction", ["external-calls", "internal-calls"])
async def test_call_across_the_edge_relays_media_through_av_edge_turn(
        pki: LabPKI, direction: str) -> None:
    async with MicrosoftSide.run(pki) as side:
        placed = await call_across_the_edge(side, direction)
        call, incoming, external, internal = (
            placed.call, placed.incoming, placed.external, placed.internal)
        assert external.ice_pair is not None and external.ice_pair.startswith("relay/")
        assert internal.ice_pair is not None and internal.ice_pair.endswith("/relay")
        assert side.edge is not None and side.edge.turn is not None
        assert side.edge.turn.stats().allocations >= 2
        # In-dialog requests cross the Edge too (BYE along the Record-Route).
        await call.hangup()
        await asyncio.wait_for(incoming.ended.wait(), 5)
        assert incoming.result == "BYE from peer"


async def test_busy_extra_port_is_skipped_with_a_warning(
        pki: LabPKI, caplog: pytest.LogCaptureFixture) -> None:
    busy = socket.socket()
    busy.bind(("127.0.1.2", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        config = replace(EdgeConfig(), listen=TransportAddress(Transport.TLS, "127.0.1.2", 0),
                         extra_ports=(port,), turn=replace(EdgeConfig().turn, enabled=False))
        with caplog.at_level(logging.WARNING, logger="lab.lync.edge"):
            edge = await Edge.start(config, pki)
        try:
            assert len(edge.stack.listeners) == 1
            assert f"TLS port {port} not bound" in caplog.text
        finally:
            await edge.stop()
    finally:
        busy.close()


def test_edge_config_checks() -> None:
    from lab.lync.cli import edge_main

    assert edge_main(["--check-config", str(CONFIGS / "lync-edge.toml")]) == 0
    assert edge_main(["--check-config", str(CONFIGS / "lync-edge.toml"),
                      "--set", "turn.relay_ports=60000-50000"]) == 1
