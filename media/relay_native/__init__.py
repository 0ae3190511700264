"""The native packet path (``_relay.c``, built by setup.py against libsrtp2) behind the
``media.relay`` interface. Importing this package fails with ImportError where the extension
was not built; ``media.relay`` then uses the pure-Python path."""

from __future__ import annotations

from typing import cast

from media.relay import Address, ForwardingPlan, Relay, StunSink, Verdict
from media.relay_native import _relay  # type: ignore[attr-defined]

__all__ = ["NativeHub", "NativeRelay", "loadgen"]

loadgen = _relay.loadgen


class NativeRelay:
    """media.relay.Relay over the C relay (which owns the fds and the packet path)."""

    __slots__ = ("_core", "plan")

    def __init__(self, fd_a: int = -1, fd_b: int = -1) -> None:
        self._core = _relay.Relay(fd_a, fd_b)
        self.plan: ForwardingPlan | None = None

    @property
    def on_stun(self) -> StunSink | None:
        return cast(StunSink | None, self._core.on_stun)

    @on_stun.setter
    def on_stun(self, sink: StunSink | None) -> None:
        self._core.on_stun = sink

    def publish(self, plan: ForwardingPlan) -> None:
        rng = plan.ssrc_range
        self._core.publish(plan.a_to_b, plan.b_to_a, plan.rtcp, plan.a.native(),
                           plan.b.native(), -1 if rng is None else rng.first,
                           -1 if rng is None else rng.last)
        self.plan = plan

    def feed(self, side: int, data: bytes, source: Address,
             now_ns: int) -> tuple[Verdict, bytes | None, Address | None]:
        verdict, out, dest = self._core.feed(side, data, source, now_ns)
        return Verdict(verdict), out, dest

    def sendto(self, side: int, data: bytes, address: Address) -> None:
        self._core.sendto(side, data, address)

    def counters(self, side: int) -> dict[str, int]:
        return cast(dict[str, int], self._core.counters(side))

    def latched(self, side: int) -> Address | None:
        return cast(Address | None, self._core.latched(side))

    def close(self) -> None:
        self._core.close()


class NativeHub:
    """media.relay.Hub over the C hub (one epoll set, batch buffers shared by its relays)."""

    __slots__ = ("_core",)

    def __init__(self, timestamps: bool = False) -> None:
        self._core = _relay.Hub(timestamps=timestamps)

    def register(self, relay: Relay) -> None:
        if not isinstance(relay, NativeRelay):
            raise TypeError("a NativeRelay")
        self._core.register(relay._core)

    def unregister(self, relay: Relay) -> None:
        if not isinstance(relay, NativeRelay):
            raise TypeError("a NativeRelay")
        self._core.unregister(relay._core)

    def poll(self, timeout_ms: int = 0) -> int:
        return int(self._core.poll(timeout_ms))

    def run(self, seconds: float) -> None:
        self._core.run(seconds)

    def fileno(self) -> int:
        return int(self._core.fileno())

    def latency(self, reset: bool = False) -> list[int]:
        return cast(list[int], self._core.latency(reset))

    def stats(self) -> dict[str, int]:
        return cast(dict[str, int], self._core.stats())
