"""The native packet path (``_relay.c``, built by setup.py against libsrtp2) behind the
``media.relay`` interface. Importing this package fails with ImportError where the extension
was not built; ``media.relay`` then uses the pure-Python path.

SRTP sessions: by default the ones pylibsrtp makes (its wheel's libsrtp runs on OpenSSL, several
times cheaper per packet than Debian's libsrtp2 on NSS), run by the C path through that
library's function addresses (cffi ``ffi.addressof``); ``GATEWAY_MEDIA_SRTP=system`` (or a
pylibsrtp without those internals) makes the C path create its own system libsrtp2 sessions.
"""

from __future__ import annotations

import os
from typing import Any, cast

import pylibsrtp

from media.relay import (
    Address,
    ForwardingPlan,
    LatchSink,
    Relay,
    SidePlan,
    StunSink,
    Verdict,
)

try:
    from media.relay_native import _relay  # type: ignore[attr-defined]
except ImportError as exc:  # the optional build did not happen (no gcc / libsrtp2-dev)
    raise ImportError(f"the native relay (media/relay_native/_relay.c) is not built: {exc}; "
                      "make venv installs its build dependencies") from None

__all__ = ["SRTP_BACKEND", "NativeHub", "NativeRelay", "loadgen"]

loadgen = _relay.loadgen
SRTP_ENV = "GATEWAY_MEDIA_SRTP"
_SRTP_FUNCTIONS = ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp")


def _external_srtp() -> Any:
    """pylibsrtp's cffi ``ffi`` once its functions are handed to the C path, else None."""
    if os.environ.get(SRTP_ENV, "").strip().lower() == "system":
        return None
    try:
        from pylibsrtp._binding import ffi, lib
        addresses = [int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
                     for name in _SRTP_FUNCTIONS]
        probe = pylibsrtp.Session(pylibsrtp.Policy(key=bytes(30),
                                                   ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        int(ffi.cast("uintptr_t", probe._srtp[0]))
    except (ImportError, AttributeError, TypeError):
        return None
    _relay.set_external_srtp(*addresses)
    return ffi


_FFI = _external_srtp()
SRTP_BACKEND = "pylibsrtp" if _FFI is not None else "system"
"""Which libsrtp the native path's SRTP runs on."""


def _session(key: bytes, inbound: bool) -> tuple[pylibsrtp.Session, int]:
    kind = pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    session = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind))
    return session, int(_FFI.cast("uintptr_t", session._srtp[0]))


class NativeRelay:
    """media.relay.Relay over the C relay (which owns the fds and the packet path)."""

    __slots__ = ("_core", "_sessions", "plan")

    def __init__(self, fd_a: int = -1, fd_b: int = -1) -> None:
        self._core = _relay.Relay(fd_a, fd_b)
        self.plan: ForwardingPlan | None = None
        self._sessions: dict[tuple[int, bool], tuple[bytes, tuple[pylibsrtp.Session, int]]] = {}

    def _side(self, index: int, side: SidePlan) -> tuple[Any, ...]:
        """The side's rules as the C path takes them; with the pylibsrtp backend, its keys as
        sessions made here (kept while the key is, so replay state survives a re-publish)."""
        fields = side.native()
        if _FFI is None:
            return fields
        out: list[Any] = list(fields)
        for slot, key, inbound in ((3, side.rx_key, True), (5, side.tx_key, False)):
            if key is None:
                self._sessions.pop((index, inbound), None)
                continue
            held = self._sessions.get((index, inbound))
            if held is None or held[0] != key:
                held = (key, _session(key, inbound))
                self._sessions[(index, inbound)] = held
            out[slot] = held[1]
        return tuple(out)

    @property
    def on_stun(self) -> StunSink | None:
        return cast(StunSink | None, self._core.on_stun)

    @on_stun.setter
    def on_stun(self, sink: StunSink | None) -> None:
        self._core.on_stun = sink

    @property
    def on_latch(self) -> LatchSink | None:
        return cast(LatchSink | None, self._core.on_latch)

    @on_latch.setter
    def on_latch(self, sink: LatchSink | None) -> None:
        self._core.on_latch = sink

    def publish(self, plan: ForwardingPlan) -> None:
        rng = plan.ssrc_range
        self._core.publish(plan.a_to_b, plan.b_to_a, plan.rtcp, self._side(0, plan.a),
                           self._side(1, plan.b), -1 if rng is None else rng.first,
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

    def __init__(self, timestamps: bool = False, rcvbuf: int = 0) -> None:
        self._core = _relay.Hub(timestamps=timestamps, rcvbuf=rcvbuf)

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
