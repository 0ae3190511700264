"""The whole lab topology in one process for the end-to-end tests, with the knobs the
failure cases need (gateway config overrides, the FE's trusted application pools, the A/V
Edge's allowed peers, the DMZ TURN on or off), plus a wire recorder on any SIP stack.

Roles are the real ones (lab.lync FrontEnd / Edge / LyncClient, lab.cisco Cucm, lab.endpoint
Endpoint, lab.cisco Imp, turn.server TurnServer, gateway.runtime Gateway) on their lab
addresses (docs/lab-topology.md) with free ports, because other suites run alongside. Only
the gateway's own listeners need a port before start (the FE's static route and the CUCM
trunk point at them); those are picked free just before binding.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from certs.pki import LabPKI
from gateway.config import loads
from gateway.runtime import Gateway, RuntimeOptions
from lab.cisco.config import CucmConfig, ImpConfig, TrunkConfig
from lab.cisco.cucm import Cucm
from lab.cisco.imp import Imp
from lab.endpoint import Endpoint, EndpointConfig, ListenSpec, SipTarget
from lab.lync.client import LyncClient
from lab.lync.config import AvEdgeConfig, EdgeConfig, FrontEndConfig, StaticRoute
from lab.lync.topology import MicrosoftSide
from sip.message import Request, Response
from sip.stack import SipStack
from sip.timers import TimerSettings
from sip.transport import Transport, TransportAddress
from tests.gateway.lab_routing import LAB_SEARCH_RULES
from tests.peers.procs import random_free_port, random_free_udp_range
from turn.config import TurnConfig
from turn.server import TurnServer

GATEWAY_HOST = "127.0.2.1"
GATEWAY_NAME = "lyncexp.video.example.com"
CUCM_HOST = "127.0.3.1"
IMP_HOST = "127.0.3.2"
DMZ_TURN_HOST = "127.0.4.1"
ENDPOINT_HOSTS = {"3001": "127.0.3.11", "3002": "127.0.3.12"}
TURN_USER, TURN_PASSWORD = "GatewayB2BUA", "lab-dmz-turn"
FAST = TimerSettings(t1=0.1, t2=0.4, t4=0.4, timer_d=0.4)
MS_ONLY_SDP = (b"a=candidate", b"a=x-", b"a=ice-")
"""SDP attributes the video side must never see (SPEC: Microsoft-only)."""


# -- wire recording -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One SIP message as a stack sent or received it."""

    sent: bool
    message: Request | Response
    data: bytes


@dataclass(eq=False)
class Wire:
    """A :class:`sip.stack.MessageObserver` that keeps every message of one stack."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, sent: bool, message: Request | Response, local: TransportAddress,
                 remote: TransportAddress, data: bytes) -> None:
        self.seen.append(Seen(sent, message, data))
        self._changed.set()

    @classmethod
    def on(cls, stack: SipStack, name: str) -> Wire:
        """Record ``stack`` from now on (it must have no observer of its own)."""
        assert stack.observer is None, f"{name} already has an observer"
        wire = cls(name)
        stack.observer = wire
        return wire

    def received(self, method: str, call_id: str | None = None) -> list[Request]:
        return [s.message for s in self.seen if not s.sent and isinstance(s.message, Request)
                and s.message.method == method
                and (call_id is None or s.message.call_id == call_id)]

    def responses(self, status: int, *, sent: bool = False) -> list[Response]:
        return [s.message for s in self.seen if s.sent is sent
                and isinstance(s.message, Response) and s.message.status == status]

    async def wait_received(self, method: str, call_id: str | None = None,
                            timeout: float = 10.0) -> Request:
        """The first ``method`` request received (for ``call_id``), waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                found = self.received(method, call_id)
                if found:
                    return found[0]
                await self._changed.wait()

    def microsoft_only(self) -> list[str]:
        """What of the Microsoft dialect reached this stack: multipart bodies and
        Microsoft-only SDP attributes, one line per finding (empty when clean)."""
        found = []
        for seen in self.seen:
            message = seen.message
            content_type = (message.content_type or "").lower()
            what = (message.method if isinstance(message, Request)
                    else f"{message.status} response")
            if content_type.startswith("multipart"):
                found.append(f"{self.name}: multipart body in {what}")
            for line in (message.body or b"").splitlines():
                if line.startswith(MS_ONLY_SDP):
                    found.append(f"{self.name}: {line.decode(errors='replace')} in {what}")
        return found


