"""The Microsoft side of the lab in one process: FE, Edge (with its TURN) and clients.

Used by the tests, ``gateway lab`` and the pytest plugin: ``async with MicrosoftSide.run(pki)
as side`` starts the FE and the Edge on their lab addresses (any free port by default) and
``await side.client("alice")`` registers a client to the right one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from certs.pki import LabPKI
from gateway.addresses import HostPort
from lab.lync.client import LyncClient
from lab.lync.config import AvEdgeConfig, ClientConfig, EdgeConfig, FrontEndConfig
from lab.lync.edge import Edge
from lab.lync.fe import FrontEnd
from sip.transport import Transport, TransportAddress

__all__ = ["LAB_USERS", "MicrosoftSide"]

LAB_USERS = {
    "alice": ClientConfig(aor="alice.parkes@example.com", host="127.0.1.10"),
    "david": ClientConfig(aor="david.jones@example.com", host="127.0.5.10",
                          turn_username="david.jones", turn_password="lab-turn"),
}
"""The lab's users: alice internal (via the FE), david external (via the Edge)."""
EXTERNAL = frozenset({"david"})


@dataclass(slots=True)
class MicrosoftSide:
    """A running FE + Edge and the clients started through :meth:`client`."""

    pki: LabPKI
    fe: FrontEnd
    edge: Edge | None
    clients: list[LyncClient] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, pki: LabPKI, *, fe: FrontEndConfig | None = None,
                  edge: EdgeConfig | None = None, with_edge: bool = True,
                  any_port: bool = True) -> AsyncIterator[MicrosoftSide]:
        """Start the FE (and the Edge); stop everything (clients first) on exit."""
        fe_config = fe or FrontEndConfig()
        if any_port:
            fe_config = replace(fe_config, listen=replace(fe_config.listen, port=0))
        front_end = await FrontEnd.start(fe_config, pki)
        side = cls(pki, front_end, None)
        try:
            if with_edge:
                edge_config = edge or EdgeConfig()
                fe_address = TransportAddress(Transport.TLS, front_end.listener.host,
                                              front_end.listener.port)
                edge_config = replace(edge_config, front_end=fe_address)
                if any_port:
                    edge_config = replace(
                        edge_config, listen=replace(edge_config.listen, port=0),
                        extra_ports=(),
                        turn=replace(edge_config.turn or AvEdgeConfig(), port=0, tcp_ports=()))
                side.edge = await Edge.start(edge_config, pki)
                turn = side.edge.turn_address
                if turn is not None:
                    # MRAS hands out the A/V Edge actually running (its ports may be any);
                    # the key is each one's own configuration (the same by default).
                    front_end.config = replace(
                        front_end.config, turn_host=turn[0], turn_udp_port=turn[1],
                        turn_tcp_port=side.edge.turn_tcp_port or turn[1])
            yield side
        finally:
            for client in side.clients:
                await client.close()
            if side.edge is not None:
                await side.edge.stop()
            await front_end.stop()

    def client_config(self, name: str, **changes: object) -> ClientConfig:
        """The lab config of user ``name`` pointed at this FE (or Edge, for external users)."""
        base = LAB_USERS[name]
        if name in EXTERNAL and self.edge is not None:
            listener = self.edge.listener
            turn = self.edge.turn_address
            config = replace(
                base, registrar=TransportAddress(Transport.TLS, listener.host, listener.port),
                registrar_name="edge.example.com",
                turn=HostPort(*turn) if turn else None, stun=HostPort(*turn) if turn else None)
        else:
            listener = self.fe.listener
            config = replace(
                base, registrar=TransportAddress(Transport.TLS, listener.host, listener.port),
                registrar_name="fe.example.com")
        return replace(config, **changes)  # type: ignore[arg-type]

    async def client(self, name: str, **changes: object) -> LyncClient:
        """Start and register user ``name`` (config fields overridable)."""
        client = await LyncClient.start(self.client_config(name, **changes), self.pki)
        self.clients.append(client)
        return client
