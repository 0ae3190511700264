"""Configuration of a simulated SIP endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sip.timers import TimerSettings
from sip.transport import Transport

__all__ = ["EndpointConfig", "EndpointFile", "ListenSpec", "SipTarget", "load_endpoint"]


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


SipTarget = ListenSpec
"""A registrar or proxy address, written like a listener: ``tcp:127.0.3.1:5060``."""


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
    registrar: SipTarget | None = None
    """Register our AOR there (Unified CM) at start, refresh before expiry."""
    registrar_tls_name: str | None = None
    """Certificate name of the registrar/proxy over TLS (``cucm.video.example.com``)."""
    register_expires: int = 3600
    """Expires we ask for (the registrar may grant less)."""
    proxy: SipTarget | None = None
    """Send calls here (default: the registrar, when there is one)."""
    srtp: bool = False
    """Offer RTP/SAVP with SDES keys and accept SRTP offers (plain RTP is still accepted)."""
    delayed_offer: bool = False
    """Send INVITE without SDP (the offer comes in the 2xx, our answer in the ACK)."""
    send_media: bool = True
    """Send RTP once a call connects (False: only receive and count)."""
    latch: bool = True
    """Send media to where the peer's RTP comes from once it arrives."""
    audio_codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")
    """Offered audio codecs, in preference order (telephone-event is always added)."""

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
        if not 0 < self.register_expires <= 86400:
            raise ValueError("register_expires must be 1-86400 seconds")
        known = {"g722", "pcmu", "pcma"}
        if not self.audio_codecs or any(c.lower() not in known for c in self.audio_codecs):
            raise ValueError(f"audio_codecs must be some of G722, PCMU, PCMA: {self.audio_codecs}")

    @property
    def outbound_proxy(self) -> SipTarget | None:
        """Where calls go first: the proxy, else the registrar, else nowhere (direct)."""
        return self.proxy if self.proxy is not None else self.registrar

    @property
    def user(self) -> str:
        return self.aor.removeprefix("sip:").partition("@")[0]

    @property
    def domain(self) -> str:
        return self.aor.removeprefix("sip:").partition("@")[2]


@dataclass(frozen=True, slots=True)
class EndpointFile:
    """An endpoint's TOML file (lab/configs/endpoint-3001.toml): EndpointConfig in strings."""

    aor: str
    """Address of record ``user@domain``."""
    listen: tuple[str, ...]
    """Listeners, ``transport:host:port``."""
    certs: str = ""
    """Lab PKI directory ("" for none)."""
    cert_name: str = "endpoint"
    """Which lab certificate to present."""
    client_cert: bool = True
    """Present our certificate on outbound TLS."""
    require_client_cert: bool = False
    """TLS listeners refuse clients without a certificate."""
    tls_server_name: str = ""
    """Name outbound TLS checks ("" for the target host)."""
    media_host: str = ""
    """Address for RTP ("" for the first listener's host)."""
    ring_time: float = 0.0
    """Seconds between 180 and 200."""
    auto_answer: bool = True
    """Answer incoming calls."""
    video: bool = True
    """Offer video."""
    registrar: str = ""
    """``transport:host:port`` of the registrar ("" for none)."""
    registrar_tls_name: str = ""
    """Registrar certificate name over TLS."""
    register_expires: int = 3600
    """Expires asked for."""
    proxy: str = ""
    """Outbound proxy for calls ("" for the registrar)."""
    srtp: bool = False
    """SDES-SRTP."""
    delayed_offer: bool = False
    """INVITE without SDP."""
    send_media: bool = True
    """Send RTP."""
    latch: bool = True
    """Follow the source of received RTP."""
    audio_codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")
    """Audio codecs in preference order."""
    t1: float = 0.5
    """RFC 3261 T1 (s)."""

    def to_config(self) -> EndpointConfig:
        """The runtime configuration; ConfigError names the key at fault."""
        from gateway.configkit import ConfigError

        def spec(key: str, text: str) -> ListenSpec:
            try:
                return ListenSpec.parse(text)
            except ValueError as error:
                raise ConfigError(key, str(error)) from None

        listen = tuple(spec(f"listen[{i}]", text) for i, text in enumerate(self.listen))
        try:
            return EndpointConfig(
                aor=self.aor,
                listen=listen,
                certs=Path(self.certs) if self.certs else None,
                cert_name=self.cert_name,
                client_cert=self.client_cert,
                require_client_cert=self.require_client_cert,
                tls_server_name=self.tls_server_name or None,
                media_host=self.media_host or None,
                ring_time=self.ring_time,
                auto_answer=self.auto_answer,
                video=self.video,
                timers=TimerSettings(t1=self.t1, t2=max(4.0, self.t1)),
                registrar=spec("registrar", self.registrar) if self.registrar else None,
                registrar_tls_name=self.registrar_tls_name or None,
                register_expires=self.register_expires,
                proxy=spec("proxy", self.proxy) if self.proxy else None,
                srtp=self.srtp,
                delayed_offer=self.delayed_offer,
                send_media=self.send_media,
                latch=self.latch,
                audio_codecs=self.audio_codecs,
            )
        except ValueError as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError("", str(error)) from None


def load_endpoint(path: str | Path, overrides: tuple[str, ...] = ()) -> EndpointConfig:
    """An endpoint TOML file (with ``--set`` overrides) as an :class:`EndpointConfig`."""
    from gateway.configkit import load_dataclass

    return load_dataclass(EndpointFile, path, overrides=overrides).to_config()
