"""Sections of the gateway configuration that hold one table each: ``[system]``,
``[b2bua]`` (with its trusted hosts, TURN servers and ``[b2bua.broker]``), ``[video]`` and
``[transport]``. Every field has the product's documented default (SPEC.md §2-3)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from gateway.addresses import HostPort, parse_host
from gateway.config_checks import (
    address_metadata,
    check_host,
    check_hosts,
    check_networks,
    check_range,
    check_tls_name,
    field_error,
)
from gateway.config_enums import Encryption, IceStunDialect, MediaLatching, TrustedHostType
from sip.port_range import PortRange
from sip.transport import Transport, TransportAddress, TransportSettings

__all__ = [
    "LOOPBACK_NETWORKS",
    "B2buaConfig",
    "BrokerConfig",
    "SystemConfig",
    "TransportLimitsConfig",
    "TrustedHost",
    "TurnServer",
    "VideoConfig",
]

LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
"""Where the lab's media may go unless ``[b2bua] allowed_networks`` says otherwise."""


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """``[system]``: identity of this gateway and where its files and management live."""

    host_name: str = "exp01"
    """This peer's host name (its FQDN is host_name.domain)."""
    domain: str = "video.example.com"
    """DNS domain of the gateway (the video network's SIP domain)."""
    cluster_fqdn: str = ""
    """Cluster FQDN the Microsoft side trusts; empty means this peer's FQDN."""
    certs: str = "certs/lab"
    """Directory of the lab PKI (written by ``gateway certs init``)."""
    management: HostPort = HostPort("127.0.0.1", 9090)
    """Management HTTP address for /status and /metrics."""
    management_recent_calls: int = 100
    """Calls the operator's page keeps (active and recent, with their SIP messages)."""
    management_call_messages: int = 200
    """SIP messages kept per call for its ladder and pcap (the oldest go first)."""
    management_call_packets: int = 300
    """Media packets kept per call for its pcap (the first ones)."""
    outbound_ports: PortRange = PortRange(25000, 29999)
    """Source ports of outbound SIP TCP/TLS connections."""
    drain_timeout: float = 10.0
    """Seconds active calls get to clear after SIGTERM."""

    def __post_init__(self) -> None:
        for name in ("host_name", "domain"):
            value = getattr(self, name)
            if not value:
                raise field_error(name, "must not be empty")
            check_host(name, value)
        if not self.cluster_fqdn:
            object.__setattr__(self, "cluster_fqdn", self.fqdn)
        check_range("drain_timeout", self.drain_timeout, 0)
        check_range("management_recent_calls", self.management_recent_calls, 1)
        check_range("management_call_messages", self.management_call_messages, 1)
        check_range("management_call_packets", self.management_call_packets, 0)

    @property
    def fqdn(self) -> str:
        """This peer's FQDN (``exp01.video.example.com``)."""
        return f"{self.host_name}.{self.domain}"


@dataclass(frozen=True, slots=True)
class TrustedHost:
    """One Microsoft trusted host (FE server, Director, HLB)."""

    address: str
    """IP address requests from this host come from."""
    name: str = ""
    """Label for logs and status; defaults to the address."""
    type: TrustedHostType = TrustedHostType.MICROSOFT
    """What the host is."""

    def __post_init__(self) -> None:
        try:
            normal = str(ipaddress.ip_address(self.address.strip().strip("[]")))
        except ValueError:
            raise field_error("address", f"not an IP address: {self.address!r}") from None
        object.__setattr__(self, "address", normal)
        if not self.name:
            object.__setattr__(self, "name", normal)


