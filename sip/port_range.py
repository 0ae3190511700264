"""Outbound source port allocation for SIP connections (sans-IO).

The gateway opens its TCP/TLS connections toward Lync, Unified CM and its traversal peers
from a configured source port range (default 25000-29999), so firewalls can be written
for it. The range is walked round-robin from a cursor: a port that is busy (bound by
someone else, or in TIME_WAIT) is skipped and the walk wraps around at the end.
Binding is left to the caller; this module only decides the order of candidates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["DEFAULT_OUTBOUND_PORTS", "PortCursor", "PortRange"]

_RANGE_RE = re.compile(r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$")


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of port numbers."""

    first: int
    """Lowest port of the range."""
    last: int
    """Highest port of the range (inclusive)."""

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= 65535:
            raise ValueError(f"invalid port range {self.first}-{self.last}")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """Parse ``"25000-29999"`` (or a single port ``"5060"``)."""
        match = _RANGE_RE.match(text)
        if match is not None:
            return cls(int(match.group(1)), int(match.group(2)))
        if text.strip().isdigit():
            port = int(text)
            return cls(port, port)
        raise ValueError(f"invalid port range {text!r}: expected FIRST-LAST")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


DEFAULT_OUTBOUND_PORTS = PortRange(25000, 29999)
"""Gateway Expressway default source ports for outbound SIP TCP/TLS."""


class PortCursor:
    """Round-robin walk over a :class:`PortRange`, remembering where the last walk stopped."""

    __slots__ = ("_next", "range")

    def __init__(self, port_range: PortRange, start: int | None = None) -> None:
        self.range = port_range
        if start is not None and start not in port_range:
            raise ValueError(f"start port {start} outside {port_range}")
        self._next = port_range.first if start is None else start

    @property
    def next_port(self) -> int:
        """The first port the next walk will offer."""
        return self._next

    def candidates(self) -> Iterator[int]:
        """Yield every port of the range once, starting at the cursor and wrapping around.

        The cursor moves past each port as it is yielded, so the next walk starts after
        the port that was taken (round robin) and skipped ports are not retried first.
        """
        for _ in range(len(self.range)):
            port = self._next
            self._next = self.range.first if port == self.range.last else port + 1
            yield port
