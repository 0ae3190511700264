"""Configuration of the simulated Microsoft side: Front End, Edge and clients.

Each role reads its own TOML file with ``gateway.configkit.load_dataclass`` (unknown keys
and wrong types are errors naming the key). Defaults are the lab topology of
docs/lab-topology.md, so an empty file describes the lab's FE / Edge / alice.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from gateway.addresses import HostPort
from gateway.configkit import ConfigError
from sip.port_range import PortRange
from sip.transport import Transport, TransportAddress, source_host_of

__all__ = [
    "LAB_PASSWORD",
    "AvEdgeConfig",
    "ClientConfig",
    "EdgeConfig",
    "FrontEndConfig",
    "StaticRoute",
    "TurnUser",
    "UserAccount",
]

LAB_PASSWORD = "Lab-Passw0rd"
"""The lab users' sign-in password (FE accounts and client configs default to it)."""
LAB_MRAS_SECRET = "lab-mras-key"
"""The key the lab's FE (MRAS) and A/V Edge share: MRAS issues TURN credentials under it and
the Edge's MS-TURN checks them ([MS-AVEDGEA]; ``turn.auth.mras_credentials``)."""
TURN_DIALECTS = ("ms-turn", "rfc8656")
AV_ENCRYPTION_POLICIES = ("RequireEncryption", "SupportEncryption", "DoNotSupportEncryption")


def _address(transport: Transport | None, port: int | None) -> dict[str, Any]:
    """Field metadata read by configkit: how a transport address string is completed."""
    return {"address": (transport, port)}


@dataclass(frozen=True, slots=True)
class StaticRoute:
    """``[[static_routes]]``: requests for ``domain`` go to ``destination`` over TLS."""

    domain: str
    """Request-URI host this route takes (``video.example.com``)."""
    destination: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "lyncexp.video.example.com", 65072),
        metadata=_address(Transport.TLS, 65072),
    )
    """Next hop (name resolved with the lab host table, or an address)."""
    tls_name: str = ""
    """Name the next hop's certificate must carry (default: the destination host)."""

    def __post_init__(self) -> None:
        if not self.domain:
            raise ValueError("a static route needs a domain")

    @property
    def server_name(self) -> str:
        return self.tls_name or self.destination.host


@dataclass(frozen=True, slots=True)
class UserAccount:
    """``[[accounts]]``: a user who may sign in (NTLM against this password)."""

    aor: str
    """``user@domain``; the NTLM account name is the user part (or the whole AOR)."""
    password: str

    def __post_init__(self) -> None:
        user, at, domain = self.aor.removeprefix("sip:").partition("@")
        if not at or not user or not domain:
            raise ValueError(f"account aor {self.aor!r} is not user@domain")
        if not self.password:
            raise ValueError(f"account {self.aor} has an empty password")


@dataclass(frozen=True, slots=True)
class TurnUser:
    """One A/V Edge TURN account."""

    username: str
    password: str


LAB_TURN_USERS = (TurnUser("alice.parkes", "lab-turn"), TurnUser("david.jones", "lab-turn"))


@dataclass(frozen=True, slots=True)
class FrontEndConfig:
    """The Lync Front End: registrar for ``domain`` and stateful proxy."""

    listen: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.1.1", 5061),
        metadata=_address(Transport.TLS, 5061),
    )
    """SIP listener (TLS 5061; clients need no certificate, server peers present one)."""
    domain: str = "example.com"
    """The SIP domain we are registrar for."""
    certs: str = "certs"
    """Lab PKI directory (made when missing)."""
    cert_name: str = "fe"
    """Lab certificate we present (as server and as client)."""
    trusted_applications: tuple[str, ...] = (
        "lyncexp.video.example.com",
        "exp01.video.example.com",
    )
    """Trusted application pool FQDNs: their certificate names make a peer trusted."""
    trusted_servers: tuple[str, ...] = ("edge.example.com",)
    """Servers of our own deployment (the Edge) that relay client traffic."""
    static_routes: tuple[StaticRoute, ...] = (StaticRoute("video.example.com"),)
    """Routes for domains that are not ours."""
    registration_expires: int = 3600
    """Binding lifetime granted when the client asks for none (or more)."""
    require_client_cert: bool = False
    """Refuse TLS peers without a certificate (a real FE does not: clients sign in with
    NTLM inside SIP; trusted servers are still known by their certificate)."""
    target_name: str = "fe.example.com"
    """Our FQDN as NTLM ``targetname`` (and in signatures)."""
    accounts: tuple[UserAccount, ...] = (
        UserAccount("alice.parkes@example.com", LAB_PASSWORD),
        UserAccount("david.jones@example.com", LAB_PASSWORD),
    )
    """Users who may sign in."""
    av_encryption: str = "RequireEncryption"
    """``ucPC2PCAVEncryption`` in provisioning: RequireEncryption, SupportEncryption or
    DoNotSupportEncryption (the gateway requires SRTP, so the lab requires it)."""
    keep_alive: int = 300
    """``ms-keep-alive`` timeout clients are told (seconds)."""
    turn_host: str = "127.0.1.3"
    """The A/V Edge relay MRAS names (its own address, beside the Access Edge's)."""
    turn_udp_port: int = 3478
    turn_tcp_port: int = 443
    """The A/V Edge's TCP port MRAS names (443, beside 3478, as a real A/V Edge)."""
    mras_secret: str = LAB_MRAS_SECRET
    """Key shared with the A/V Edge: MRAS hands out time-limited credentials made with it
    ("" : hand out the static ``turn_users`` accounts instead, the older behaviour)."""
    turn_users: tuple[TurnUser, ...] = LAB_TURN_USERS
    """A/V Edge accounts MRAS hands out without ``mras_secret`` (the user's own, else the
    first)."""
    t1: float = 0.5
    """RFC 3261 T1, seconds."""

    def __post_init__(self) -> None:
        if self.listen.transport is not Transport.TLS:
            raise ValueError("the Front End listens on TLS only")
        if self.registration_expires <= 0:
            raise ValueError("registration_expires must be positive")
        if self.av_encryption not in AV_ENCRYPTION_POLICIES:
            raise ConfigError("av_encryption", f"{self.av_encryption!r} is not one of "
                              + ", ".join(AV_ENCRYPTION_POLICIES))
        if self.keep_alive <= 0:
            raise ValueError("keep_alive must be positive")

    @property
    def passwords(self) -> dict[str, str]:
        """NTLM account name (user part, and the whole AOR), lower case -> password."""
        out: dict[str, str] = {}
        for account in self.accounts:
            aor = account.aor.removeprefix("sip:").lower()
            out[aor] = account.password
            out.setdefault(aor.partition("@")[0], account.password)
        return out


