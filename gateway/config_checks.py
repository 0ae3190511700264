"""Validation helpers of the gateway configuration's sections: errors name the field.

The sections' ``__post_init__`` raise :class:`ConfigError` with the bare field name;
``configkit.build`` puts the section's key in front (``b2bua.max_calls``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from gateway.addresses import parse_host
from gateway.config_enums import PatternBehavior, PatternType
from gateway.configkit import ConfigError
from sip.transport import Transport

__all__ = [
    "address_metadata",
    "check_networks",
    "check_pattern",
    "check_range",
    "check_tls_name",
    "compile_regex",
    "field_error",
    "is_lab_network",
]


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a rule's regex the way routing uses it (aliases compare case-insensitively)."""
    return re.compile(pattern, re.IGNORECASE)


def field_error(name: str, message: str) -> ConfigError:
    return ConfigError(name, message)


def check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise field_error(name, f"must be {bound}, got {value}")


def check_host(name: str, value: str) -> str:
    """A host name or address, normalised; ``name`` is named when it is not one."""
    try:
        return parse_host(value)
    except ValueError as exc:
        raise field_error(name, str(exc)) from None


def check_hosts(name: str, values: Iterable[str]) -> tuple[str, ...]:
    """Host names or addresses, normalised; ``name[i]`` is named on a bad one."""
    return tuple(check_host(f"{name}[{index}]", value) for index, value in enumerate(values))


def check_tls_name(name: str, value: str | None) -> str | None:
    """A certificate name (DNS name, or an address for an IP SAN), normalised; None stays."""
    if value is None:
        return None
    if not value.strip():
        raise field_error(name, "must not be empty (leave the key out for none)")
    return check_host(name, value)


def check_networks(name: str, cidrs: Iterable[str]) -> tuple[str, ...]:
    """CIDR strings, normalised; ``name[i]`` is named on a bad one."""
    found = []
    for index, cidr in enumerate(cidrs):
        try:
            found.append(str(ipaddress.ip_network(cidr.strip())))
        except ValueError as exc:
            raise field_error(f"{name}[{index}]", f"not a network in CIDR form: {exc}") from None
    if not found:
        raise field_error(name, "empty: media could be sent nowhere")
    return tuple(found)


_LAB_RANGES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128",
                 "fc00::/7")
)


def is_lab_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Inside loopback or RFC 1918 / RFC 4193 space (``is_private`` calls 0.0.0.0/0 private)."""
    return any(
        network.version == lab.version and network.subnet_of(lab)  # type: ignore[arg-type]
        for lab in _LAB_RANGES
    )


def address_metadata(transport: Transport | None, port: int | None) -> dict[str, Any]:
    """Field metadata: how to parse a transport address string for this field."""
    return {"address": (transport, port)}


def check_pattern(
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
            raise field_error("pattern", f"invalid regular expression in {label}: {exc}") from None
        if behavior is PatternBehavior.REPLACE and replace is not None:
            try:
                # sub() parses the template before searching, so "" checks group refs.
                compiled.sub(replace, "")
            except (re.error, IndexError) as exc:
                raise field_error("replace", f"invalid replacement in {label}: {exc}") from None
    elif not pattern:
        raise field_error("pattern", f"must not be empty in {label}")
    if behavior is PatternBehavior.REPLACE and replace is None:
        raise field_error("replace", f"required in {label} (behavior is 'replace')")
    if behavior is PatternBehavior.STRIP and pattern_type not in (
        PatternType.PREFIX,
        PatternType.SUFFIX,
    ):
        raise field_error("behavior", f"'strip' needs pattern_type prefix or suffix in {label}")
