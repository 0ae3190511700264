"""Gateway configuration: one TOML file loaded into a tree of frozen dataclasses.

Sections mirror the product's pages: ``[system]``, ``[b2bua]`` (with ``[b2bua.broker]``),
``[video]``, ``[transport]`` (SIP listener limits), ``[[zones]]``, ``[[search_rules]]`` and
``[[transforms]]``. Every field has
the product's documented default (SPEC.md §2-3). An unknown key, a wrong type or a bad
value raises :class:`ConfigError` naming the key (``b2bua.max_calls: expected integer,
got string``). Precedence: defaults < file < environment (``GATEWAY_<SECTION>_<KEY>``)
< command-line overrides (``section.key=value``).
"""

from __future__ import annotations

import copy
import difflib
import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.addresses import (
    HostPort,
    parse_host,
)
from gateway.configkit import (  # ConfigError & co. are re-exported
    ConfigError,
    UnknownKeyError,
    build,
    field_hint,
    flag_overrides,
    parse_override_value,
    parse_toml,
    read_toml,
    set_dotted,
    wrong_type,
)
from sip.port_range import PortRange
from sip.transport import Transport, TransportAddress, TransportSettings

__all__ = [
    "MICROSOFT_ZONE",
    "TRUSTED_HOSTS_NOMINAL_LIMIT",
    "B2buaConfig",
    "BrokerConfig",
    "ConfigError",
    "Encryption",
    "GatewayConfig",
    "IceStunDialect",
    "MediaEncryption",
    "MediaLatching",
    "OnMatch",
    "PatternBehavior",
    "PatternType",
    "RuleMode",
    "RuleProtocol",
    "SearchRuleConfig",
    "SystemConfig",
    "TransformConfig",
    "TransportLimitsConfig",
    "TrustedHost",
    "TrustedHostType",
    "TurnServer",
    "UnknownKeyError",
    "VideoConfig",
    "ZoneConfig",
    "ZoneType",
    "compile_regex",
    "from_mapping",
    "load",
    "loads",
]

MICROSOFT_ZONE = "To Microsoft destination via B2BUA"
"""Name of the zone the product creates by itself toward the Microsoft destination."""
TRUSTED_HOSTS_NOMINAL_LIMIT = 25
"""Above this many trusted hosts the product raises an alarm (recommended < 50)."""
MAX_ZONE_PEERS = 6
ENV_PREFIX = "GATEWAY_"
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
"""Where the lab's media may go unless ``[b2bua] allowed_networks`` says otherwise."""


# -- enums: values as written in the file ----------------------------------------------


class Encryption(enum.Enum):
    """Media encryption policy toward Microsoft."""

    REQUIRED = "required"
    """RequireEncryption: SRTP only (the product's default)."""
    SUPPORTED = "supported"
    """SupportEncryption: SRTP when the other side offers it."""
    OFF = "off"
    """DoNotSupportEncryption: plain RTP."""


class MediaEncryption(enum.Enum):
    """A zone's media encryption mode (the product's names): what the gateway offers the
    zone and what it accepts from it."""

    AUTO = "auto"
    """Follow the peer: answer SRTP to an SDES offer, RTP to RTP; offer RTP."""
    FORCE_ENCRYPTED = "force_encrypted"
    """SDES-SRTP only; an RTP offer from the zone is refused (488)."""
    FORCE_UNENCRYPTED = "force_unencrypted"
    """RTP only; an SRTP offer from the zone is refused (488)."""
    BEST_EFFORT = "best_effort"
    """Offer SDES-SRTP; take whatever the zone offers."""


class IceStunDialect(enum.Enum):
    """The STUN dialect of the ICE legs toward Microsoft (media.ms_stun)."""

    AUTO = "auto"
    """The peer's: [MS-ICE2] version 2 or RFC 5389, learned from its checks (the default)."""
    MS_ICE2 = "ms-ice2"
    """Only [MS-ICE2] version 2 (Lync 2013 / Skype for Business clients, libnice's OC2007R2)."""
    RFC5389 = "rfc5389"
    """Only RFC 5389 (standard ICE agents)."""


