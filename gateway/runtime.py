"""The running gateway: stacks and listeners of both sides, the media pool, the calls, the
zone monitor, the management server; implements :class:`gateway.status.StatusSource`.

Two SIP stacks, one per side: the Microsoft side (TLS 65072, mutual TLS verified against
the lab CA, outbound TLS to the FE with the gateway certificate) and the video side (UDP
and TCP 5060, TLS 5061). The side of a request is the stack (listener) it came in on.
Every SIP message sent or received is counted in :class:`GatewayMetrics` and recorded by
the :class:`DiagnosticLog` while it runs.

Lifecycle: ``await gateway.start()``; ``await gateway.drain(grace)`` (new INVITEs get 503,
active calls get BYE, wait until they are gone or ``grace`` passes); ``await gateway.close()``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certs.pki import LabPKI, init_pki
from gateway.call import ActiveCall
from gateway.call_log import CallLog, CallLogSettings
from gateway.calls.adapter import CallController
from gateway.config import MICROSOFT_ZONE, GatewayConfig, ZoneConfig
from gateway.diagnostics import DiagnosticLog
from gateway.leg import SideAgent
from gateway.management import ManagementServer, ManagementSettings
from gateway.metrics import Direction, GatewayMetrics
from gateway.routing import LocalIdentity, Router
from gateway.sdp_bridge import encryption_policy
from gateway.trusted import TrustedHosts
from gateway.views import (
    CallView,
    Capacity,
    GatewayStatus,
    Health,
    LegSide,
    LegView,
    PeerView,
    PortPoolView,
    SideStatus,
    StreamCountersView,
    SystemView,
    TransportCountersView,
    TurnServerView,
    ZoneStatusView,
)
from gateway.zone_monitor import ZoneMonitorTask
from gateway.zones import ZoneMonitors, ZoneState, zones_from_config
from media.events import MediaEvent
from media.ice_leg import IceSettings, TurnServerSettings
from media.port_pool import PortPool, PortPoolSettings
from media.rtp_leg import LatchMode, LatchSettings
from media.session import MediaSession, MediaSettings
from sip.message import Request, Response
from sip.stack import Hop, SipStack
from sip.timers import TimerSettings
from sip.transport import (
    Transport,
    TransportAddress,
    source_host_of,
)

if TYPE_CHECKING:
    from gateway.broker import SipBroker

__all__ = ["Gateway", "RuntimeOptions"]

logger = logging.getLogger(__name__)

VERSION = "0.1"


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What the configuration file does not say: test knobs and process wiring."""

    timers: TimerSettings = field(default_factory=TimerSettings)
    """RFC 3261 timers of both stacks (tests use a small T1)."""
    pki: LabPKI | None = None
    """The lab PKI; None makes (or loads) it in ``[system] certs``."""
    ice_timeout: float | None = None
    """Seconds ICE toward Microsoft may take before the call is cleared (None: the
    configuration's ``[b2bua] ice_timeout``)."""
    ms_server_name: str | None = None
    """Override of ``[b2bua] ms_tls_name`` (None: the configuration's)."""
    management: bool = True
    """Start the management HTTP server on ``[system] management``."""
    management_port: int | None = None
    """Override the management port (0: any free one)."""
    monitor_interval: float | None = None
    """Override every zone's OPTIONS interval."""
    diagnostics_dir: Path = Path("diagnostics")
    """Where diagnostic captures go."""
    retry_after: int = 60
    """Seconds in the Retry-After of a 503 for the call limit."""


