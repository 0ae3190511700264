"""Configuration of a simulated SIP endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sip.timers import TimerSettings
from sip.transport import Transport

__all__ = ["EndpointConfig", "ListenSpec"]


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One listener: ``udp:127.0.3.11:5060`` (port 0: any free port)."""

    transport: Transport
    """UDP, TCP or TLS."""
    host: str
    """Address to bind (IPv6 in brackets in the text form)."""
    port: int
    """Port, 0 for any."""

    @classmethod
    def parse(cls, text: str) -> ListenSpec:
        """Parse ``transport:host:port`` (``tls:[::1]:5061``); ValueError names the problem."""
        name, sep, rest = text.partition(":")
        if not sep:
            raise ValueError(f"listen address {text!r} is not transport:host:port")
        transport = Transport.parse(name)
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise ValueError(f"listen address {text!r} is not transport:[host]:port")
            port_text = tail[1:]
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep:
                raise ValueError(f"listen address {text!r} has no port")
        if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"listen address {text!r} needs a host and a port 0-65535")
        return cls(transport, host, int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.value.lower()}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """What one endpoint is and how it behaves."""

    aor: str
    """Address of record ``user@domain`` (``3001@video.example.com``)."""
    listen: tuple[ListenSpec, ...]
    """Listeners (at least one)."""
    certs: Path | None = None
    """Lab PKI directory (made when missing); needed for TLS. Uses the "endpoint" cert."""
    cert_name: str = "endpoint"
    """Which lab host certificate to present."""
    client_cert: bool = True
    """Present our certificate when we open TLS connections (mutual TLS)."""
    require_client_cert: bool = False
    """TLS listeners: refuse clients without a certificate (default: ask, not require)."""
    tls_server_name: str | None = None
    """Name outbound TLS checks the server certificate against (default: the target host)."""
    media_host: str | None = None
    """Address for RTP sockets and SDP (default: the first listener's host)."""
    ring_time: float = 0.0
    """Seconds between 180 Ringing and 200 OK."""
    auto_answer: bool = True
    """False: ring until CANCELled (or the caller gives up)."""
    video: bool = True
    """Offer video on outgoing calls."""
    timers: TimerSettings = field(default_factory=TimerSettings)
    """RFC 3261 timers."""

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("an endpoint needs at least one listener")
        user, at, domain = self.aor.removeprefix("sip:").partition("@")
        if not at or not user or not domain:
            raise ValueError(f"AOR {self.aor!r} is not user@domain")
        if self.ring_time < 0:
            raise ValueError("ring_time must be >= 0")
        if self.certs is None and any(s.transport is Transport.TLS for s in self.listen):
            raise ValueError("a TLS listener needs --certs DIR")

    @property
    def user(self) -> str:
        return self.aor.removeprefix("sip:").partition("@")[0]

    @property
    def domain(self) -> str:
        return self.aor.removeprefix("sip:").partition("@")[2]
