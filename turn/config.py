"""TURN server configuration: a frozen dataclass, loaded from TOML, overridden by flags.

Precedence: defaults < file < ``--set key=value`` < the other command-line flags. Unknown
keys and wrong types are errors that name the key. Example file::

    listen = "127.0.4.1"
    ports = "3478-3483"
    relay_ports = "24000-29999"
    realm = "example.com"
    allow_peers = ["127.0.0.0/8"]
    [users]
    GatewayB2BUA = "secret"
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Everything the TURN server can be told."""

    listen: str = "127.0.0.1"
    """IP address the UDP and TCP listeners bind to (any 127.x.y.z works on Linux)."""
    ports: tuple[int, int] = (3478, 3478)
    """Listening port range, inclusive (large systems: 3478-3483); (0, 0) picks a free port."""
    tcp_ports: tuple[int, ...] = ()
    """Further TCP-only listening ports (the A/V Edge's TCP 443 beside 3478)."""
    relay_ports: tuple[int, int] = (24000, 29999)
    """Relay port range, inclusive, shared by UDP and TCP relays."""
    relay_address: str | None = None
    """IP address relays bind to; defaults to ``listen``."""
    external_address: str | None = None
    """IP address advertised in XOR-RELAYED-ADDRESS (behind NAT); defaults to the relay address."""
    realm: str = "example.com"
    """Long-term credential realm."""
    users: tuple[tuple[str, str], ...] = ()
    """Static accounts as (username, password)."""
    auth_secret: str | None = None
    """TURN REST API shared secret (usernames ``expiry:user``)."""
    ms_turn_secret: str | None = None
    """MRAS key the A/V Edge shares with the FE: MS-TURN accepts the credentials the FE's
    MRAS service issues under it (``turn.auth.mras_credentials``) until they expire."""
    allow_peers: tuple[str, ...] = ()
    """CIDRs exempted from the peer deny list (loopback, private ranges ...)."""
    udp: bool = True
    """Listen on UDP."""
    tcp: bool = True
    """Listen on TCP (and allow RFC 6062 TCP relays)."""
    default_lifetime: int = 600
    """Allocation lifetime when the client asks for none (RFC 8656 §7)."""
    max_lifetime: int = 3600
    """Cap on requested allocation lifetimes."""
    permission_lifetime: int = 300
    """Permission lifetime (RFC 8656 §9)."""
    channel_lifetime: int = 600
    """Channel binding lifetime (RFC 8656 §12)."""
    nonce_lifetime: int = 600
    """Seconds before a nonce goes stale (438)."""
    user_quota: int = 500
    """Allocations one username may hold (486 beyond)."""
    total_quota: int = 6000
    """Allocations the server holds in all (486 beyond)."""
    legacy_channels: bool = True
    """Also accept channel numbers 0x5000-0x7FFF (RFC 5766; coturn's client uses them).
    False keeps to RFC 8656's 0x4000-0x4FFF."""
    connect_timeout: float = 30.0
    """RFC 6062: seconds for an outgoing peer connect and for a ConnectionBind to arrive."""
    software: str = "gateway-emulator TURN"
    """SOFTWARE attribute of responses ('' to omit)."""

    def __post_init__(self) -> None:
        for key in ("ports", "relay_ports"):
            low, high = getattr(self, key)
            if not (0 <= low <= high <= 65535) or (low == 0 and high != 0):
                raise ConfigError(f"{key}: bad port range {low}-{high}")
        for port in self.tcp_ports:
            if not 0 < port <= 65535:
                raise ConfigError(f"tcp_ports: bad port {port}")
        if self.relay_ports[0] == 0:
            raise ConfigError("relay_ports: a relay range is needed")
        for key in ("listen", "relay_address", "external_address"):
            value = getattr(self, key)
            if value is not None:
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ConfigError(f"{key}: not an IP address: {value!r}") from None
        for cidr in self.allow_peers:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"allow_peers: not a CIDR: {cidr!r}") from None
        for key in (
            "default_lifetime",
            "max_lifetime",
            "permission_lifetime",
            "channel_lifetime",
            "nonce_lifetime",
            "user_quota",
            "total_quota",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive")
        if self.default_lifetime > self.max_lifetime:
            raise ConfigError("default_lifetime: larger than max_lifetime")

    @property
    def relay_bind_address(self) -> str:
        return self.relay_address or self.listen

    def replace(self, **changes: Any) -> TurnConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """One line for ``--check-config``."""
        low, high = self.ports
        ports = str(low) if low == high else f"{low}-{high}"
        if self.tcp_ports:
            ports += " (tcp also " + ",".join(str(p) for p in self.tcp_ports) + ")"
        transports = "+".join(t for t, on in (("udp", self.udp), ("tcp", self.tcp)) if on)
        relay = f"{self.relay_bind_address}:{self.relay_ports[0]}-{self.relay_ports[1]}"
        if self.external_address:
            relay += f" (advertised as {self.external_address})"
        users = len(self.users)
        auth = f"{users} user" + ("" if users == 1 else "s")
        if self.auth_secret:
            auth += " + REST API secret"
        if self.ms_turn_secret:
            auth += " + MRAS key (MS-TURN)"
        peers = ", ".join(self.allow_peers) or "none"
        return (f"TURN {self.listen}:{ports} {transports or 'no listener'}, relays {relay},"
                f" realm {self.realm}, {auth}, allowed peers {peers}")


def parse_port_range(text: str | int, key: str = "ports") -> tuple[int, int]:
    """``3478`` or ``"3478-3483"`` -> (low, high)."""
    if isinstance(text, bool):
        raise ConfigError(f"{key}: expected a port or a range like 3478-3483")
    if isinstance(text, int):
        return (text, text)
    low, sep, high = text.strip().partition("-")
    try:
        result = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise ConfigError(
            f"{key}: expected a port or a range like 3478-3483, got {text!r}"
        ) from None
    if not 0 <= result[0] <= result[1] <= 65535:
        raise ConfigError(f"{key}: bad port range {text!r}")
    return result


_FIELDS = {f.name: f for f in dataclasses.fields(TurnConfig)}
_HINTS = typing.get_type_hints(TurnConfig)


def from_mapping(data: dict[str, Any], base: TurnConfig | None = None) -> TurnConfig:
    """Apply a parsed TOML table to ``base`` (defaults when None)."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown configuration key: {key!r}")
        if key in ("ports", "relay_ports"):
            changes[key] = parse_port_range(value, key)
        elif key == "users":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError('users: expected a table of username = "password"')
            changes[key] = tuple(value.items())
        elif key == "tcp_ports":
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ConfigError("tcp_ports: expected a list of port numbers")
            changes[key] = tuple(value)
        elif key == "allow_peers":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError("allow_peers: expected a list of CIDR strings")
            changes[key] = tuple(value)
        else:
            changes[key] = _check_scalar(key, value)
    try:
        return dataclasses.replace(base or TurnConfig(), **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _check_scalar(key: str, value: Any) -> Any:
    hint = _HINTS[key]
    allowed: tuple[type, ...]
    if isinstance(hint, types.UnionType):
        allowed = tuple(a for a in typing.get_args(hint) if a is not type(None))
    else:
        allowed = (hint,)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{key}: expected {_names(allowed)}, got a boolean")
    if not isinstance(value, allowed):
        raise ConfigError(f"{key}: expected {_names(allowed)}, got {type(value).__name__}")
    return value


def _names(allowed: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in allowed)


def apply_overrides(data: dict[str, Any], items: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings (``--set``) written into a parsed table, in place.

    Keys are the file's (``relay_ports``, ``users.NAME``); values are read as TOML
    (``3478``, ``["10.0.0.0/8"]``, ``true``), text keys take the text as it is. Returns
    dotted key -> origin, for naming the flag when the value is refused.
    """
    origins: dict[str, str] = {}
    for item in items:
        dotted, sep, text = item.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted:
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        key, _, user = dotted.partition(".")
        if key not in _FIELDS or (user and key != "users") or (key == "users" and not user):
            raise ConfigError(f"unknown configuration key: {dotted!r} (from --set {dotted})")
        if user:
            users = data.setdefault("users", {})
            if not isinstance(users, dict):
                raise ConfigError('users: expected a table of username = "password"')
            users[user] = text
        else:
            data[key] = _override_value(key, text)
        origins[key] = f"--set {dotted}"
    return origins


def _override_value(key: str, text: str) -> Any:
    hint = _HINTS[key]
    if hint in (str, str | None):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # from_mapping names the key and the type it wants


def load(
    path: str | Path | None, base: TurnConfig | None = None, overrides: Iterable[str] = ()
) -> TurnConfig:
    """Read a TOML file (None: no file); a ``[turn]`` table is used when present (shared
    gateway files); then the ``--set`` ``overrides`` (:func:`apply_overrides`)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if isinstance(data.get("turn"), dict):
            data = data["turn"]
    origins = apply_overrides(data, overrides)
    try:
        return from_mapping(data, base)
    except ConfigError as exc:
        message = str(exc)
        culprit = next((o for k, o in origins.items() if message.startswith(f"{k}:")), None)
        if culprit is None:
            raise
        raise ConfigError(f"{message} (from {culprit})") from None
