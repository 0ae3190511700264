"""Routing sections of the gateway configuration, lists of tables: ``[[zones]]``,
``[[search_rules]]`` and ``[[transforms]]``."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config_checks import (
    check_hosts,
    check_pattern,
    check_range,
    check_tls_name,
    field_error,
)
from gateway.config_enums import (
    MediaEncryption,
    MediaLatching,
    OnMatch,
    PatternBehavior,
    PatternType,
    RuleMode,
    RuleProtocol,
    ZoneType,
)
from sip.transport import Transport, TransportAddress

__all__ = [
    "MAX_ZONE_PEERS",
    "MICROSOFT_ZONE",
    "SearchRuleConfig",
    "TransformConfig",
    "ZoneConfig",
]

MICROSOFT_ZONE = "To Microsoft destination via B2BUA"
"""Name of the zone the product creates by itself toward the Microsoft destination."""
MAX_ZONE_PEERS = 6


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
            raise field_error("name", "must not be empty")
        if self.name == MICROSOFT_ZONE:
            raise field_error("name", f"{MICROSOFT_ZONE!r} is the automatic zone's name")
        if not 1 <= len(self.peers) <= MAX_ZONE_PEERS:
            raise field_error(
                "peers", f"a zone needs 1 to {MAX_ZONE_PEERS} peer addresses, got {len(self.peers)}"
            )
        hosts = check_hosts("peers", self.peers)
        if len(set(hosts)) != len(hosts):
            raise field_error("peers", "a peer is listed twice")
        object.__setattr__(self, "peers", hosts)
        if self.port == 0:
            object.__setattr__(self, "port", self.transport.default_port)
        check_range("port", self.port, 1, 65535)
        check_range("hop_count", self.hop_count, 1, 255)
        if not self.monitor_interval > 0:
            raise field_error("monitor_interval", "must be positive")
        object.__setattr__(self, "tls_name", check_tls_name("tls_name", self.tls_name))

    def destinations(self) -> tuple[TransportAddress, ...]:
        """Where requests into this zone go, one per peer."""
        return tuple(TransportAddress(self.transport, peer, self.port) for peer in self.peers)


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
            raise field_error("name", "must not be empty")
        check_range("priority", self.priority, 1, 65534)
        if not self.source:
            raise field_error("source", "must not be empty")
        label = f"rule {self.name!r}"
        if self.mode is RuleMode.ALIAS_PATTERN_MATCH:
            check_pattern(self.pattern_type, self.pattern, self.behavior, self.replace, label)
        elif self.behavior is not PatternBehavior.LEAVE:
            raise field_error("behavior", f"must be 'leave' in {label} (mode is 'any alias')")


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
        check_range("priority", self.priority, 1, 65534)
        if not self.name:
            object.__setattr__(self, "name", f"transform {self.priority}")
        label = f"transform {self.name!r}"
        check_pattern(self.pattern_type, self.pattern, self.behavior, self.replace, label)