class MediaLatching(enum.Enum):
    """How the video leg learns where the endpoint's media comes from (media.rtp_leg)."""

    STRICT = "strict"
    """Latch to a source on the endpoint's SDP address, then only to it (the default)."""
    NAT = "nat"
    """Latch to the first source at all: endpoints behind a NAT (private SDP addresses)."""


class TrustedHostType(enum.Enum):
    """What a trusted host is."""

    MICROSOFT = "microsoft"
    """A Lync / Skype for Business FE, Director or HLB."""


class ZoneType(enum.Enum):
    """Kind of a configured zone (the Microsoft zone is created automatically)."""

    NEIGHBOR = "neighbor"


class PatternType(enum.Enum):
    """How a rule's pattern is compared with the alias."""

    REGEX = "regex"
    """The regular expression must match the whole alias."""
    PREFIX = "prefix"
    """The alias starts with the pattern."""
    SUFFIX = "suffix"
    """The alias ends with the pattern."""
    EXACT = "exact"
    """The alias equals the pattern."""


class PatternBehavior(enum.Enum):
    """What a matching rule does to the alias."""

    LEAVE = "leave"
    REPLACE = "replace"
    STRIP = "strip"
    """Remove the matched prefix or suffix (prefix and suffix patterns only)."""


class OnMatch(enum.Enum):
    """What the search does after a rule matched."""

    STOP = "stop"
    CONTINUE = "continue"


class RuleProtocol(enum.Enum):
    """Protocol of the requests a search rule applies to."""

    ANY = "any"
    SIP = "sip"
    H323 = "h323"


class RuleMode(enum.Enum):
    """Search rule mode."""

    ALIAS_PATTERN_MATCH = "alias pattern match"
    """The rule applies when its pattern matches the alias."""
    ANY_ALIAS = "any alias"
    """The rule applies to every alias (its pattern is not used)."""


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a rule's regex the way routing uses it (aliases compare case-insensitively)."""
    return re.compile(pattern, re.IGNORECASE)


def _field_error(name: str, message: str) -> ConfigError:
    return ConfigError(name, message)


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise _field_error(name, f"must be {bound}, got {value}")


def _tls_name(name: str, value: str | None) -> str | None:
    """A certificate name (DNS name, or an address for an IP SAN), normalised; None stays."""
    if value is None:
        return None
    if not value.strip():
        raise _field_error(name, "must not be empty (leave the key out for none)")
    try:
        return parse_host(value)
    except ValueError as exc:
        raise _field_error(name, str(exc)) from None


def _check_networks(name: str, cidrs: Iterable[str]) -> tuple[str, ...]:
    """CIDR strings, normalised; ``name[i]`` is named on a bad one."""
    found = []
    for index, cidr in enumerate(cidrs):
        try:
            found.append(str(ipaddress.ip_network(cidr.strip())))
        except ValueError as exc:
            raise _field_error(f"{name}[{index}]", f"not a network in CIDR form: {exc}") from None
    if not found:
        raise _field_error(name, "empty: media could be sent nowhere")
    return tuple(found)


_LAB_RANGES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128",
                 "fc00::/7")
)