# -- the topology -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Knobs:
    """What a failure case changes in the lab."""

    max_calls: int = 10
    """b2bua.max_calls."""
    media_ports: int = 200
    """Size of b2bua.media_ports (a free range of this many ports is picked)."""
    encryption: str = "required"
    """b2bua.encryption."""
    trust_fe: bool = True
    """The FE (127.0.1.1) is in b2bua.trusted_hosts."""
    fe_trusted_applications: tuple[str, ...] | None = None
    """The FE's trusted application pools (None: the lab's, which name the gateway)."""
    edge_allow_peers: tuple[str, ...] = ("127.0.0.0/8",)
    """Peers the A/V Edge relays may reach."""
    dmz_turn: bool = True
    """Run the DMZ TURN and have the gateway offer relay candidates from it."""
    ice_timeout: float = 8.0
    """RuntimeOptions.ice_timeout (gateway ICE toward Microsoft)."""
    monitor_interval: float | None = None
    """Zone OPTIONS interval override."""
    broker: bool = True
    """Run the IM&P node and enable the gateway's SIP broker toward it."""
    endpoints: tuple[str, ...] = ("3001", "3002")
    """Which lab endpoints to start."""
    david_relay_only: bool = True
    """The external client offers only relay candidates (strict firewall)."""


def gateway_toml(pki: LabPKI, knobs: Knobs, *, ms_port: int, video_port: int,
                 fe: TransportAddress, cucm_port: int, imp_port: int | None,
                 turn: tuple[str, int] | None) -> str:
    media = random_free_udp_range(GATEWAY_HOST, knobs.media_ports)
    outbound = random.randrange(20000, 60000, 100)
    trusted = (f'trusted_hosts = [{{ name = "fe01", address = "{fe.host}", '
               f'type = "microsoft" }}]' if knobs.trust_fe
               else 'trusted_hosts = [{ name = "other", address = "127.0.1.99" }]')
    turn_lines = ""
    if turn is not None:
        turn_lines = (f'offer_turn = true\nturn_servers = [{{ address = "{turn[0]}", '
                      f'port = {turn[1]}, username = "{TURN_USER}", '
                      f'password = "{TURN_PASSWORD}" }}]')
    broker = ""
    if imp_port is not None:
        broker = (f'[b2bua.broker]\nenabled = true\ndestinations = ["{IMP_HOST}"]\n'
                  f"port = {imp_port}\n")
    return f"""
[system]
host_name = "exp01"
domain = "video.example.com"
cluster_fqdn = "{GATEWAY_NAME}"
certs = "{pki.directory}"
outbound_ports = "{outbound}-{outbound + 99}"
drain_timeout = 2.0

[b2bua]
listen = "tls:{GATEWAY_HOST}:{ms_port}"
ms_destination = "tls:{fe.host}:{fe.port}"
encryption = "{knobs.encryption}"
max_calls = {knobs.max_calls}
media_ports = "{media[0]}-{media[1]}"
{trusted}
{turn_lines}

{broker}
[video]
listen = ["tcp:{GATEWAY_HOST}:{video_port}"]

[[zones]]
name = "CUCM Neighbor"
peers = ["{CUCM_HOST}"]
port = {cucm_port}
transport = "tcp"

{LAB_SEARCH_RULES}"""


@dataclass(eq=False)
class E2eLab:
    """A running topology: the Microsoft side, the gateway, CUCM, endpoints, IM&P, TURN."""

    pki: LabPKI
    knobs: Knobs
    ms: MicrosoftSide
    gateway: Gateway
    cucm: Cucm
    endpoints: dict[str, Endpoint]
    imp: Imp | None
    dmz_turn: TurnServer | None
    wires: dict[str, Wire] = field(default_factory=dict)
    """Recorders by role name: "cucm", "3001", "alice" ..."""

    async def client(self, name: str, **changes: Any) -> LyncClient:
        """Start and register a Lync client (``alice`` internal, ``david`` external), its
        stack recorded in ``wires[name]``."""
        if name == "david":
            changes.setdefault("relay_only", self.knobs.david_relay_only)
        changes.setdefault("ice_timeout", 20.0)
        client = await self.ms.client(name, **changes)
        self.wires[name] = Wire.on(client.agent.stack, name)
        return client

    def video_side_leaks(self) -> list[str]:
        """Microsoft-only content seen by CUCM or any endpoint."""
        return [line for name in ("cucm", *self.endpoints)
                for line in self.wires[name].microsoft_only()]

    async def idle(self, timeout: float = 10.0) -> None:
        """Until the gateway has no call and every media port is back."""
        async with asyncio.timeout(timeout):
            while self.gateway.calls or self.gateway.pool.ports_in_use:
                self.gateway.controller.call_ended.clear()
                if not self.gateway.calls:
                    await asyncio.sleep(0.05)  # ports come back just after the last call
                    continue
                await self.gateway.controller.call_ended.wait()


