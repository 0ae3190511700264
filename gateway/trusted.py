"""Trusted hosts: only requests from configured Microsoft hosts are Microsoft traffic.

A request arriving on the Microsoft side from any other address is refused with 403 and
a reason phrase naming the address, logged, and never routed. The check applies to
requests only; an ACK cannot be answered and is dropped (see :attr:`TrustRefusal.answer`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import TrustedHost, TrustedHostType

__all__ = ["TrustRefusal", "TrustedHosts", "normalise_address"]

logger = logging.getLogger(__name__)


def normalise_address(address: str) -> str | None:
    """Canonical text of an IP address (IPv4-mapped IPv6 as IPv4); None if not an IP."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True, slots=True)
class TrustRefusal:
    """A Microsoft-side request from an untrusted address."""

    address: str
    """Source address of the request."""
    method: str
    """Request method."""
    status: int = 403
    """SIP status to answer with."""

    @property
    def reason(self) -> str:
        """Reason phrase of the 403."""
        return f"Forbidden: {self.address} is not a trusted host"

    @property
    def answer(self) -> bool:
        """False for ACK, which gets no response."""
        return self.method != "ACK"


class TrustedHosts:
    """Lookup of trusted hosts by source address."""

    def __init__(self, hosts: Iterable[TrustedHost]) -> None:
        self._hosts: dict[tuple[str, TrustedHostType], TrustedHost] = {}
        for host in hosts:
            normal = normalise_address(host.address)
            if normal is not None:
                self._hosts[(normal, host.type)] = host

    def __len__(self) -> int:
        return len(self._hosts)

    def lookup(
        self, address: str, kind: TrustedHostType = TrustedHostType.MICROSOFT
    ) -> TrustedHost | None:
        """The trusted host at ``address``, or None."""
        normal = normalise_address(address)
        return None if normal is None else self._hosts.get((normal, kind))

    def check(
        self, address: str, method: str, kind: TrustedHostType = TrustedHostType.MICROSOFT
    ) -> TrustRefusal | None:
        """None when ``address`` is trusted; else the refusal (logged here)."""
        if self.lookup(address, kind) is not None:
            return None
        refusal = TrustRefusal(address, method)
        logger.warning("refused %s from %s: not a trusted %s host", method, address, kind.value)
        return refusal