def _is_lab_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Inside loopback or RFC 1918 / RFC 4193 space (``is_private`` calls 0.0.0.0/0 private)."""
    return any(
        network.version == lab.version and network.subnet_of(lab)  # type: ignore[arg-type]
        for lab in _LAB_RANGES
    )


def _address(transport: Transport | None, port: int | None) -> dict[str, Any]:
    """Field metadata: how to parse a transport address string for this field."""
    return {"address": (transport, port)}


# -- sections ----------------------------------------------------------------------------


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
                raise _field_error(name, "must not be empty")
            try:
                parse_host(value)
            except ValueError as exc:
                raise _field_error(name, str(exc)) from None
        if not self.cluster_fqdn:
            object.__setattr__(self, "cluster_fqdn", self.fqdn)
        _check_range("drain_timeout", self.drain_timeout, 0)
        _check_range("management_recent_calls", self.management_recent_calls, 1)
        _check_range("management_call_messages", self.management_call_messages, 1)
        _check_range("management_call_packets", self.management_call_packets, 0)

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
            raise _field_error("address", f"not an IP address: {self.address!r}") from None
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
            raise _field_error("address", str(exc)) from None
        _check_range("port", self.port, 1, 65535)
        if not self.username:
            raise _field_error("username", "must not be empty")


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
        hosts = []
        for index, host in enumerate(self.destinations):
            try:
                hosts.append(parse_host(host))
            except ValueError as exc:
                raise _field_error(f"destinations[{index}]", str(exc)) from None
        object.__setattr__(self, "destinations", tuple(hosts))
        _check_range("port", self.port, 1, 65535)
        if self.enabled and not self.destinations:
            raise _field_error("destinations", "the broker is enabled but has no destinations")

    def targets(self) -> tuple[HostPort, ...]:
        """Each IM&P node with the broker port."""
        return tuple(HostPort(host, self.port) for host in self.destinations)


@dataclass(frozen=True, slots=True)
class B2buaConfig:
    """``[b2bua]``: the Microsoft interoperability B2BUA."""

    listen: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.0.1", 65072),
        metadata=_address(Transport.TLS, 65072),
    )
    """Listener toward Microsoft (TLS 65072)."""
    ms_destination: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.0.1", 5061),
        metadata=_address(Transport.TLS, 5061),
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
        _check_range("max_calls", self.max_calls, 1)
        _check_range("min_se", self.min_se, 90)
        _check_range("session_expires", self.session_expires, self.min_se)
        if not self.ice_timeout > 0:
            raise _field_error("ice_timeout", "must be positive")
        if not self.media_relatch_after > 0:
            raise _field_error("media_relatch_after", "must be positive")
        turn = self.turn_client_ports
        media = self.media_ports
        if turn is not None and turn.first <= media.last and media.first <= turn.last:
            raise _field_error("turn_client_ports", f"{turn.first}-{turn.last} overlaps "
                               f"media_ports {media.first}-{media.last}")
        object.__setattr__(self, "ms_tls_name", _tls_name("ms_tls_name", self.ms_tls_name))
        object.__setattr__(
            self, "allowed_networks", _check_networks("allowed_networks", self.allowed_networks)
        )
        if self.offer_turn and not self.turn_servers:
            raise _field_error("offer_turn", "true but b2bua.turn_servers is empty")
        seen: set[str] = set()
        for index, host in enumerate(self.trusted_hosts):
            if host.address in seen:
                raise _field_error(
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
        metadata=_address(None, None),
    )
    """SIP listeners (UDP/TCP 5060, TLS 5061)."""

    def __post_init__(self) -> None:
        if not self.listen:
            raise _field_error("listen", "at least one listener is needed")
        if len(set(self.listen)) != len(self.listen):
            raise _field_error("listen", "a listener is listed twice")


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
        _check_range("max_connections", self.max_connections, 0)
        _check_range("max_connections_per_source", self.max_connections_per_source, 0)
        _check_range("message_timeout", self.message_timeout, 0)
        _check_range("idle_timeout", self.idle_timeout, 0)
        _check_range("max_unsent_bytes", self.max_unsent_bytes, 0)
        _check_range("max_message_size", self.max_message_size, 1024, 1 << 24)
        _check_range("tls_handshake_timeout", self.tls_handshake_timeout, 0.1)

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


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """``[[zones]]``: a neighbor zone (Unified CM ...)."""

    name: str
    """Zone name, unique; search rules target it by name."""
    peers: tuple[str, ...]
    """1 to 6 peer addresses."""
    type: ZoneType = ZoneType.NEIGHBOR
    """Zone type."""
    transport: Transport = Transport.TCP
    """SIP transport toward the peers."""
    port: int = 0
    """SIP port of the peers; 0 (unset) means 5060, or 5061 for TLS."""
    hop_count: int = 15
    """Max-Forwards ceiling on requests sent into the zone."""
    monitor: bool = True
    """Probe the peers with OPTIONS and show Active or the failure."""
    monitor_interval: float = 30.0
    """Seconds between OPTIONS probes of each peer."""
    media_encryption: MediaEncryption = MediaEncryption.AUTO
    """SRTP toward the zone: auto, force_encrypted, force_unencrypted, best_effort."""
    tls_name: str | None = None
    """TLS: certificate name expected of every peer (``cucm.video.example.com``); unset:
    each peer's address, checked against the certificate's IP SANs."""
    media_latching: MediaLatching | None = None
    """Video-side latching toward this zone; unset: ``b2bua.media_latching``."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise _field_error("name", "must not be empty")
        if self.name == MICROSOFT_ZONE:
            raise _field_error("name", f"{MICROSOFT_ZONE!r} is the automatic zone's name")
        if not 1 <= len(self.peers) <= MAX_ZONE_PEERS:
            raise _field_error(
                "peers", f"a zone needs 1 to {MAX_ZONE_PEERS} peer addresses, got {len(self.peers)}"
            )
        hosts = []
        for index, peer in enumerate(self.peers):
            try:
                hosts.append(parse_host(peer))
            except ValueError as exc:
                raise _field_error(f"peers[{index}]", str(exc)) from None
        if len(set(hosts)) != len(hosts):
            raise _field_error("peers", "a peer is listed twice")
        object.__setattr__(self, "peers", tuple(hosts))
        if self.port == 0:
            object.__setattr__(self, "port", self.transport.default_port)
        _check_range("port", self.port, 1, 65535)
        _check_range("hop_count", self.hop_count, 1, 255)
        if not self.monitor_interval > 0:
            raise _field_error("monitor_interval", "must be positive")
        object.__setattr__(self, "tls_name", _tls_name("tls_name", self.tls_name))

    def destinations(self) -> tuple[TransportAddress, ...]:
        """Where requests into this zone go, one per peer."""
        return tuple(TransportAddress(self.transport, peer, self.port) for peer in self.peers)


def _check_pattern(
    pattern_type: PatternType,
    pattern: str,
    behavior: PatternBehavior,
    replace: str | None,
    label: str,
) -> None:
    """Shared checks of search rules and transforms; errors name the field."""
    if pattern_type is PatternType.REGEX:
        try:
            compiled = compile_regex(pattern)
        except re.error as exc:
            raise _field_error("pattern", f"invalid regular expression in {label}: {exc}") from None
        if behavior is PatternBehavior.REPLACE and replace is not None:
            try:
                # sub() parses the template before searching, so "" checks group refs.
                compiled.sub(replace, "")
            except (re.error, IndexError) as exc:
                raise _field_error("replace", f"invalid replacement in {label}: {exc}") from None
    elif not pattern:
        raise _field_error("pattern", f"must not be empty in {label}")
    if behavior is PatternBehavior.REPLACE and replace is None:
        raise _field_error("replace", f"required in {label} (behavior is 'replace')")
    if behavior is PatternBehavior.STRIP and pattern_type not in (
        PatternType.PREFIX,
        PatternType.SUFFIX,
    ):
        raise _field_error("behavior", f"'strip' needs pattern_type prefix or suffix in {label}")


@dataclass(frozen=True, slots=True)
class SearchRuleConfig:
    """``[[search_rules]]``: where an alias is looked for."""

    name: str
    """Rule name, unique; shown in the search history."""
    target: str
    """Zone the request goes to (a ``[[zones]]`` name or the Microsoft zone)."""
    priority: int = 100
    """1-65534; lower numbers are tried first, equal ones in file order."""
    source: str = "any"
    """``any`` or the name of the zone the request must come from."""
    protocol: RuleProtocol = RuleProtocol.ANY
    """Requests of which protocol the rule applies to."""
    mode: RuleMode = RuleMode.ALIAS_PATTERN_MATCH
    """Alias pattern match, or any alias."""
    pattern_type: PatternType = PatternType.PREFIX
    """How ``pattern`` is compared."""
    pattern: str = ""
    """The pattern (a regex must match the whole alias)."""
    behavior: PatternBehavior = PatternBehavior.LEAVE
    """What a match does to the alias."""
    replace: str | None = None
    """Replacement (``\\1`` back-references for regex) when behavior is replace."""
    on_match: OnMatch = OnMatch.STOP
    """Stop the search, or continue it with the resulting alias."""
    enabled: bool = True
    """Disabled rules are kept but never match."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise _field_error("name", "must not be empty")
        _check_range("priority", self.priority, 1, 65534)
        if not self.source:
            raise _field_error("source", "must not be empty")
        label = f"rule {self.name!r}"
        if self.mode is RuleMode.ALIAS_PATTERN_MATCH:
            _check_pattern(self.pattern_type, self.pattern, self.behavior, self.replace, label)
        elif self.behavior is not PatternBehavior.LEAVE:
            raise _field_error("behavior", f"must be 'leave' in {label} (mode is 'any alias')")


@dataclass(frozen=True, slots=True)
class TransformConfig:
    """``[[transforms]]``: alias rewrites applied before the search."""

    pattern: str
    """The pattern (a regex must match the whole alias)."""
    priority: int = 100
    """1-65534; lower numbers are tried first; the first match is the only one applied."""
    pattern_type: PatternType = PatternType.PREFIX
    """How ``pattern`` is compared."""
    behavior: PatternBehavior = PatternBehavior.LEAVE
    """What a match does to the alias."""
    replace: str | None = None
    """Replacement when behavior is replace."""
    enabled: bool = True
    """Disabled transforms are kept but never match."""
    name: str = ""
    """Label in the search history; defaults to ``transform <priority>``."""

    def __post_init__(self) -> None:
        _check_range("priority", self.priority, 1, 65534)
        if not self.name:
            object.__setattr__(self, "name", f"transform {self.priority}")
        label = f"transform {self.name!r}"
        _check_pattern(self.pattern_type, self.pattern, self.behavior, self.replace, label)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole configuration."""

    system: SystemConfig = SystemConfig()
    b2bua: B2buaConfig = B2buaConfig()
    video: VideoConfig = VideoConfig()
    transport: TransportLimitsConfig = TransportLimitsConfig()
    zones: tuple[ZoneConfig, ...] = ()
    search_rules: tuple[SearchRuleConfig, ...] = ()
    transforms: tuple[TransformConfig, ...] = ()

    def __post_init__(self) -> None:
        names: set[str] = set()
        for index, zone in enumerate(self.zones):
            if zone.name in names:
                raise ConfigError(f"zones[{index}].name", f"duplicate zone name {zone.name!r}")
            names.add(zone.name)
        names.add(MICROSOFT_ZONE)
        rule_names: set[str] = set()
        for index, rule in enumerate(self.search_rules):
            key = f"search_rules[{index}]"
            if rule.name in rule_names:
                raise ConfigError(f"{key}.name", f"duplicate search rule name {rule.name!r}")
            rule_names.add(rule.name)
            if rule.target not in names:
                raise ConfigError(
                    f"{key}.target",
                    f"rule {rule.name!r} targets unknown zone {rule.target!r}"
                    f" (zones: {', '.join(sorted(names))})",
                )
            if rule.source != "any" and rule.source not in names:
                raise ConfigError(
                    f"{key}.source",
                    f"rule {rule.name!r}: source must be 'any' or a zone name, got {rule.source!r}",
                )

    @property
    def warnings(self) -> tuple[str, ...]:
        """Alarms a valid configuration still raises (logged and shown at start-up)."""
        found = []
        count = len(self.b2bua.trusted_hosts)
        if count > TRUSTED_HOSTS_NOMINAL_LIMIT:
            found.append(
                f"b2bua.trusted_hosts: {count} trusted hosts exceed the nominal limit of"
                f" {TRUSTED_HOSTS_NOMINAL_LIMIT} (recommended fewer than 50)"
            )
        if not self.b2bua.trusted_hosts:
            found.append("b2bua.trusted_hosts: empty, every Microsoft request will get 403")
        if self.b2bua.encryption is Encryption.REQUIRED and (
            self.b2bua.ms_destination.transport is not Transport.TLS
        ):
            found.append(
                "b2bua.encryption: 'required' but b2bua.ms_destination is not TLS"
                " (SRTP keys would travel in clear)"
            )
        if len(self.b2bua.media_ports) < 8:
            found.append("b2bua.media_ports: fewer than 8 ports, no call can be served")
        if self.b2bua.ms_tls_name and self.b2bua.ms_destination.transport is not Transport.TLS:
            found.append("b2bua.ms_tls_name: set but b2bua.ms_destination is not TLS (unused)")
        for index, zone in enumerate(self.zones):
            if zone.tls_name and zone.transport is not Transport.TLS:
                found.append(f"zones[{index}].tls_name: set but zone {zone.name!r} is not TLS"
                             " (unused)")
        for index, cidr in enumerate(self.b2bua.allowed_networks):
            if not _is_lab_network(ipaddress.ip_network(cidr)):
                found.append(f"b2bua.allowed_networks[{index}]: {cidr} includes public"
                             " addresses: media may leave the lab")
        return tuple(found)

    def zone(self, name: str) -> ZoneConfig | None:
        """The ``[[zones]]`` entry called ``name``."""
        for zone in self.zones:
            if zone.name == name:
                return zone
        return None

    def summary(self) -> str:
        """One line for ``--check-config``."""
        b2bua = self.b2bua
        return (
            f"{self.system.fqdn} (cluster {self.system.cluster_fqdn}); B2BUA {b2bua.listen}"
            f" -> {b2bua.ms_destination}, encryption {b2bua.encryption.value},"
            f" max_calls {b2bua.max_calls}, media {b2bua.media_ports};"
            f" {_count(len(b2bua.trusted_hosts), 'trusted host')},"
            f" {_count(len(self.zones), 'zone')}, {_count(len(self.search_rules), 'search rule')},"
            f" {_count(len(self.transforms), 'transform')}"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


# -- loading -----------------------------------------------------------------------------

_SECTIONS: dict[str, type[Any]] = {
    "system": SystemConfig,
    "b2bua": B2buaConfig,
    "video": VideoConfig,
    "transport": TransportLimitsConfig,
}
_LISTS: dict[str, type[Any]] = {
    "zones": ZoneConfig,
    "search_rules": SearchRuleConfig,
    "transforms": TransformConfig,
}


def from_mapping(data: Mapping[str, Any]) -> GatewayConfig:
    """A :class:`GatewayConfig` from a parsed TOML document."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise wrong_type(key, "table", value)
            kwargs[key] = build(_SECTIONS[key], value, key)
        elif key in _LISTS:
            if not isinstance(value, list):
                raise wrong_type(key, "array of tables", value)
            items = []
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    raise wrong_type(f"{key}[{index}]", "table", item)
                items.append(build(_LISTS[key], item, f"{key}[{index}]"))
            kwargs[key] = tuple(items)
        else:
            known = list(_SECTIONS) + list(_LISTS)
            close = difflib.get_close_matches(key, known, n=1)
            raise UnknownKeyError(key, f"did you mean '{close[0]}'?" if close else "")
    return GatewayConfig(**kwargs)


def _apply_override(data: dict[str, Any], dotted: str, text: str, origin: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in _SECTIONS or not key:
        raise ConfigError(
            dotted,
            f"{origin}: only [system], [b2bua], [video] and [transport] keys can be overridden",
        )
    hint = field_hint(_SECTIONS[section], key)
    if hint is None:
        raise UnknownKeyError(dotted, f"from {origin}")
    set_dotted(data, dotted, parse_override_value(hint, text))


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``GATEWAY_<SECTION>_<KEY>`` variables as (dotted key, value, origin).

    Only the sections ``system``, ``b2bua``, ``video`` and ``transport`` are read; other
    ``GATEWAY_*`` variables belong to other tools and are left alone.
    """
    found = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_") and len(rest) > len(section) + 1:
                found.append((f"{section}.{rest[len(section) + 1 :]}", value, name))
                break
    return found


def loads(
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
) -> GatewayConfig:
    """Parse TOML text, apply environment then flag overrides, validate."""
    return _validated(parse_toml(text), environ, overrides)


def load(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
) -> GatewayConfig:
    """Read and validate a configuration file (see :func:`loads`)."""
    return _validated(read_toml(path), environ, overrides)


def _validated(
    data: dict[str, Any], environ: Mapping[str, str] | None, overrides: Iterable[str]
) -> GatewayConfig:
    data = copy.deepcopy(data)
    changes = env_overrides(environ or {}) + flag_overrides(overrides)
    origins: dict[str, str] = {}
    for dotted, value, origin in changes:
        _apply_override(data, dotted, value, origin)
        origins[dotted] = origin
    try:
        return from_mapping(data)
    except ConfigError as exc:
        # An item's error (``b2bua.allowed_networks[1]``) comes from the override of its key.
        culprit = next((origin for dotted, origin in origins.items()
                        if exc.key == dotted or exc.key.startswith((f"{dotted}[", f"{dotted}."))),
                       None)
        if culprit is not None and not isinstance(exc, UnknownKeyError):
            raise ConfigError(exc.key, f"{exc.message} (from {culprit})") from None
        raise
