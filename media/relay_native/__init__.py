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
import select
import time
import weakref
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

    def share_map(self, other: Relay) -> None:
        if not isinstance(other, NativeRelay):
            raise TypeError("a NativeRelay")
        self._core.share_map(other._core)

    def map_holders(self) -> int:
        """How many relays hold this one's SSRC map (0: none yet, or closed)."""
        return int(self._core.map_holders())

    def close(self) -> None:
        self._core.close()


class NativeHub:
    """media.relay.Hub over one C hub per worker thread, relays spread over them (the least
    loaded takes the next). ``threads`` 0: a single hub pumped by whoever polls it (the event
    loop, through ``media.relay.attach``), as the pure-Python hub is. Otherwise ``start``
    gives each hub its own thread, which pumps its sockets without the GIL; ``poll`` then
    only runs the on_stun/on_latch callbacks the workers queued, on the polling thread, and
    ``fileno`` is the eventfd they signal that on."""

    __slots__ = ("__weakref__", "_cores", "_notify", "_started", "_tie", "_top", "threads")

    def __init__(self, timestamps: bool = False, rcvbuf: int = 0, threads: int = 0,
                 coalesce_us: int = 0) -> None:
        if threads < 0:
            raise ValueError("threads must be 0 or more")
        self.threads = threads
        self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._cores = [_relay.Hub(timestamps=timestamps, rcvbuf=rcvbuf, notify_fd=self._notify,
                                  coalesce_us=coalesce_us)
                       for _ in range(max(threads, 1))]
        self._top: select.epoll | None = None
        if len(self._cores) > 1:   # polled from one thread until started: one fd for all
            self._top = select.epoll()
            for core in self._cores:
                self._top.register(core.fileno(), select.EPOLLIN)
        self._started = False
        self._tie = 0
        weakref.finalize(self, _release, self._cores, self._notify, self._top)

    def register(self, relay: Relay) -> None:
        if not isinstance(relay, NativeRelay):
            raise TypeError("a NativeRelay")
        # the least loaded hub; among equals, the next in turn: a call registers its audio
        # then its video relay, and plain alternation would put every video on one thread
        n = len(self._cores)
        sizes = [int(core.size()) for core in self._cores]
        least = min(sizes)
        if sizes.count(least) > 1:
            self._tie += 1
        pick = next(i for k in range(n) if sizes[i := (self._tie + k) % n] == least)
        self._cores[pick].register(relay._core)

    def unregister(self, relay: Relay) -> None:
        if not isinstance(relay, NativeRelay):
            raise ValueError("not a relay of this hub")
        home = relay._core.hub
        if not any(home is core for core in self._cores):
            raise ValueError("not a relay of this hub")
        home.unregister(relay._core)

    def start(self) -> None:
        if self.threads and not self._started:
            for core in self._cores:
                core.start()
            self._started = True

    def stop(self) -> None:
        for core in self._cores:
            core.stop()
        self._started = False

    def poll(self, timeout_ms: int = 0) -> int:
        if self._started:
            try:
                os.eventfd_read(self._notify)
            except BlockingIOError:
                pass
            return sum(int(core.deliver()) for core in self._cores)
        if self._top is None:
            return int(self._cores[0].poll(timeout_ms))
        if timeout_ms:
            self._top.poll(timeout_ms / 1000)
        return sum(int(core.poll(0)) for core in self._cores)

    def run(self, seconds: float) -> None:
        if self._top is None and not self._started:
            self._cores[0].run(seconds)
            return
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._started:
                select.select([self._notify], [], [], 0.02)
                self.poll()
            else:
                self.poll(20)

    def fileno(self) -> int:
        if self._started:
            return self._notify
        return int(self._cores[0].fileno()) if self._top is None else self._top.fileno()

    def latency(self, reset: bool = False) -> list[int]:
        hists = [cast(list[int], core.latency(reset)) for core in self._cores]
        return [sum(col) for col in zip(*hists, strict=True)]

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for core in self._cores:
            for key, value in core.stats().items():
                if key != "threaded":
                    out[key] = out.get(key, 0) + int(value)
        out["threads"] = len(self._cores) if self._started else 0
        return out


def _release(cores: list[Any], notify: int, top: select.epoll | None) -> None:
    """The workers end before the eventfd they write goes."""
    for core in cores:
        core.stop()
    os.close(notify)
    if top is not None:
        top.close()
