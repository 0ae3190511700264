"""How a SIP transport manager is configured, and what its limits did.

:class:`TransportSettings` bounds hostile or careless peers (connections in total and per
source address, a deadline per message, bytes queued for a peer that does not read) and
says where outbound TCP/TLS comes from; :class:`TransportCounters` counts what those
limits did.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sip.port_range import DEFAULT_OUTBOUND_PORTS, PortRange

__all__ = ["TransportCounters", "TransportSettings", "source_host_of"]


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Transport configuration."""

    outbound_ports: PortRange | None = DEFAULT_OUTBOUND_PORTS
    """Source ports for outbound TCP/TLS; None lets the kernel choose."""
    source_host: str | None = None
    """Local address outbound TCP/TLS connections bind to; None for any. A host that
    listens on one address should send from it too (see :func:`source_host_of`): peers
    (and the gateway's zone match) know it by that address."""
    max_message_size: int = 65536
    """Largest accepted message (headers + body); larger gets 413."""
    idle_timeout: float | None = 600.0
    """Close a stream connection after this many seconds without traffic; None never."""
    keepalive_interval: float | None = None
    """RFC 5626 CRLF ping interval on outbound streams; None sends no pings."""
    keepalive_timeout: float = 10.0
    """Close an outbound stream when a pong is this late (RFC 5626 §4.4.1: 10 s)."""
    connect_timeout: float = 10.0
    """Seconds to establish a TCP connection."""
    tls_handshake_timeout: float = 10.0
    """Seconds for a TLS handshake (both directions)."""
    max_connections: int | None = 2048
    """Stream connections held at once (inbound, outbound and TLS handshakes in progress;
    Kamailio's and OpenSIPS's tcp_max_connections default). At the cap the oldest idle
    inbound connection is closed for a new one; None: no cap. Never above half the
    process's open-file limit (the rest is for media sockets and files)."""
    max_connections_per_source: int | None = 512
    """Inbound stream connections from one source address (a quarter of the total, so one
    address cannot take every slot); at the cap its own oldest idle one is closed."""
    message_timeout: float | None = 20.0
    """Seconds from a message's first byte to its last on a stream (Kamailio's
    tcp_msg_read_timeout); later, the connection is closed. None: no deadline."""
    max_unsent_bytes: int | None = 1 << 20
    """Bytes queued for a stream peer that does not read; past it the connection is
    closed (16 messages of the largest size). None: no cap."""


@dataclass(slots=True)
class TransportCounters:
    """What the transport limits did, since start (for metrics and tests)."""

    refused: int = 0
    """Inbound connections closed at once: the cap was reached and nothing was idle."""
    evicted: int = 0
    """Idle inbound connections closed to make room for a new one."""
    message_deadline: int = 0
    """Connections closed because a message was not completed in time."""
    slow_reader: int = 0
    """Connections closed because the peer did not read what we sent."""
    idle: int = 0
    """Connections closed after the idle timeout."""
    oversized: int = 0
    """Messages over the size limit passed over (the connection kept)."""
    tls_failed: int = 0
    """Inbound TLS handshakes that failed."""


def source_host_of(listen_host: str) -> str | None:
    """The ``source_host`` for a role listening on ``listen_host`` (None for a wildcard)."""
    try:
        if ipaddress.ip_address(listen_host.strip("[]")).is_unspecified:
            return None
    except ValueError:
        return None  # a name: let the kernel pick the route's address
    return listen_host.strip("[]")
