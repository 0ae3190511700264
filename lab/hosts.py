"""The lab's host table: the one place that maps lab names to loopback addresses.

See docs/lab-topology.md. The lab resolves names itself (no DNS), so every role and test
agrees on where fe.example.com or lyncexp.video.example.com lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

HOSTS: Mapping[str, str] = MappingProxyType(
    {
        "fe.example.com": "127.0.1.1",
        "pool.example.com": "127.0.1.1",
        "edge.example.com": "127.0.1.2",
        "sip.example.com": "127.0.1.2",
        "access.example.com": "127.0.1.2",
        "av.example.com": "127.0.1.3",
        "exp01.video.example.com": "127.0.2.1",
        "lyncexp.video.example.com": "127.0.2.1",
        "cucm.video.example.com": "127.0.3.1",
        "imp.video.example.com": "127.0.3.2",
        "turn.video.example.com": "127.0.4.1",
    }
)
"""Lab FQDN -> address."""


def resolve(name: str, table: Mapping[str, str] = HOSTS) -> str:
    """The address of a lab name; an address is returned as it is.

    Raises LookupError naming the host when it is not in the table.
    """
    host = name.strip("[]").lower().rstrip(".")
    if host in table:
        return table[host]
    if host.replace(".", "").isdigit() or ":" in host:
        return host
    raise LookupError(f"{name!r} is not a lab host (known: {', '.join(sorted(table))})")
