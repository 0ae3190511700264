"""Relay port numbers: random free ports from a range, even ports, reservations."""

from __future__ import annotations

import random


class PortPool:
    """Hands out port numbers from ``[low, high]``; the adapter reports ports it could not bind."""

    def __init__(self, low: int, high: int, rng: random.Random | None = None) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low = low
        self.high = high
        self._free = set(range(low, high + 1))
        self._rng = rng or random.Random()

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    @property
    def available(self) -> int:
        return len(self._free)

    def take(
        self, *, even: bool = False, pair: bool = False, avoid: frozenset[int] = frozenset()
    ) -> int | None:
        """A random free port (even if asked; with ``pair``, port+1 free too), or None."""
        port = self._first_fit(self._sample(), even, pair, avoid)
        if port is None:
            everything = list(self._free)
            self._rng.shuffle(everything)
            port = self._first_fit(everything, even, pair, avoid)
        if port is None:
            return None
        self._free.discard(port)
        if pair:
            self._free.discard(port + 1)
        return port

    def _first_fit(
        self, ports: list[int], even: bool, pair: bool, avoid: frozenset[int]
    ) -> int | None:
        for p in ports:
            if p in avoid or (even and p % 2) or (pair and (p + 1) not in self._free):
                continue
            return p
        return None

    def take_specific(self, port: int) -> bool:
        if port in self._free:
            self._free.discard(port)
            return True
        return False

    def release(self, port: int) -> None:
        if self.low <= port <= self.high:
            self._free.add(port)

    def _sample(self) -> list[int]:
        # A random order without copying the whole set for every allocation when it is large.
        free = self._free
        if len(free) <= 64:
            ports = list(free)
            self._rng.shuffle(ports)
            return ports
        picks = [self._rng.randint(self.low, self.high) for _ in range(64)]
        return [p for p in picks if p in free]
