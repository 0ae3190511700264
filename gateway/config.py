"""Gateway configuration: one TOML file loaded into a tree of frozen dataclasses.

Sections mirror the product's pages: ``[system]``, ``[b2bua]`` (with ``[b2bua.broker]``),
``[video]``, ``[transport]`` (SIP listener limits), ``[[zones]]``, ``[[search_rules]]`` and
``[[transforms]]``. Every field has
the product's documented default (SPEC.md §2-3). An unknown key, a wrong type or a bad
value raises :class:`ConfigError` naming the key (``b2bua.max_calls: expected integer,
got string``). Precedence: defaults < file < environment (``GATEWAY_<SECTION>_<KEY>``)
< command-line overrides (``section.key=value``).

This module holds the whole tree and its loading; the pieces live in ``config_enums``
(values as written in the file), ``config_sections`` (the single tables),
``config_routing`` (zones, search rules, transforms) and ``config_checks`` (validation
helpers). Every public name is re-exported here: import them from ``gateway.config``.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config_checks import compile_regex, is_lab_network
from gateway.config_enums import (
    Encryption,
    IceStunDialect,
    MediaEncryption,
    MediaLatching,
    OnMatch,
    PatternBehavior,
    PatternType,
    RuleMode,
    RuleProtocol,
    TrustedHostType,
    ZoneType,
)
from gateway.config_routing import MAX_ZONE_PEERS as MAX_ZONE_PEERS
from gateway.config_routing import (
    MICROSOFT_ZONE,
    SearchRuleConfig,
    TransformConfig,
    ZoneConfig,
)
from gateway.config_sections import LOOPBACK_NETWORKS as LOOPBACK_NETWORKS
from gateway.config_sections import (
    B2buaConfig,
    BrokerConfig,
    SystemConfig,
    TransportLimitsConfig,
    TrustedHost,
    TurnServer,
    VideoConfig,
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
from sip.transport import Transport

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

TRUSTED_HOSTS_NOMINAL_LIMIT = 25
"""Above this many trusted hosts the product raises an alarm (recommended < 50)."""
ENV_PREFIX = "GATEWAY_"


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
            if not is_lab_network(ipaddress.ip_network(cidr)):
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
