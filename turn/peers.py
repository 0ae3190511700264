"""Which peer addresses a relay may talk to: never an open relay into private space."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Loopback, "this network", link-local, multicast, private, shared (CGNAT), reserved and
# their IPv6 counterparts: a TURN server in a DMZ must not become a way into them.
DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "64:ff9b::/96",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Denies the ranges above unless a network in ``allow`` covers the address."""

    allow: tuple[IPNetwork, ...] = ()
    """Networks exempted from the deny list (``--allow-peer``)."""

    @classmethod
    def from_strings(cls, cidrs: Iterable[str]) -> PeerPolicy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def permits(self, host: str) -> bool:
        """True when relaying to ``host`` is allowed; unparsable addresses are refused."""
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        # An IPv4-mapped IPv6 address reaches the IPv4 host: judge that host.
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.allow):
            return True
        return not any(addr in net for net in DENIED_NETWORKS)
