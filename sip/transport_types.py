"""What the SIP transport layer talks in: transports, addresses, connections, messages.

The value types every other transport module (and the stack above) shares, with the
two address helpers the transport modules use when binding and logging.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass, field

from sip.message import Request, Response

__all__ = [
    "ConnectionInfo",
    "ReceivedMessage",
    "Transport",
    "TransportAddress",
    "TransportError",
    "address_family",
    "format_address",
]


class Transport(enum.Enum):
    """A SIP transport, named as in the Via header's sent-protocol."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"

    @property
    def reliable(self) -> bool:
        """True for stream transports (RFC 3261 §17: no retransmission timers)."""
        return self is not Transport.UDP

    @property
    def default_port(self) -> int:
        """5061 for TLS, 5060 otherwise (RFC 3261 §19.1.2)."""
        return 5061 if self is Transport.TLS else 5060

    @classmethod
    def parse(cls, text: str) -> Transport:
        """Case-insensitive lookup (``"tls"`` -> ``Transport.TLS``)."""
        try:
            return cls(text.strip().upper())
        except ValueError:
            raise ValueError(f"unknown SIP transport {text!r}") from None


@dataclass(frozen=True, slots=True)
class TransportAddress:
    """Where a SIP message comes from or goes to."""

    transport: Transport
    """UDP, TCP or TLS."""
    host: str
    """IP address (or host name to resolve when sending)."""
    port: int
    """Port number."""

    @property
    def reliable(self) -> bool:
        """True when the transport is a stream (TCP or TLS)."""
        return self.transport.reliable

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.value}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A connection (stream) or a socket (UDP) known to the manager."""

    id: int
    """Unique id within the manager; pass it to ``send(connection_id=...)``."""
    transport: Transport
    """Transport of the connection."""
    local: TransportAddress
    """Our side."""
    remote: TransportAddress | None
    """The peer of a stream connection; None for a UDP socket."""
    outbound: bool
    """True when we opened it."""
    peer_names: tuple[str, ...] = ()
    """TLS: the peer certificate's subject CN then SAN DNS names (empty if none verified)."""
    server_hostname: str | None = None
    """Outbound TLS: the name the server certificate was checked against."""


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A parsed SIP message and where it came from."""

    message: Request | Response
    """The message."""
    source: TransportAddress
    """The address it came from (for streams, the connection's remote address)."""
    connection: ConnectionInfo
    """The connection (or UDP socket) it arrived on; responses go back there."""
    data: bytes = field(repr=False)
    """The message as received, for traces."""



class TransportError(ConnectionError):
    """A message could not be sent (no route, connection refused, handshake failed...)."""


def format_address(address: tuple[str, int] | None) -> str:
    """``host:port`` (IPv6 in brackets) for logs; ``?`` when unknown."""
    if address is None:
        return "?"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_family(host: str) -> int:
    """AF_INET6 for an IPv6 literal, else AF_INET (names included)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET
