"""The multi-homed Lync Edge: connections to the FE leave from its internal leg
(``internal_source``), not from the external listen address, or from the kernel's choice."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from certs.pki import LabPKI
from gateway.configkit import ConfigError
from lab.lync.config import EdgeConfig
from lab.lync.topology import MicrosoftSide
from sip.transport import Transport, TransportAddress

EXTERNAL_LEG = "127.0.1.2"


@pytest.mark.parametrize("internal_source", ["127.0.1.12", ""])
async def test_edge_reaches_the_fe_from_its_internal_leg(pki: LabPKI, internal_source: str
                                                         ) -> None:
    config = replace(EdgeConfig(), internal_source=internal_source,
                     listen=TransportAddress(Transport.TLS, EXTERNAL_LEG, 5061))
    async with MicrosoftSide.run(pki, edge=config) as side:
        await side.client("david")
        (binding,) = side.fe.lookup("david.jones@example.com")
        connection = side.fe.stack.transports.connection(binding.hop.connection_id or -1)
        assert connection is not None and connection.remote is not None
        assert "edge.example.com" in connection.peer_names
        # Registered through the Edge, from the internal leg (or the route's own address).
        expected = internal_source or "127.0.0.1"
        assert connection.remote.host == expected != EXTERNAL_LEG


def test_internal_source_must_be_an_address() -> None:
    with pytest.raises(ConfigError, match="internal_source"):
        EdgeConfig(internal_source="edge.internal")
    assert EdgeConfig(internal_source="").source_host is None
    assert EdgeConfig().source_host == "127.0.1.2"


@pytest.mark.parametrize("caller", ["alice", "david"])
async def test_two_legged_edge_record_routes_each_side(pki: LabPKI, caller: str) -> None:
    """One Record-Route per leg: david sees the external listener first, the FE the address
    of the Edge's own connection to it, so in-dialog requests from the inside (ACK, BYE)
    reach david over that connection, never toward the external address."""
    config = replace(EdgeConfig(), internal_source="127.0.1.12",
                     listen=TransportAddress(Transport.TLS, EXTERNAL_LEG, 5061))
    async with MicrosoftSide.run(pki, edge=config) as side:
        alice = await side.client("alice")
        david = await side.client("david", relay_only=True)
        assert side.edge is not None
        external = side.edge.listener
        if caller == "alice":
            call = await alice.call("david.jones@example.com")
            callee = await asyncio.wait_for(david.incoming_calls.get(), 10)
        else:
            call = await david.call("alice.parkes@example.com")
            callee = await asyncio.wait_for(alice.incoming_calls.get(), 10)
        await call.wait_connected()
        await call.wait_media(both_ways=True, min_packets=10)
        david_call = call if caller == "david" else callee
        assert david_call.dialog is not None
        routes = [a.uri for a in david_call.dialog.route_set]
        edge_entries = [u for u in routes if u.host in (EXTERNAL_LEG, "127.0.1.12")]
        # david's route set starts at the external listener, then the internal leg's flow.
        assert [u.host for u in edge_entries] == [EXTERNAL_LEG, "127.0.1.12"], routes
        assert (edge_entries[0].port or 5061) == external.port
        # The inside hangs up: the BYE crosses FE and Edge to david.
        inside = call if caller == "alice" else callee
        outside = callee if caller == "alice" else call
        await inside.hangup()
        await asyncio.wait_for(outside.ended.wait(), 10)
        assert outside.result == "BYE from peer"
        # The FE reached the Edge only over the Edge's own connection.
        to_listener = [c for c in side.fe.stack.transports.connections()
                       if c.outbound and c.remote is not None
                       and c.remote.host in (EXTERNAL_LEG, "127.0.1.12")]
        assert not to_listener, to_listener
