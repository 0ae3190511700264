"""The multi-homed Lync Edge: connections to the FE leave from its internal leg
(``internal_source``), not from the external listen address, or from the kernel's choice."""

from __future__ import annotations

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