@dataclass(frozen=True, slots=True)
class AvEdgeConfig:
    """``[turn]``: the A/V Edge TURN/STUN service."""

    enabled: bool = True
    """Run the TURN server."""
    listen: str = "127.0.1.3"
    """Address of the TURN/STUN listener (UDP and TCP): the A/V Edge's own external address,
    as a real Edge gives the Access Edge and the A/V Edge one each (both serve 443)."""
    port: int = 3478
    """TURN/STUN port (0: any free port)."""
    tcp_ports: tuple[int, ...] = (443,)
    """Further TCP-only TURN ports (443, for MS-TURN clients behind firewalls that pass only
    it); each bound only when it can be."""
    mras_secret: str = LAB_MRAS_SECRET
    """Key shared with the FE's MRAS: MS-TURN accepts the credentials MRAS issues under it
    ("": only the static ``users``)."""
    relay_ports: PortRange = field(default=PortRange(50000, 59999))
    """Relay port range."""
    realm: str = "example.com"
    """Long-term credential realm."""
    users: tuple[TurnUser, ...] = LAB_TURN_USERS
    """Static accounts (standard TURN clients have them in their config; MS-TURN clients
    get MRAS credentials instead)."""
    allow_peers: tuple[str, ...] = ("127.0.0.0/8",)
    """Peers relays may reach (the lab is all loopback)."""
    max_lifetime: int = 3600
    """Longest allocation lifetime granted (seconds; also the default when shorter than
    600): an allocation its client never deletes ends after it."""

    def __post_init__(self) -> None:
        if self.max_lifetime <= 0:
            raise ConfigError("max_lifetime", f"{self.max_lifetime}: must be positive")


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The Lync Edge: Access Edge SIP proxy + A/V Edge TURN."""

    listen: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.1.2", 5061),
        metadata=_address(Transport.TLS, 5061),
    )
    """Access Edge listener for external clients (TLS 5061)."""
    extra_ports: tuple[int, ...] = (443,)
    """Further TLS ports on the same address (443), each bound only when it can be."""
    front_end: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.1.1", 5061),
        metadata=_address(Transport.TLS, 5061),
    )
    """Where client traffic goes (the FE pool)."""
    front_end_name: str = "fe.example.com"
    """Certificate name of the FE."""
    internal_source: str = "127.0.1.2"
    """Address our connections to the FE leave from: the Edge's leg on the internal network
    (a multi-homed Edge sends from the network it talks to; ``listen`` is its external leg).
    "" lets the kernel pick the address of its route to the FE."""
    internal_names: tuple[str, ...] = ("fe.example.com", "pool.example.com")
    """Certificate names that mark a connection as coming from the internal side."""
    certs: str = "certs"
    """Lab PKI directory (made when missing)."""
    cert_name: str = "edge"
    """Lab certificate we present."""
    t1: float = 0.5
    """RFC 3261 T1, seconds."""
    turn: AvEdgeConfig = field(default_factory=AvEdgeConfig)
    """The A/V Edge."""

    def __post_init__(self) -> None:
        if self.listen.transport is not Transport.TLS:
            raise ValueError("the Access Edge listens on TLS only")
        if self.internal_source:
            try:
                ipaddress.ip_address(self.internal_source.strip("[]"))
            except ValueError:
                raise ConfigError("internal_source",
                                  f"{self.internal_source!r} is not an IP address") from None

    @property
    def source_host(self) -> str | None:
        """The internal leg's address for outgoing connections (None: the kernel's choice)."""
        return source_host_of(self.internal_source) if self.internal_source else None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A Lync / Skype for Business client."""

    aor: str = "alice.parkes@example.com"
    """Our SIP address (user@domain)."""
    display_name: str = ""
    """Display name in From."""
    host: str = "127.0.1.10"
    """Local address: SIP connections and media candidates bind here."""
    registrar: TransportAddress = field(
        default=TransportAddress(Transport.TLS, "127.0.1.1", 5061),
        metadata=_address(Transport.TLS, 5061),
    )
    """FE (internal client) or Access Edge (external client)."""
    registrar_name: str = "fe.example.com"
    """Certificate name of the registrar."""
    certs: str = "certs"
    """Lab PKI directory (made when missing)."""
    cert_name: str = ""
    """Lab client certificate to present ("" for none: clients sign in with NTLM)."""
    password: str = LAB_PASSWORD
    """Sign-in password (NTLM, [MS-SIPAE])."""
    login: str = ""
    """NTLM account (``DOMAIN\\user`` or ``user``; default: the AOR's user part)."""
    expires: int = 3600
    """Registration lifetime asked for."""
    retry_min: float = 1.0
    """First wait before signing in again after a failure (doubles up to retry_max)."""
    retry_max: float = 60.0
    auto_answer: bool = True
    """Answer incoming calls (else ring until cancelled)."""
    answer_delay: float = 0.0
    """Seconds of ringing before answering."""
    answer_mki: bool = True
    """Answering, take the offered key with an MKI (else the one without) when both came."""
    video: bool = True
    """Offer video on outgoing calls."""
    stun: HostPort | None = None
    """STUN server for server-reflexive candidates (the A/V Edge)."""
    turn: HostPort | None = None
    """TURN server for relay candidates (the A/V Edge, or the DMZ TURN)."""
    turn_username: str = ""
    turn_password: str = ""
    """Static TURN account, for ``turn_dialect = "rfc8656"``."""
    turn_dialect: str = "ms-turn"
    """"ms-turn": as Lync / Skype for Business clients, ask the FE's MRAS (``mrasUri`` from
    provisioning) for the A/V Edge and its credentials and allocate with MS-TURN there;
    "rfc8656": standard TURN on ``turn`` with the static account (the older behaviour)."""
    relay_only: bool = False
    """Offer only relay candidates (an external client behind a strict firewall)."""
    audio_pps: int = 50
    """Audio packets per second (20 ms frames)."""
    video_fps: int = 30
    """Video packets per second."""
    ice_timeout: float = 15.0
    """Seconds ICE checks may take before the call is hung up."""
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """The only networks our media and STUN/TURN may go to (CIDRs); candidates and servers
    elsewhere are ignored."""
    stun_dialect: str = "ms-ice2"
    """STUN of our ICE checks: "ms-ice2" ([MS-ICE2] version 2, as Lync 2013 / Skype for
    Business clients send it) or "rfc5389" (standard, the lab's older behaviour)."""
    t1: float = 0.5
    """RFC 3261 T1, seconds."""
    im_mode: str = "session"
    """IM as real clients send it: "session" (INVITE m=message, then MESSAGEs in the dialog:
    Lync 2010 and later, pidgin-sipe) or "page" (one page-mode MESSAGE per text: older)."""

    def __post_init__(self) -> None:
        if self.im_mode not in ("session", "page"):
            raise ConfigError("im_mode", f"{self.im_mode!r}: not \"session\" or \"page\"")
        if self.turn_dialect not in TURN_DIALECTS:
            raise ConfigError("turn_dialect", f"{self.turn_dialect!r}: ms-turn or rfc8656")
        if self.stun_dialect not in ("ms-ice2", "rfc5389"):
            raise ConfigError("stun_dialect", f"{self.stun_dialect!r}: ms-ice2 or rfc5389")
        networks = []
        for index, cidr in enumerate(self.allowed_networks):
            try:
                networks.append(str(ipaddress.ip_network(cidr.strip())))
            except ValueError as error:
                raise ConfigError(f"allowed_networks[{index}]",
                                  f"not a network in CIDR form: {error}") from None
        if not networks:
            raise ConfigError("allowed_networks", "empty: media could be sent nowhere")
        object.__setattr__(self, "allowed_networks", tuple(networks))
        user, at, domain = self.aor.removeprefix("sip:").partition("@")
        if not at or not user or not domain:
            raise ValueError(f"aor {self.aor!r} is not user@domain")
        if self.relay_only and self.turn is None:
            raise ValueError("relay_only needs a turn server")
        if self.audio_pps <= 0 or self.video_fps <= 0:
            raise ValueError("audio_pps and video_fps must be positive")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("retry_min must be positive and at most retry_max")

    @property
    def user(self) -> str:
        return self.aor.removeprefix("sip:").partition("@")[0]

    @property
    def domain(self) -> str:
        return self.aor.removeprefix("sip:").partition("@")[2]
