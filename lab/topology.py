"""The whole lab in one process: DMZ TURN, gateway, Lync FE + Edge, Unified CM, IM&P, SIP
endpoints 3001/3002 and the Lync clients alice (internal) and david (external).

``async with Lab(pki) as lab:`` starts every role on its lab address (docs/lab-topology.md)
and stops them in reverse order. With ``any_port=True`` every listener takes a free port
and the resolved ports are wired into the roles that point at each other, so several labs
(and other tests) share the machine. Each role reports its progress through ``progress``.

Wiring in ``any_port`` mode: the gateway needs the FE, CUCM, IM&P and TURN ports, and the
FE and CUCM need the gateway's; FE / CUCM / IM&P / TURN start first, the gateway with their
ports, then the FE's static route and CUCM's trunk are pointed at the gateway's ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certs.pki import LabPKI, init_pki
from gateway.config import GatewayConfig, from_mapping
from gateway.configkit import read_toml
from gateway.run import DEFAULT_CONFIG
from lab.hosts import HOSTS
from sip.transport import Transport, TransportAddress

if TYPE_CHECKING:
    from gateway.runtime import Gateway
    from gateway.status import GatewayStatus
    from lab.cisco.cucm import Cucm
    from lab.cisco.imp import Imp
    from lab.endpoint.agent import Endpoint
    from lab.endpoint.handle import EndpointCall
    from lab.lync.client import LyncCall, LyncClient
    from lab.lync.config import EdgeConfig
    from lab.lync.topology import MicrosoftSide
    from sip.message import Response
    from turn.server import TurnServer

__all__ = [
    "ENDPOINTS",
    "GATEWAY_TURN_PASSWORD",
    "GATEWAY_TURN_USER",
    "Lab",
    "LabStatus",
    "ProgressCallback",
    "RoleEvent",
    "RoleState",
    "RoleStatus",
    "ROLES",
]

logger = logging.getLogger(__name__)

GATEWAY_HOST = HOSTS["exp01.video.example.com"]
CUCM_HOST = HOSTS["cucm.video.example.com"]
IMP_HOST = HOSTS["imp.video.example.com"]
TURN_HOST = HOSTS["turn.video.example.com"]
GATEWAY_NAME = "lyncexp.video.example.com"
ENDPOINTS = {"3001": "127.0.3.11", "3002": "127.0.3.12"}
"""Lab SIP endpoints: user -> address."""
CLIENTS = ("alice", "david")
"""Lab Lync clients (see lab.lync.topology.LAB_USERS)."""
GATEWAY_TURN_USER = "GatewayB2BUA"
GATEWAY_TURN_PASSWORD = "secret"
DMZ_TURN_PEERS = ("127.0.0.0/8",)
"""Peers the DMZ TURN may relay to: the whole lab. (Keeping the internal clients out of
its reach would make their pair host/host every time, but the gateway then sometimes never
sends toward the client: see the report on media.ice_leg.) Internal clients therefore end
"host/host" or "host/relay" (the gateway's DMZ relay), as aioice's aggressive nomination
takes whichever pair answers first."""
ROLES = ("certs", "dmz-turn", "imp", "cucm", "lync-fe", "lync-edge", "gateway",
         "endpoint-3001", "endpoint-3002", "alice", "david")
"""Every role, in start order."""


class RoleState(enum.Enum):
    """Where a role is in its life."""

    STARTING = "starting"
    UP = "up"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RoleEvent:
    """One progress report."""

    role: str
    """A name from :data:`ROLES`."""
    state: RoleState
    """What just happened."""
    detail: str = ""
    """Where it listens (UP) or why it failed (FAILED)."""


ProgressCallback = Callable[[RoleEvent], None]


@dataclass(frozen=True, slots=True)
class RoleStatus:
    """One role in :meth:`Lab.status`."""

    role: str
    state: RoleState
    addresses: tuple[str, ...]
    """``transport:host:port`` of its listeners (or a registration, for clients)."""


@dataclass(frozen=True, slots=True)
class LabStatus:
    """The whole lab now."""

    roles: tuple[RoleStatus, ...]
    gateway: GatewayStatus | None
    """The gateway's own status (what /status serves)."""
    status_url: str | None
    """The management server's /status, when it runs."""

    def to_json(self) -> dict[str, Any]:
        return {
            "roles": [{"role": r.role, "state": r.state.value, "addresses": list(r.addresses)}
                      for r in self.roles],
            "gateway": self.gateway.to_json() if self.gateway is not None else None,
            "status_url": self.status_url,
        }


def _fmt(address: TransportAddress | tuple[str, str, int]) -> str:
    if isinstance(address, TransportAddress):
        return f"{address.transport.value.lower()}:{address.host}:{address.port}"
    return f"{address[0]}:{address[1]}:{address[2]}"


class Lab:
    """The lab topology (an async context manager; see the module doc)."""

    def __init__(self, pki: LabPKI | Path | str = Path("certs/lab"), *,
                 any_port: bool = False, management: bool = True,
                 broker: bool = True, progress: ProgressCallback | None = None,
                 gateway_overrides: dict[str, Any] | None = None,
                 ice_timeout: float = 15.0, lync_edge: EdgeConfig | None = None) -> None:
        self._pki_source = pki
        self.lync_edge = lync_edge
        """The Lync Edge's config (default: the lab's)."""
        self.any_port = any_port
        self.management = management
        self.broker = broker
        self.progress = progress
        self.gateway_overrides = gateway_overrides or {}
        """Extra gateway config: section -> {key: value} merged into the lab's default.toml."""
        self.ice_timeout = ice_timeout
        self.pki: LabPKI | None = pki if isinstance(pki, LabPKI) else None
        self.turn: TurnServer | None = None
        self.imp: Imp | None = None
        self.cucm: Cucm | None = None
        self.microsoft: MicrosoftSide | None = None
        self.gateway: Gateway | None = None
        self.endpoints: dict[str, Endpoint] = {}
        """Running SIP endpoints by user ("3001")."""
        self.clients: dict[str, LyncClient] = {}
        """Registered Lync clients by lab name ("alice")."""
        self.states: dict[str, RoleState] = {}
        self._stack = contextlib.AsyncExitStack()

    # -- progress -------------------------------------------------------------------------

    def _report(self, role: str, state: RoleState, detail: str = "") -> None:
        self.states[role] = state
        logger.debug("%s %s %s", role, state.value, detail)
        if self.progress is not None:
            self.progress(RoleEvent(role, state, detail))

    @contextlib.asynccontextmanager
    async def _role(self, role: str) -> Any:
        self._report(role, RoleState.STARTING)
        try:
            yield
        except BaseException as error:
            self._report(role, RoleState.FAILED, str(error) or type(error).__name__)
            raise

    def _port(self, port: int) -> int:
        return 0 if self.any_port else port

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Lab:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        async with self._role("certs"):
            if isinstance(self._pki_source, LabPKI):
                self.pki = self._pki_source
            else:
                self.pki = (await asyncio.to_thread(init_pki, Path(self._pki_source)))[0]
            self._report("certs", RoleState.UP, str(self.pki.directory))
        pki = self.pki
        await self._start_turn()
        await self._start_imp(pki)
        await self._start_cucm(pki)
        await self._start_microsoft(pki)
        await self._start_gateway(pki)
        for user in ENDPOINTS:
            await self.add_endpoint(user)
        for name in CLIENTS:
            await self.add_client(name)

    async def close(self) -> None:
        """Stop every role, newest first (clients, endpoints, gateway ... TURN)."""
        for name, client in reversed(list(self.clients.items())):
            with contextlib.suppress(Exception):
                await client.close()
            self._report(name, RoleState.STOPPED)
        if self.microsoft is not None:
            self.microsoft.clients.clear()  # closed above
        self.clients.clear()
        for user, endpoint in reversed(list(self.endpoints.items())):
            with contextlib.suppress(Exception):
                await endpoint.close()
            self._report(f"endpoint-{user}", RoleState.STOPPED)
        self.endpoints.clear()
        if self.gateway is not None:
            gateway, self.gateway = self.gateway, None
            with contextlib.suppress(Exception):
                if gateway.calls:
                    await gateway.drain(2.0)
            await gateway.close()
            self._report("gateway", RoleState.STOPPED)
        await self._stack.aclose()

    async def _start_turn(self) -> None:
        from turn.config import TurnConfig
        from turn.server import TurnServer

        async with self._role("dmz-turn"):
            port = self._port(3478)
            config = TurnConfig(
                listen=TURN_HOST, ports=(port, port), relay_ports=(24000, 29999),
                realm="video.example.com",
                users=((GATEWAY_TURN_USER, GATEWAY_TURN_PASSWORD), ("david.jones", "lab-turn")),
                allow_peers=DMZ_TURN_PEERS)
            turn = TurnServer(config)
            await turn.start()
            self._stack.push_async_callback(self._stop_turn, turn)
            self.turn = turn
            self._report("dmz-turn", RoleState.UP, ", ".join(_fmt(a) for a in turn.addresses))

    async def _stop_turn(self, turn: TurnServer) -> None:
        await turn.stop()
        self._report("dmz-turn", RoleState.STOPPED)

    async def _start_imp(self, pki: LabPKI) -> None:
        from lab.cisco.config import ImpConfig
        from lab.cisco.imp import Imp

        async with self._role("imp"):
            config = ImpConfig(
                listen=(f"tcp:{IMP_HOST}:{self._port(5060)}", f"tls:{IMP_HOST}:{self._port(5061)}"),
                certs=str(pki.directory))
            imp = await Imp.start(config)
            self._stack.push_async_callback(self._stop, "imp", imp.close)
            self.imp = imp
            self._report("imp", RoleState.UP, ", ".join(_fmt(a) for a in imp.listeners))

    async def _stop(self, role: str, close: Callable[[], Any]) -> None:
        await close()
        self._report(role, RoleState.STOPPED)

    async def _start_cucm(self, pki: LabPKI) -> None:
        from lab.cisco.config import CucmConfig, TrunkConfig
        from lab.cisco.cucm import Cucm

        async with self._role("cucm"):
            sip, tls = self._port(5060), self._port(5061)
            config = CucmConfig(
                listen=(f"udp:{CUCM_HOST}:{sip}", f"tcp:{CUCM_HOST}:{sip}",
                        f"tls:{CUCM_HOST}:{tls}"),
                certs=str(pki.directory),
                # In any_port mode the real port is set once the gateway listens.
                trunk=TrunkConfig(destination=f"tls:{GATEWAY_HOST}:5061",
                                  server_hostname=GATEWAY_NAME))
            cucm = await Cucm.start(config)
            self._stack.push_async_callback(self._stop, "cucm", cucm.close)
            self.cucm = cucm
            self._report("cucm", RoleState.UP, ", ".join(_fmt(a) for a in cucm.listeners))

    async def _start_microsoft(self, pki: LabPKI) -> None:
        from lab.lync.config import EdgeConfig, FrontEndConfig
        from lab.lync.topology import MicrosoftSide

        self._report("lync-fe", RoleState.STARTING)
        self._report("lync-edge", RoleState.STARTING)
        try:
            side = await self._stack.enter_async_context(MicrosoftSide.run(
                pki, fe=FrontEndConfig(), edge=self.lync_edge or EdgeConfig(),
                any_port=self.any_port))
        except BaseException as error:
            for role in ("lync-fe", "lync-edge"):
                self._report(role, RoleState.FAILED, str(error) or type(error).__name__)
            raise
        self._stack.callback(self._report, "lync-fe", RoleState.STOPPED)
        self._stack.callback(self._report, "lync-edge", RoleState.STOPPED)
        self.microsoft = side
        self._report("lync-fe", RoleState.UP, ", ".join(_fmt(a) for a in side.fe.stack.listeners))
        assert side.edge is not None
        edge = [_fmt(a) for a in side.edge.stack.listeners]
        if side.edge.turn is not None:
            edge += [f"turn-{_fmt(a)}" for a in side.edge.turn.addresses]
        self._report("lync-edge", RoleState.UP, ", ".join(edge))

    def gateway_config(self) -> GatewayConfig:
        """The lab's gateway/default.toml pointed at this lab's roles (their real ports in
        any_port mode), the PKI, the broker to IM&P (unless ``broker=False``), and
        ``gateway_overrides`` merged per section."""
        assert self.pki is not None and self.microsoft is not None
        assert self.cucm is not None and self.imp is not None and self.turn is not None
        data = read_toml(DEFAULT_CONFIG)
        system, b2bua = data.setdefault("system", {}), data.setdefault("b2bua", {})
        system["certs"] = str(self.pki.directory)
        fe = self.microsoft.fe.listener
        b2bua["ms_destination"] = f"tls:{fe.host}:{fe.port}"
        turn_port = next(p for t, _, p in self.turn.addresses if t == "udp")
        b2bua["turn_servers"] = [{"address": TURN_HOST, "port": turn_port,
                                  "username": GATEWAY_TURN_USER,
                                  "password": GATEWAY_TURN_PASSWORD}]
        if self.broker:
            imp_tls = _listener(self.imp.listeners, Transport.TLS)
            b2bua["broker"] = {"enabled": True, "destinations": [IMP_HOST],
                               "port": imp_tls.port}
        if self.any_port:
            # Other labs run on 127.0.2.1 too: a random block of media and source ports,
            # below the kernel's ephemeral range (32768 up), where port-0 listeners and
            # outbound sockets land and would take the pool's numbers from under it.
            media = random.randrange(10000, 20000, 200)
            b2bua["media_ports"] = f"{media}-{media + 199}"
            outbound = random.randrange(20000, 24000, 100)
            system["outbound_ports"] = f"{outbound}-{outbound + 99}"
        for section, values in self.gateway_overrides.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        # After the overrides: a zone list given there still reaches this lab's own CUCM
        # (its real port), never whatever listens on the default one (another lab's).
        cucm_tls = _listener(self.cucm.listeners, Transport.TLS)
        for zone in data.get("zones", []):
            if CUCM_HOST in zone.get("peers", ()):
                zone["port"], zone["transport"] = cucm_tls.port, "tls"
        config = from_mapping(data)
        if self.any_port:
            # The file format wants real ports; the runtime binds port 0 to a free one.
            config = replace(
                config,
                b2bua=replace(config.b2bua, listen=replace(config.b2bua.listen, port=0)),
                video=replace(config.video, listen=tuple(
                    replace(a, port=0) for a in config.video.listen)))
        return config

    async def _start_gateway(self, pki: LabPKI) -> None:
        from gateway.runtime import Gateway, RuntimeOptions

        async with self._role("gateway"):
            config = self.gateway_config()
            options = RuntimeOptions(
                pki=pki, ice_timeout=self.ice_timeout,
                management=self.management, management_port=0 if self.any_port else None,
                monitor_interval=5.0)
            gateway = Gateway(config, options)
            await gateway.start()
            self.gateway = gateway
            self._rewire()
            addresses = [_fmt(a) for stack in gateway.stacks.values() for a in stack.listeners]
            if gateway.management is not None:
                addresses.append(f"http:{config.system.management.host}:"
                                 f"{gateway.management.port}")
            self._report("gateway", RoleState.UP, ", ".join(addresses))

    def _rewire(self) -> None:
        """Point the FE's static route and CUCM's trunk at the gateway's bound ports.

        Both roles read these at each request; their config objects are frozen, so the FE
        gets a new config and CUCM a new trunk hop (there is no public setter yet)."""
        from lab.lync.config import StaticRoute
        from sip.stack import Hop

        assert self.gateway is not None and self.microsoft is not None
        assert self.cucm is not None
        from gateway.status import LegSide

        ms = self.gateway.stacks[LegSide.MICROSOFT].listeners[0]
        fe = self.microsoft.fe
        fe.config = replace(fe.config, static_routes=(StaticRoute(
            "video.example.com", TransportAddress(Transport.TLS, ms.host, ms.port),
            tls_name=GATEWAY_NAME),))
        video_tls = _listener(self.gateway.stacks[LegSide.VIDEO].listeners, Transport.TLS)
        self.cucm.trunk = Hop(Transport.TLS, video_tls.host, video_tls.port,
                              server_hostname=GATEWAY_NAME)

    # -- parties ----------------------------------------------------------------------------

    async def add_endpoint(self, user: str, host: str | None = None,
                           **changes: Any) -> Endpoint:
        """Start SIP endpoint ``user`` on its lab address, registered to CUCM over UDP."""
        from lab.endpoint.agent import Endpoint
        from lab.endpoint.config import EndpointConfig, ListenSpec

        assert self.pki is not None and self.cucm is not None
        role = f"endpoint-{user}"
        host = host or ENDPOINTS.get(user) or "127.0.3.20"
        async with self._role(role):
            sip, tls = self._port(5060), self._port(5061)
            registrar = _listener(self.cucm.listeners, Transport.UDP)
            settings: dict[str, Any] = dict(
                aor=f"{user}@video.example.com",
                listen=(ListenSpec(Transport.UDP, host, sip), ListenSpec(Transport.TCP, host, sip),
                        ListenSpec(Transport.TLS, host, tls)),
                certs=self.pki.directory, tls_server_name="endpoint.video.example.com",
                registrar=ListenSpec(Transport.UDP, registrar.host, registrar.port),
                registrar_tls_name="cucm.video.example.com")
            settings.update(changes)
            endpoint = await Endpoint.start(EndpointConfig(**settings))
            self.endpoints[user] = endpoint
            self._report(role, RoleState.UP, ", ".join(_fmt(a) for a in endpoint.stack.listeners))
        return endpoint

    async def add_client(self, name: str, **changes: Any) -> LyncClient:
        """Start and register Lync user ``name`` ("alice" via the FE, "david" via the
        Edge, taking relay candidates from the A/V Edge), config fields overridable."""
        assert self.microsoft is not None
        if name == "david":
            # Behind a strict firewall: media only through the A/V Edge relay.
            changes.setdefault("relay_only", True)
        async with self._role(name):
            client = await self.microsoft.client(name, ice_timeout=self.ice_timeout, **changes)
            self.microsoft.clients.remove(client)  # closed by us, before the endpoints
            self.clients[name] = client
            registrar = client.registrar
            self._report(name, RoleState.UP, f"{client.aor} via tls:{registrar.host}:"
                         f"{registrar.port}")
        return client

    def client(self, name: str) -> LyncClient:
        """A running Lync client by lab name ("alice")."""
        return self.clients[name]

    def endpoint(self, user: str) -> Endpoint:
        """A running SIP endpoint by user ("3001")."""
        return self.endpoints[user]

    async def next_call(self, party: str, timeout: float = 10.0) -> LyncCall | EndpointCall:
        """The next call offered to ``party`` (a client name or an endpoint user), as a
        :class:`lab.api.CallHandle` (LyncCall / EndpointCall)."""
        if party in self.clients:
            async with asyncio.timeout(timeout):
                return await self.clients[party].incoming_calls.get()
        return await self.endpoints[party].next_call(timeout)

    def callee_of(self, caller_call_id: str, callee: str) -> LyncCall | EndpointCall | None:
        """The callee's side of the call the caller placed with ``caller_call_id``: the
        gateway maps the caller's Call-ID (its inbound leg) to the outbound leg's, which is
        the callee's (the FE and CUCM are proxies: Call-IDs pass unchanged). None until the
        callee has the call."""
        if self.gateway is None:
            return None
        call = self.gateway.calls.get(caller_call_id)
        if call is None or call.outbound is None:
            return None
        call_id = call.outbound.call_id
        if callee in self.clients:
            return self.clients[callee].calls.get(call_id)
        from lab.endpoint.handle import EndpointCall  # noqa: F811 - the runtime import

        endpoint = self.endpoints[callee]
        for dialog_id, record in endpoint.calls.items():
            if dialog_id.call_id == call_id:
                return EndpointCall.incoming(endpoint, record)
        return None

    async def send_message(self, sender: str, target: str, text: str,
                           timeout: float = 10.0) -> Response:
        """Text from Lync client ``sender`` to ``target`` ("imp@video.example.com") as that
        client sends IM (``im_mode``: an IM session, INVITE m=message then MESSAGE, or a
        page-mode MESSAGE): through the FE and the gateway's broker to IM&P. The response
        that took the text."""
        return await self.clients[sender].im.send(target, text, timeout=timeout)

    # -- status -------------------------------------------------------------------------------

    @property
    def status_url(self) -> str | None:
        if self.gateway is None or self.gateway.management is None:
            return None
        host = self.gateway.config.system.management.host
        return f"http://{host}:{self.gateway.management.port}/status"

    def status(self) -> LabStatus:
        """Every role's state and listeners, and the gateway's status."""
        listeners: dict[str, tuple[str, ...]] = {}
        if self.pki is not None:
            listeners["certs"] = (str(self.pki.directory),)
        if self.turn is not None:
            listeners["dmz-turn"] = tuple(_fmt(a) for a in self.turn.addresses)
        if self.imp is not None:
            listeners["imp"] = tuple(_fmt(a) for a in self.imp.listeners)
        if self.cucm is not None:
            listeners["cucm"] = tuple(_fmt(a) for a in self.cucm.listeners)
        if self.microsoft is not None:
            listeners["lync-fe"] = tuple(_fmt(a) for a in self.microsoft.fe.stack.listeners)
            if self.microsoft.edge is not None:
                edge = self.microsoft.edge
                listeners["lync-edge"] = tuple(_fmt(a) for a in edge.stack.listeners) + tuple(
                    f"turn-{_fmt(a)}" for a in (edge.turn.addresses if edge.turn else ()))
        gateway_status = None
        if self.gateway is not None:
            listeners["gateway"] = tuple(
                _fmt(a) for stack in self.gateway.stacks.values() for a in stack.listeners)
            gateway_status = self.gateway.status(asyncio.get_running_loop().time())
        for user, endpoint in self.endpoints.items():
            listeners[f"endpoint-{user}"] = tuple(_fmt(a) for a in endpoint.stack.listeners)
        for name, client in self.clients.items():
            listeners[name] = (f"{client.aor} registered={client.registered}",)
        roles = tuple(RoleStatus(role, state, listeners.get(role, ()))
                      for role, state in self.states.items())
        return LabStatus(roles, gateway_status, self.status_url)


def _listener(addresses: tuple[TransportAddress, ...] | list[TransportAddress],
              transport: Transport) -> TransportAddress:
    for address in addresses:
        if address.transport is transport:
            return address
    raise LookupError(f"no {transport.value} listener among {addresses}")
