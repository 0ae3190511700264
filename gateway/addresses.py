"""Address strings of the gateway configuration.

Listen and destination addresses are written ``"tls:127.0.2.1:65072"`` (transport, host,
port; an IPv6 host in brackets). Parts may be left out where the setting has a default:
``"127.0.1.1"`` toward Microsoft means TLS on 5061. Management and peer addresses are
``"host"`` or ``"host:port"``; port ranges are ``"56000-57000"``.
Every parser raises ``ValueError`` with a message that does not name the key: the
configuration loader adds the key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sip.port_range import PortRange
from sip.transport import Transport, TransportAddress

__all__ = [
    "HostPort",
    "parse_host",
    "parse_host_port",
    "parse_port",
    "parse_port_range",
    "parse_transport_address",
]

_TRANSPORTS = ("udp", "tcp", "tls")
# host [":" port]; host is a name, an IPv4 address or "[" IPv6 "]"
_HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::(?P<port>\d{1,5}))?$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host and a port without a transport (management address, zone peer)."""

    host: str
    """IP address or host name; IPv6 without brackets."""
    port: int
    """Port number."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_port(value: int | str) -> int:
    """A port number 1..65535."""
    if isinstance(value, str):
        if not value.isdigit():
            raise ValueError(f"invalid port {value!r}")
        value = int(value)
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} out of range 1-65535")
    return value


def _check_host(text: str) -> str:
    if text.startswith("["):
        inner = text[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError(f"invalid IPv6 address {inner!r}") from None
    if re.fullmatch(r"[0-9.]+", text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"invalid IPv4 address {text!r}") from None
    if not _NAME_RE.match(text) or len(text) > 253:
        raise ValueError(f"invalid host name {text!r}")
    return text.lower()


def parse_host(text: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name, normalised."""
    text = text.strip()
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"
    return _check_host(text)


def _split(text: str, what: str) -> tuple[str | None, str, str | None]:
    """(transport or None, host as written, port or None)."""
    rest = text.strip()
    transport: str | None = None
    head, sep, tail = rest.partition(":")
    if sep and head.lower() in _TRANSPORTS:
        transport, rest = head, tail
    elif sep and head.isalpha() and (":" in tail or "." in tail):
        raise ValueError(f"invalid {what} {text!r}: unknown transport {head!r} (udp, tcp, tls)")
    if rest.count(":") >= 2 and not rest.startswith("["):
        # A bare IPv6 address: no port can follow it without brackets.
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            pass
        else:
            return transport, f"[{rest}]", None
    match = _HOST_PORT_RE.match(rest)
    if match is None:
        raise ValueError(f"invalid {what} {text!r}: expected like 'tls:127.0.2.1:65072'")
    return transport, match["host"], match["port"]


def parse_transport_address(
    text: str,
    *,
    default_transport: Transport | None = None,
    default_port: int | None = None,
) -> TransportAddress:
    """Parse ``"tls:127.0.2.1:65072"``.

    The transport may be omitted when ``default_transport`` is given. The port may be
    omitted: then ``default_port``, else the transport's default (5060, TLS 5061).
    """
    transport_text, host_text, port_text = _split(text, "address")
    if transport_text is None:
        if default_transport is None:
            raise ValueError(
                f"invalid address {text!r}: the transport is missing (udp:, tcp: or tls:)"
            )
        transport = default_transport
    else:
        transport = Transport.parse(transport_text)
    host = _check_host(host_text)
    if port_text is not None:
        port = parse_port(port_text)
    elif default_port is not None:
        port = default_port
    else:
        port = transport.default_port
    return TransportAddress(transport, host, port)


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """Parse ``"127.0.0.1:9090"`` (or ``"127.0.0.1"`` when ``default_port`` is given)."""
    transport_text, host_text, port_text = _split(text, "host:port")
    if transport_text is not None:
        raise ValueError(f"invalid host:port {text!r}: no transport expected here")
    host = _check_host(host_text)
    if port_text is not None:
        return HostPort(host, parse_port(port_text))
    if default_port is None:
        raise ValueError(f"invalid host:port {text!r}: the port is missing")
    return HostPort(host, default_port)


def parse_port_range(text: str | int) -> PortRange:
    """Parse ``"56000-57000"`` (or a single port) into a :class:`PortRange`."""
    if isinstance(text, int):
        return PortRange(text, text)
    return PortRange.parse(text)