@dataclass(frozen=True, slots=True)
class TurnServer:
    """A TURN server the B2BUA allocates relay candidates on."""

    address: str
    """IP address or host name."""
    username: str
    """Long-term credential user name (e.g. GatewayB2BUA)."""
    password: str
    """Long-term credential password."""
    port: int = 3478
    """TURN port (UDP and TCP)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "address", parse_host(self.address))
        except ValueError as exc:
            raise field_error("address", str(exc)) from None
        check_range("port", self.port, 1, 65535)
        if not self.username:
            raise field_error("username", "must not be empty")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``[b2bua.broker]``: SIP SIMPLE from Microsoft forwarded to IM&P nodes."""

    enabled: bool = False
    """Forward MESSAGE/SUBSCRIBE/NOTIFY/PUBLISH/INFO outside calls."""
    destinations: tuple[str, ...] = ()
    """IM&P node addresses."""
    port: int = 5061
    """SIP port of the IM&P nodes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "destinations", check_hosts("destinations", self.destinations))
        check_range("port", self.port, 1, 65535)
        if self.enabled and not self.destinations:
            raise field_error("destinations", "the broker is enabled but has no destinations")

    def targets(self) -> tuple[HostPort, ...]:
        """Each IM&P node with the broker port."""
        return tuple(HostPort(host, self.port) for host in self.destinations)


@dataclass(frozen=True, slots=True)
class B2buaConfig:
    """``[b2bua]``: the Microsoft interoperability B2BUA."""

    listen: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.0.1", 65072),
        metadata=address_metadata(Transport.TLS, 65072),
    )
    """Listener toward Microsoft (TLS 65072)."""
    ms_destination: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.0.1", 5061),
        metadata=address_metadata(Transport.TLS, 5061),
    )
    """Microsoft-side destination: FE / pool / Director / HLB (TLS 5061)."""
    ms_tls_name: str | None = None
    """Certificate name expected of the Microsoft destination (``fe.example.com``); unset:
    the destination host as written (an address is checked against the IP SANs)."""
    trusted_hosts: tuple[TrustedHost, ...] = ()
    """Microsoft hosts whose requests are accepted."""
    encryption: Encryption = Encryption.REQUIRED
    """Media encryption policy toward Microsoft."""
    max_calls: int = 100
    """Simultaneous Microsoft calls; one more is refused with 503."""
    offer_turn: bool = False
    """Offer relay candidates from ``turn_servers``."""
    turn_servers: tuple[TurnServer, ...] = ()
    """TURN servers for relay candidates."""
    media_ports: PortRange = PortRange(56000, 57000)
    """Shared media port pool."""
    rdp_tcp_ports: PortRange = PortRange(6000, 6099)
    """RDP presentation over TCP."""
    rdp_udp_ports: PortRange = PortRange(6100, 6199)
    """RDP presentation over UDP."""
    broker: BrokerConfig = BrokerConfig()
    """SIP broker toward IM&P."""
    allowed_networks: tuple[str, ...] = LOOPBACK_NETWORKS
    """The only networks the gateway's ICE and media toward Microsoft may send to (CIDRs);
    candidates elsewhere are ignored."""
    turn_client_ports: PortRange | None = None
    """Local ports of the gateway's connections to its TURN servers (2 per stream and server),
    apart from ``media_ports``: with ``"57002-57801"`` the default 1000 media ports serve the
    100 audio+video calls of ``max_calls`` with TURN offered (2 TURN servers). Unset (the
    default, so that several gateways on one host never share a fixed range): taken from
    ``media_ports``, 12 ports per audio+video call with one TURN server."""
    media_latching: MediaLatching = MediaLatching.STRICT
    """Video-side latching for every zone that does not set its own."""
    ice_stun_dialect: IceStunDialect = IceStunDialect.AUTO
    """STUN dialect of the ICE checks toward Microsoft: "auto", "ms-ice2" or "rfc5389"."""
    media_relatch_after: float = 5.0
    """Seconds the latched video-side source must be silent before another may take over."""
    session_expires: int = 1800
    """RFC 4028 Session-Expires (seconds) the gateway proposes to the video side."""
    min_se: int = 90
    """The shortest session interval the gateway accepts (RFC 4028: a shorter
    Session-Expires gets 422 with this Min-SE; at least 90)."""
    ice_timeout: float = 30.0
    """Seconds ICE toward Microsoft may take before the call is cleared (a lab peer that
    does no ICE, such as SIPp playing the FE, keeps a call up longer with a larger one)."""

    def __post_init__(self) -> None:
        check_range("max_calls", self.max_calls, 1)
        check_range("min_se", self.min_se, 90)
        check_range("session_expires", self.session_expires, self.min_se)
        if not self.ice_timeout > 0:
            raise field_error("ice_timeout", "must be positive")
        if not self.media_relatch_after > 0:
            raise field_error("media_relatch_after", "must be positive")
        turn = self.turn_client_ports
        media = self.media_ports
        if turn is not None and turn.first <= media.last and media.first <= turn.last:
            raise field_error("turn_client_ports", f"{turn.first}-{turn.last} overlaps "
                               f"media_ports {media.first}-{media.last}")
        object.__setattr__(self, "ms_tls_name", check_tls_name("ms_tls_name", self.ms_tls_name))
        object.__setattr__(
            self, "allowed_networks", check_networks("allowed_networks", self.allowed_networks)
        )
        if self.offer_turn and not self.turn_servers:
            raise field_error("offer_turn", "true but b2bua.turn_servers is empty")
        seen: set[str] = set()
        for index, host in enumerate(self.trusted_hosts):
            if host.address in seen:
                raise field_error(
                    f"trusted_hosts[{index}].address", f"{host.address} is listed twice"
                )
            seen.add(host.address)


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """``[video]``: listeners toward the standards SIP video network."""

    listen: tuple[TransportAddress, ...] = field(
        default=(
            TransportAddress(Transport.UDP, "127.0.0.1", 5060),
            TransportAddress(Transport.TCP, "127.0.0.1", 5060),
            TransportAddress(Transport.TLS, "127.0.0.1", 5061),
        ),
        metadata=address_metadata(None, None),
    )
    """SIP listeners (UDP/TCP 5060, TLS 5061)."""

    def __post_init__(self) -> None:
        if not self.listen:
            raise field_error("listen", "at least one listener is needed")
        if len(set(self.listen)) != len(self.listen):
            raise field_error("listen", "a listener is listed twice")


@dataclass(frozen=True, slots=True)
class TransportLimitsConfig:
    """``[transport]``: limits of every SIP stream listener and connection (both sides),
    against hostile or careless peers. 0 turns a limit off."""

    max_connections: int = 2048
    """Stream connections held at once (TLS handshakes included); at the cap the oldest
    idle inbound one is closed for a new one, or the new one is refused."""
    max_connections_per_source: int = 512
    """Inbound stream connections from one source address."""
    message_timeout: float = 20.0
    """Seconds from a message's first byte to its last; later, the connection is closed."""
    idle_timeout: float = 600.0
    """Seconds without a complete message or keep-alive before a connection is closed."""
    max_unsent_bytes: int = 1048576
    """Bytes queued for a peer that does not read before its connection is closed."""
    max_message_size: int = 65536
    """Largest SIP message; a larger one is answered 413 (its body skipped on streams)."""
    tls_handshake_timeout: float = 10.0
    """Seconds for a TLS handshake."""

    def __post_init__(self) -> None:
        check_range("max_connections", self.max_connections, 0)
        check_range("max_connections_per_source", self.max_connections_per_source, 0)
        check_range("message_timeout", self.message_timeout, 0)
        check_range("idle_timeout", self.idle_timeout, 0)
        check_range("max_unsent_bytes", self.max_unsent_bytes, 0)
        check_range("max_message_size", self.max_message_size, 1024, 1 << 24)
        check_range("tls_handshake_timeout", self.tls_handshake_timeout, 0.1)

    def settings(self, **others: Any) -> TransportSettings:
        """The :class:`TransportSettings` with these limits (``others``: the rest)."""

        def cap(value: float) -> Any:
            return value if value > 0 else None

        return TransportSettings(
            max_connections=cap(self.max_connections),
            max_connections_per_source=cap(self.max_connections_per_source),
            message_timeout=cap(self.message_timeout),
            idle_timeout=cap(self.idle_timeout),
            max_unsent_bytes=cap(self.max_unsent_bytes),
            max_message_size=self.max_message_size,
            tls_handshake_timeout=self.tls_handshake_timeout,
            **others,
        )