@contextlib.asynccontextmanager
async def e2e_lab(pki: LabPKI, knobs: Knobs = Knobs()) -> AsyncIterator[E2eLab]:
    """Start the whole topology (see the module doc); stop it all on exit."""
    async with contextlib.AsyncExitStack() as stack:
        ms_port = random_free_port(GATEWAY_HOST, socket.SOCK_STREAM)
        video_port = random_free_port(GATEWAY_HOST, socket.SOCK_STREAM)
        route = StaticRoute("video.example.com",
                            TransportAddress(Transport.TLS, GATEWAY_HOST, ms_port), GATEWAY_NAME)
        fe_config = FrontEndConfig(static_routes=(route,), t1=0.1)
        if knobs.fe_trusted_applications is not None:
            fe_config = replace(fe_config, trusted_applications=knobs.fe_trusted_applications)
        edge_config = EdgeConfig(t1=0.1, turn=AvEdgeConfig(allow_peers=knobs.edge_allow_peers))
        ms = await stack.enter_async_context(
            MicrosoftSide.run(pki, fe=fe_config, edge=edge_config))

        dmz: TurnServer | None = None
        turn_address: tuple[str, int] | None = None
        if knobs.dmz_turn:
            dmz = TurnServer(TurnConfig(listen=DMZ_TURN_HOST, ports=(0, 0),
                                        relay_ports=random_free_udp_range(DMZ_TURN_HOST, 40),
                                        users=((TURN_USER, TURN_PASSWORD),),
                                        allow_peers=("127.0.0.0/8",)))
            await dmz.start()
            stack.push_async_callback(dmz.stop)
            turn_address = next((h, p) for t, h, p in dmz.addresses if t == "udp")

        cucm = await Cucm.start(CucmConfig(
            listen=(f"tcp:{CUCM_HOST}:0",), certs=str(pki.directory), t1=0.1,
            trunk=TrunkConfig(destination=f"tcp:{GATEWAY_HOST}:{video_port}")))
        stack.push_async_callback(cucm.close)
        cucm_listener = cucm.stack.listener(Transport.TCP)
        assert cucm_listener is not None

        imp: Imp | None = None
        if knobs.broker:
            imp = await Imp.start(ImpConfig(listen=(f"tls:{IMP_HOST}:0",),
                                            certs=str(pki.directory), t1=0.1))
            stack.push_async_callback(imp.close)

        imp_port = None
        if imp is not None:
            imp_listener = imp.stack.listener(Transport.TLS)
            assert imp_listener is not None
            imp_port = imp_listener.port
        text = gateway_toml(pki, knobs, ms_port=ms_port, video_port=video_port,
                            fe=ms.fe.listener, cucm_port=cucm_listener.port,
                            imp_port=imp_port, turn=turn_address)
        gateway = Gateway(loads(text), RuntimeOptions(
            timers=FAST, pki=pki, ice_timeout=knobs.ice_timeout, management=False,
            ms_server_name="fe.example.com", monitor_interval=knobs.monitor_interval))
        await gateway.start()
        stack.push_async_callback(gateway.close)

        lab = E2eLab(pki, knobs, ms, gateway, cucm, {}, imp, dmz)
        lab.wires["cucm"] = Wire.on(cucm.stack, "cucm")
        registrar = SipTarget(Transport.TCP, CUCM_HOST, cucm_listener.port)
        for user in knobs.endpoints:
            endpoint = await Endpoint.start(EndpointConfig(
                aor=f"{user}@video.example.com",
                listen=(ListenSpec(Transport.TCP, ENDPOINT_HOSTS[user], 0),),
                certs=pki.directory, registrar=registrar, timers=FAST))
            stack.push_async_callback(endpoint.close)
            lab.endpoints[user] = endpoint
            lab.wires[user] = Wire.on(endpoint.stack, user)
        yield lab
