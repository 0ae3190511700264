"""Configuration of the simulated Unified CM and IM&P roles (typed TOML via
``gateway.configkit``: unknown keys and wrong types are errors naming the key)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.configkit import ConfigError, load_dataclass
from lab.endpoint.config import ListenSpec

__all__ = ["CucmConfig", "ImpConfig", "TrunkConfig", "load_cucm", "load_imp", "parse_listen"]


def parse_listen(values: tuple[str, ...], key: str) -> tuple[ListenSpec, ...]:
    """``("udp:127.0.3.1:5060", ...)`` as listeners; ConfigError names ``key[i]``."""
    if not values:
        raise ConfigError(key, "at least one listener is needed")
    specs = []
    for index, text in enumerate(values):
        try:
            specs.append(ListenSpec.parse(text))
        except ValueError as error:
            raise ConfigError(f"{key}[{index}]", str(error)) from None
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """The SIP trunk to the gateway (SPEC §3 "CUCM profile")."""

    domains: tuple[str, ...] = ("example.com",)
    """Route patterns sent to the gateway: Request-URI hosts (the Microsoft domain)."""
    destination: str = "tls:127.0.2.1:5061"
    """The gateway's video-side listener: tls:127.0.2.1:5061 or tcp:127.0.2.1:5060."""
    server_hostname: str = "lyncexp.video.example.com"
    """Name the gateway's TLS certificate is checked against."""
    invite_expires: float = 180.0
    """Timer Invite Expires (s): an INVITE unanswered this long is cancelled (Timer C)."""
    max_message_size: int = 11000
    """Max incoming message (bytes); larger gets 413."""

    def __post_init__(self) -> None:
        try:
            ListenSpec.parse(self.destination)
        except ValueError as error:
            raise ConfigError("destination", str(error)) from None
        if self.invite_expires <= 0:
            raise ConfigError("invite_expires", "must be > 0")
        if not 1024 <= self.max_message_size <= 65536:
            raise ConfigError("max_message_size", "must be 1024-65536 bytes")

    @property
    def target(self) -> ListenSpec:
        return ListenSpec.parse(self.destination)


@dataclass(frozen=True, slots=True)
class CucmConfig:
    """A simulated Unified CM: registrar and proxy for the video domain, trunk to the gateway."""

    domain: str = "video.example.com"
    """The video domain (registrations and calls for ``<DN>@domain``)."""
    names: tuple[str, ...] = ("cucm.video.example.com",)
    """Other host names that mean this node in a Request-URI."""
    listen: tuple[str, ...] = (
        "udp:127.0.3.1:5060",
        "tcp:127.0.3.1:5060",
        "tls:127.0.3.1:5061",
    )
    """Listeners (``transport:host:port``, port 0: any free port)."""
    certs: str = ""
    """Lab PKI directory (made when missing); needed for TLS."""
    cert_name: str = "cucm"
    """Which lab certificate to present (and to use as client on the trunk)."""
    require_client_cert: bool = False
    """TLS listeners refuse peers without a certificate."""
    dn_pattern: str = r"3\d{3}"
    """Directory numbers this node registers and routes (a full-match regex)."""
    min_expires: int = 1
    """Shortest registration accepted (423 Interval Too Brief below)."""
    max_expires: int = 3600
    """Longest registration granted (longer requests are cut to it)."""
    record_route: bool = True
    """Stay in the path of calls (Record-Route) so in-dialog requests come back through us."""
    t1: float = 0.5
    """RFC 3261 T1 (s)."""
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    """The SIP trunk to the gateway."""

    def __post_init__(self) -> None:
        parse_listen(self.listen, "listen")
        if self.certs == "" and any(s.transport.value == "TLS" for s in self.listeners):
            raise ConfigError("certs", "a TLS listener needs the lab PKI directory")
        try:
            re.compile(self.dn_pattern)
        except re.error as error:
            raise ConfigError("dn_pattern", f"not a regex: {error}") from None
        if not 0 < self.min_expires <= self.max_expires:
            raise ConfigError("min_expires", "must be > 0 and <= max_expires")
        if self.t1 <= 0:
            raise ConfigError("t1", "must be > 0")

    @property
    def listeners(self) -> tuple[ListenSpec, ...]:
        return parse_listen(self.listen, "listen")


@dataclass(frozen=True, slots=True)
class ImpConfig:
    """A simulated IM&P node: takes SIP SIMPLE from the gateway's broker."""

    domain: str = "video.example.com"
    """Our domain (the host of our URI)."""
    listen: tuple[str, ...] = ("tcp:127.0.3.2:5060", "tls:127.0.3.2:5061")
    """Listeners (``transport:host:port``)."""
    certs: str = ""
    """Lab PKI directory; needed for TLS."""
    cert_name: str = "imp"
    """Which lab certificate to present."""
    require_client_cert: bool = False
    """TLS listeners refuse peers without a certificate."""
    subscription_expires: int = 3600
    """Longest subscription granted (s)."""
    presence: str = "open"
    """PIDF basic status sent in NOTIFY ("open" or "closed")."""
    t1: float = 0.5
    """RFC 3261 T1 (s)."""

    def __post_init__(self) -> None:
        parse_listen(self.listen, "listen")
        if self.certs == "" and any(s.transport.value == "TLS" for s in self.listeners):
            raise ConfigError("certs", "a TLS listener needs the lab PKI directory")
        if self.presence not in ("open", "closed"):
            raise ConfigError("presence", "expected 'open' or 'closed'")
        if self.subscription_expires <= 0:
            raise ConfigError("subscription_expires", "must be > 0")

    @property
    def listeners(self) -> tuple[ListenSpec, ...]:
        return parse_listen(self.listen, "listen")


def load_cucm(path: str | Path, overrides: tuple[str, ...] = ()) -> CucmConfig:
    """``lab/configs/cucm.toml`` (and ``--set`` overrides) as a :class:`CucmConfig`."""
    return load_dataclass(CucmConfig, path, overrides=overrides)


def load_imp(path: str | Path, overrides: tuple[str, ...] = ()) -> ImpConfig:
    """``lab/configs/imp.toml`` (and ``--set`` overrides) as an :class:`ImpConfig`."""
    return load_dataclass(ImpConfig, path, overrides=overrides)