class Gateway:
    """The B2BUA runtime."""

    def __init__(self, config: GatewayConfig, options: RuntimeOptions | None = None) -> None:
        self.config = config
        self.options = options or RuntimeOptions()
        self.metrics = GatewayMetrics()
        self.diagnostics = DiagnosticLog(self.options.diagnostics_dir)
        system = config.system
        self.call_log = CallLog(CallLogSettings(system.management_recent_calls,
                                                system.management_call_messages,
                                                system.management_call_packets),
                                resolve=self._call_of_leg)
        self.call_log.is_active = lambda call_id: call_id in self.calls
        self.call_log.outcome_of = self._outcome_of
        self.router = Router(config)
        self.trusted = TrustedHosts(config.b2bua.trusted_hosts)
        self.zones = zones_from_config(config)
        self.encryption = encryption_policy(config.b2bua.encryption)
        self.retry_after = self.options.retry_after
        ports = config.b2bua.media_ports
        turn = config.b2bua.turn_client_ports if config.b2bua.offer_turn else None
        self.pool = PortPool(PortPoolSettings(ports.first, ports.last,
                                              turn.first if turn else None,
                                              turn.last if turn else None))
        self.media_settings = self._media_settings()
        self.controller = CallController(self)
        self.agents: dict[LegSide, SideAgent] = {}
        self.stacks: dict[LegSide, SipStack] = {}
        self.identity = LocalIdentity(frozenset())
        self.monitors: ZoneMonitors | None = None
        self.monitor_task: ZoneMonitorTask | None = None
        self.management: ManagementServer | None = None
        self.broker: SipBroker | None = None
        self.draining = False
        self.started_at = 0.0
        self.pki: LabPKI | None = self.options.pki

    # -- set-up ------------------------------------------------------------------------------

    def _media_settings(self) -> MediaSettings:
        b2bua = self.config.b2bua
        turn = tuple(
            TurnServerSettings((server.address, server.port), server.username, server.password)
            for server in b2bua.turn_servers
        ) if b2bua.offer_turn else ()
        video_host = self.config.video.listen[0].host
        return MediaSettings(
            microsoft_address=b2bua.listen.host,
            video_address=video_host,
            ice=IceSettings(
                stun_server=turn[0].address if turn else None,
                turn_servers=turn,
                allowed_networks=b2bua.allowed_networks,
                connect_timeout=(b2bua.ice_timeout if self.options.ice_timeout is None
                                 else self.options.ice_timeout),
                stun_dialect=b2bua.ice_stun_dialect.value,
            ),
        )

    async def start(self) -> None:
        """Bind every listener and start the monitor and the management server."""
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        config = self.config
        if self.pki is None:
            self.pki = (await asyncio.to_thread(init_pki, config.system.certs))[0]
        pki: LabPKI = self.pki
        client = pki.client_context("gateway")
        # Each side sends from the address it listens on, as the real box does: the FE and
        # CUCM know the gateway by it.
        source = {LegSide.MICROSOFT: config.b2bua.listen.host,
                  LegSide.VIDEO: config.video.listen[0].host if config.video.listen else ""}
        try:
            for side in LegSide:
                transport = config.transport.settings(
                    outbound_ports=config.system.outbound_ports,
                    source_host=source_host_of(source[side]))
                stack = SipStack(timers=self.options.timers, transport_settings=transport,
                                 tls_client=client,
                                 observer=functools.partial(self.observe, side=side))
                self.stacks[side] = stack
                self.metrics.watch_transport(side, stack.transports.counters)
                self.agents[side] = SideAgent(stack, side, self.controller, user="gateway",
                                              domain=config.system.domain)
            ms = self.stacks[LegSide.MICROSOFT]
            listen = config.b2bua.listen
            context = pki.server_context("gateway") if listen.transport is Transport.TLS else None
            bound = [await ms.listen(listen.transport, listen.host, listen.port, ssl=context)]
            video = self.stacks[LegSide.VIDEO]
            for address in config.video.listen:
                context = (pki.server_context("gateway", require_client_cert=False)
                           if address.transport is Transport.TLS else None)
                bound.append(await video.listen(address.transport, address.host, address.port,
                                                ssl=context))
            for address in bound:
                logger.info("listening on %s:%s:%d", address.transport.value.lower(),
                            address.host, address.port)
            self.identity = LocalIdentity.from_addresses(bound)
            self._start_broker()
            self.monitors = ZoneMonitors(self.zones.values(), loop.time(),
                                         interval=self.options.monitor_interval)
            self.monitor_task = ZoneMonitorTask(
                self.monitors, self._agent_for_zone,
                server_name=self.tls_name,
                on_change=self._zones_changed)
            self.monitor_task.start()
            if self.options.management:
                settings = ManagementSettings(config.system.management.host,
                                              config.system.management.port)
                if self.options.management_port is not None:
                    settings = ManagementSettings(settings.host, self.options.management_port)
                self.management = ManagementServer(self, self.metrics, settings,
                                                   calls=self.call_log)
                await self.management.start()
                logger.info("listening on http:%s:%d", settings.host, self.management.port)
        except BaseException:
            await self.close()
            raise
        self.metrics.set_media_ports_in_use(self.pool.ports_in_use)

    def _start_broker(self) -> None:
        settings = self.config.b2bua.broker
        if not settings.enabled:
            return
        try:
            from gateway.broker import SipBroker
        except ImportError:  # not built: the broker methods get 501
            logger.warning("b2bua.broker is enabled but the broker is not available")
            return
        self.broker = SipBroker(settings, self.stacks[LegSide.MICROSOFT])
        self.broker.intercept(lambda host: self.trusted.lookup(host) is not None)

    async def close(self) -> None:
        """Stop everything (calls are dropped without signalling: drain first)."""
        if self.monitor_task is not None:
            await self.monitor_task.close()
            self.monitor_task = None
        if self.management is not None:
            await self.management.close()
            self.management = None
        await self.controller.close()
        for stack in self.stacks.values():
            await stack.close()
        if self.diagnostics.running:
            self.diagnostics.stop(time.time())

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def drain(self, grace: float | None = None) -> bool:
        """Refuse new INVITEs (503), BYE every call, wait until they are gone (or
        ``grace`` seconds pass). True when every call ended in time."""
        grace = self.config.system.drain_timeout if grace is None else grace
        self.draining = True
        logger.info("draining: %d active calls", len(self.calls))
        pending = []
        for call in list(self.calls.values()):
            pending += self.controller.clear(call, "gateway shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # The BYEs' answers (or their timeouts) before the transports close.
        if pending:
            await asyncio.wait([asyncio.ensure_future(p.response()) for p in pending],
                               timeout=grace)
        while self.calls and loop.time() < deadline:
            self.controller.call_ended.clear()
            try:
                await asyncio.wait_for(self.controller.call_ended.wait(),
                                       deadline - loop.time())
            except TimeoutError:
                break
        return not self.calls

    # -- what the controller asks ------------------------------------------------------------

    def media_session(self, call_id: str, zone: ZoneConfig | None,
                      on_event: Callable[[MediaEvent], None]) -> MediaSession:
        """A new call's media session, with the latching of its video zone."""
        b2bua = self.config.b2bua
        mode = b2bua.media_latching
        if zone is not None and zone.media_latching is not None:
            mode = zone.media_latching
        latch = LatchSettings(LatchMode(mode.value), b2bua.media_relatch_after)
        settings = self.media_settings
        if settings.latch != latch:
            settings = replace(settings, latch=latch)
        return MediaSession(call_id, self.pool, settings, on_event=on_event)

    @property
    def calls(self) -> dict[str, ActiveCall]:
        return self.controller.calls

    def hop_of(self, source: object) -> Hop:
        if isinstance(source, TransportAddress):
            return Hop.of(source)
        raise TypeError(f"not an address: {source!r}")

    def source_zone(self, side: LegSide, request: Request) -> str | None:
        """The zone a request comes from: the Microsoft zone for the Microsoft side, the
        neighbor zone one of whose peers sent it, else None."""
        if side is LegSide.MICROSOFT:
            return MICROSOFT_ZONE
        try:
            host = request.top_via.received or request.top_via.host
        except Exception:  # noqa: BLE001 - a Via the transport let through
            return None
        for zone in self.config.zones:
            if host in zone.peers:
                return zone.name
        return None

    def zone_hops(self, zone: str) -> list[Hop]:
        """Where requests into ``zone`` go, one hop per peer."""
        server_name = self.tls_name(zone)
        return [Hop(d.transport, d.host, d.port, server_hostname=server_name)
                for d in self.zones[zone].destinations]

    def tls_name(self, zone: str) -> str | None:
        """The certificate name expected of ``zone``'s peers over TLS (None: each peer's
        address): ``[b2bua] ms_tls_name`` (or the ``ms_server_name`` option) for the
        Microsoft zone, the zone's ``tls_name`` for the others."""
        if zone == MICROSOFT_ZONE:
            if self.options.ms_server_name is not None:
                return self.options.ms_server_name
            return self.config.b2bua.ms_tls_name
        configured = self.config.zone(zone)
        return configured.tls_name if configured is not None else None

    def _agent_for_zone(self, zone: str) -> SideAgent:
        side = LegSide.MICROSOFT if zone == MICROSOFT_ZONE else LegSide.VIDEO
        return self.agents[side]

    def _zones_changed(self) -> None:
        if self.monitors is None:
            return
        for name, status in self.monitors.statuses().items():
            if status.state is not ZoneState.NOT_MONITORED:
                self.metrics.set_zone_up(name, status.active)

    # -- observation -------------------------------------------------------------------------

    def observe(self, sent: bool, message: Request | Response, local: TransportAddress,
                remote: TransportAddress, data: bytes, *, side: LegSide | None = None) -> None:
        """One SIP message sent or received on ``side``'s stack: metrics, the diagnostic
        capture and the call log."""
        direction = Direction.SENT if sent else Direction.RECEIVED
        label = message.method if isinstance(message, Request) else message.status
        self.metrics.sip_message(direction, label)
        ours, theirs = (local.host, local.port), (remote.host, remote.port)
        now = time.time()
        if self.diagnostics.running:
            src, dst = (ours, theirs) if sent else (theirs, ours)
            self.diagnostics.record(direction, local.transport, src, dst, data, now)
        if side is not None:
            self.call_log.sip(side, sent, message, local.transport.value, ours, theirs, data,
                              now)

    def _outcome_of(self, call_id: str) -> tuple[str, str] | None:
        """An active call's state, or an ended one's result and reason (for the call log)."""
        call = self.calls.get(call_id)
        if call is not None:
            return call.state.value, ""
        for ended in reversed(self.controller.ended):
            if ended.call_id == call_id:
                return ended.outcome.result.value, ended.outcome.reason
        return None

    def _call_of_leg(self, leg_call_id: str) -> tuple[str, Any] | None:
        """The call one of whose legs has this Call-ID, and its media (for the call log)."""
        for call in self.calls.values():
            for leg in (call.outbound, call.inbound):
                if leg is not None and leg.call_id == leg_call_id:
                    return call.call_id, call.media
        return None

    # -- StatusSource ------------------------------------------------------------------------

    def status(self, now: float) -> GatewayStatus:
        config = self.config
        system = SystemView(config.system.host_name, config.system.domain,
                            config.system.cluster_fqdn, self.started_at, VERSION, self.draining)
        zones: list[ZoneStatusView] = []
        microsoft = SideStatus("Microsoft", str(config.b2bua.ms_destination),
                               Health.down("Checking"))
        if self.monitors is not None:
            for name, zstatus in self.monitors.statuses().items():
                health = _health(zstatus.state, zstatus.describe())
                peers = tuple(PeerView(f"{p.peer.host}:{p.peer.port}", _peer_health(p))
                              for p in zstatus.peers)
                kind = self.zones[name].kind.value
                if name == MICROSOFT_ZONE:
                    microsoft = SideStatus("Microsoft", str(config.b2bua.ms_destination), health)
                zones.append(ZoneStatusView(name, kind, health, peers))
        listeners = self.stacks[LegSide.VIDEO].listeners if LegSide.VIDEO in self.stacks else ()
        video = SideStatus(
            "Video", ", ".join(str(a) for a in listeners) or "-",
            Health.up() if listeners else Health.down("not listening"))
        calls = tuple(_call_view(call) for call in self.calls.values())
        turn = tuple(TurnServerView(s.address, s.port, Health.up() if self.config.b2bua.offer_turn
                                    else Health.down("TURN not offered"),
                                    self._turn_allocations(s.address, s.port))
                     for s in config.b2bua.turn_servers)
        self.metrics.set_media_ports_in_use(self.pool.ports_in_use)
        self.metrics.set_turn_allocations(sum(t.allocations for t in turn))
        transport = tuple(TransportCountersView.from_counters(side, stack.transports.counters)
                          for side, stack in self.stacks.items())
        return GatewayStatus(now, system, microsoft, video, tuple(zones), calls,
                             PortPoolView.from_pool(self.pool), turn,
                             Capacity(len(self.calls), config.b2bua.max_calls),
                             transport=transport)

    def _turn_allocations(self, host: str, port: int) -> int:
        count = 0
        for call in self.calls.values():
            if call.media is None:
                continue
            for stream in call.media.streams:
                if stream is not None:
                    count += sum(1 for c in stream.ice.local_candidates if c.type.value == "relay")
        return count if self.config.b2bua.turn_servers else 0


def _health(state: ZoneState, text: str) -> Health:
    if state is ZoneState.ACTIVE:
        return Health.up()
    return Health.down(text)


def _peer_health(peer: Any) -> Health:
    if peer.state.value == "Alive":
        return Health.up()
    return Health.down(peer.reason or peer.state.value)


def _call_view(call: ActiveCall) -> CallView:
    legs = []
    counters = call.media.counters() if call.media is not None else ()
    for leg in (call.inbound, call.outbound):
        if leg is None:
            continue
        media = tuple(StreamCountersView.from_leg(
            c.kind, c.microsoft if leg.side is LegSide.MICROSOFT else c.video) for c in counters)
        legs.append(LegView(leg.side, leg.call_id, leg.remote_text, leg.dialog_state, media))
    return CallView(call.call_id, call.state.value, call.started_at, tuple(legs))
