"""The relay seam: one relay per stream component owns the UDP sockets of its two sides and
the per-packet path; call control publishes an immutable ``ForwardingPlan`` that the packet
path reads (which ways flow, where each side sends, how each side latches, SRTP keys, SSRC
mapping). Two implementations share the interface:

- ``media.relay_native`` (C, batched recvmmsg/sendmmsg, libsrtp2, no Python frame per packet),
  built by ``make venv`` where gcc and libsrtp2-dev are present;
- ``media.relay_py`` (pure Python over pylibsrtp), portable, and the oracle of the tests.

``GATEWAY_MEDIA_RELAY`` = ``native`` | ``python`` forces one (``native`` fails loudly when it
was not built); unset, the native path is used where it is available.

More than one core: a native hub made by ``make_hub`` holds ``GATEWAY_MEDIA_THREADS`` C hubs
(default: one per core; 0: none), and ``attach`` starts a worker thread for each, which pumps
its relays' sockets without the GIL. Callbacks (on_stun, on_latch) still run on the event
loop's thread: the workers queue them and signal an eventfd that ``attach`` reads. The
pure-Python hub stays on the loop's thread.

Side A is the Microsoft (ICE) side, side B the video side: SSRCs from B are mapped into the
plan's ``ssrc_range`` on the way to A, and mapped back where A's RTCP reports on them (in a
map the stream's two component relays share: ``Relay.share_map``).
STUN (first byte 0-3) is handed to ``on_stun(side, data, (host, port))`` for aioice; RTP and
RTCP (first byte 128-191; RTCP by payload type 192-223, RFC 5761 §4) stay in the relay.

Order of the checks (both implementations): the receiving SRTP context sees every packet
that passes the direction check, the sending one only packets that have somewhere to go
(NO_ROUTE is decided before ``protect``). SRTP's rollover counter is implicit (RFC 3711
§3.3.1): a sender that counted a sequence wrap among packets nobody received stays one
rollover ahead of its receiver for good (issue 13).
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from media.ms_dialect import SsrcRange
from media.srtp import MASTER_KEY_SALT_LEN, LegKeys

__all__ = [
    "COALESCE_ENV", "ENV", "THREADS_ENV", "Address", "ForwardingPlan", "Hub", "Latching",
    "Relay", "Side", "SidePlan", "Verdict", "attach", "implementation", "make_hub", "make_relay",
    "media_coalesce_us", "media_threads", "native_available",
]

ENV = "GATEWAY_MEDIA_RELAY"
THREADS_ENV = "GATEWAY_MEDIA_THREADS"
COALESCE_ENV = "GATEWAY_MEDIA_COALESCE_US"
COALESCE_US = 200
"""A native worker's nap after a round that found several sockets ready: the packets that
arrive meanwhile are taken in the next round instead of each waking the worker. Measured by
bench/relay_fast.py on 2 cores: the relay's CPU at 100 calls -25 % for +0.2 ms relay-added
p99, and 300 calls at 0 loss (32 % lost without it)."""
Address = tuple[str, int]
StunSink = Callable[[int, bytes, Address], None]
LatchSink = Callable[[int, Address], None]
"""Called with (side, source) when a side latches to a new source (not per packet)."""

MAX_PACKET = 2048 - 64
"""The largest datagram relayed (room left for the SRTP trailer); larger ones are dropped."""
MAP_CAP = 1024
"""At most this many SSRCs mapped per stream at once (the oldest mapping is reused)."""


class Side(enum.IntEnum):
    A = 0
    """The Microsoft side (ICE, usually SRTP)."""
    B = 1
    """The video side (latched UDP, RTP or SDES-SRTP)."""


class Latching(enum.IntEnum):
    """How a side learns where its peer is (media.rtp_leg's rules, in the packet path)."""

    FIXED = 0
    """Send to the plan's address; accept any source (the ICE side: aioice chose the pair)."""
    STRICT = 1
    """Latch to a source on the plan address's host; the exact address takes over any time."""
    NAT = 2
    """Latch to the first source at all."""


class Verdict(enum.IntEnum):
    """What became of one received packet."""

    FORWARD = 0
    STUN = 1
    DIRECTION = 2
    SOURCE = 3
    NO_ROUTE = 4
    SRTP = 5
    MALFORMED = 6
    SEND = 7


COUNTER_NAMES = ("forwarded", "stun", "dropped_direction", "dropped_source",
                 "dropped_no_route", "dropped_srtp", "dropped_malformed", "dropped_send")
"""Per-verdict counter names, in ``Verdict`` order."""


@dataclass(frozen=True, slots=True)
class SidePlan:
    """One side's rules."""

    latching: Latching = Latching.FIXED
    address: Address | None = None
    """Where to send: the ICE pair's remote address, or the endpoint's SDP address (until a
    latch). None: nowhere yet (packets toward this side are dropped as NO_ROUTE)."""
    relatch_after: float = 5.0
    """Seconds of silence from the latched source before another may take over."""
    rx_key: bytes | None = None
    """SRTP master key + salt this side's peer sends with (None: plain RTP in)."""
    rx_mki: bytes = b""
    """The MKI the peer puts in each packet (Microsoft: 1 byte), checked and removed."""
    tx_key: bytes | None = None
    """SRTP master key + salt we send with toward this side (None: plain RTP out)."""

    def __post_init__(self) -> None:
        for key in (self.rx_key, self.tx_key):
            if key is not None and len(key) != MASTER_KEY_SALT_LEN:
                raise ValueError(f"SRTP key must be {MASTER_KEY_SALT_LEN} bytes")
        if len(self.rx_mki) > 16:
            raise ValueError("MKI longer than 16 bytes")
        if not self.relatch_after > 0:
            raise ValueError("relatch_after must be positive")

    @classmethod
    def srtp(cls, keys: LegKeys | None, **rules: Any) -> SidePlan:
        """A side with a leg's SDES keys (media.srtp.select_keys), or plain RTP for None."""
        if keys is None:
            return cls(**rules)
        return cls(rx_key=keys.receive[:MASTER_KEY_SALT_LEN], rx_mki=keys.receive_mki,
                   tx_key=keys.send[:MASTER_KEY_SALT_LEN], **rules)

    def native(self) -> tuple[int, Address | None, int, bytes | None, bytes, bytes | None]:
        return (int(self.latching), self.address, round(self.relatch_after * 1e9),
                self.rx_key, self.rx_mki, self.tx_key)


@dataclass(frozen=True, slots=True)
class ForwardingPlan:
    """What the packet path does, published whole by call control on each offer/answer."""

    a: SidePlan = SidePlan()
    b: SidePlan = SidePlan()
    a_to_b: bool = False
    """RTP from the Microsoft side may go to the video side."""
    b_to_a: bool = False
    rtcp: bool = False
    """RTCP flows (both sides accepted the stream, even on hold: RFC 3264 §5.1)."""
    ssrc_range: SsrcRange | None = None
    """SSRCs from B are mapped into this range toward A (our a=x-ssrc-range)."""

    def side(self, side: int) -> SidePlan:
        return self.a if side == Side.A else self.b


class Relay(Protocol):
    """One stream component's packet path (both implementations)."""

    on_stun: StunSink | None
    on_latch: LatchSink | None

    def publish(self, plan: ForwardingPlan) -> None: ...
    def feed(self, side: int, data: bytes, source: Address,
             now_ns: int) -> tuple[Verdict, bytes | None, Address | None]: ...
    def sendto(self, side: int, data: bytes, address: Address) -> None: ...
    def counters(self, side: int) -> dict[str, int]: ...
    def latched(self, side: int) -> Address | None: ...
    def share_map(self, other: Relay) -> None:
        """From now on ``other`` (of the same implementation) uses this relay's SSRC map,
        its own dropped: a stream's RTP and RTCP relays share one, so that Microsoft's RTCP
        about an endpoint SSRC seen only in RTP is mapped back. Each relay still maps only
        while its own plan has an ``ssrc_range``; a publish bringing another range starts a
        new table for both. The map goes when the last relay holding it closes."""
    def map_holders(self) -> int:
        """How many relays hold this one's SSRC map (0: none yet, or closed)."""
    def close(self) -> None: ...


class Hub(Protocol):
    """Polls many relays' sockets; ``fileno`` is readable when ``poll`` has work: one of the
    sockets is readable or, once started (worker threads), callbacks are queued."""

    def register(self, relay: Relay) -> None: ...
    def unregister(self, relay: Relay) -> None: ...
    def start(self) -> None:
        """Hand the packet path to the hub's worker threads, if it has any."""
    def stop(self) -> None:
        """Join the worker threads; ``poll`` pumps on the calling thread again."""
    def poll(self, timeout_ms: int = 0) -> int: ...
    def run(self, seconds: float) -> None: ...
    def fileno(self) -> int: ...
    def latency(self, reset: bool = False) -> list[int]: ...
    def stats(self) -> dict[str, int]: ...


def native_available() -> bool:
    try:
        import media.relay_native  # noqa: F401  (fails where _relay.c was not built)
    except ImportError:
        return False
    return True


def implementation() -> str:
    """``native`` or ``python``: the packet path this process uses (see the module doc)."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted not in ("", "native", "python"):
        raise ValueError(f"{ENV} must be 'native' or 'python', not {wanted!r}")
    if wanted == "python":
        return "python"
    if wanted == "native" or native_available():
        return "native"
    return "python"


def make_relay(fd_a: int = -1, fd_b: int = -1, impl: str | None = None) -> Relay:
    """A relay owning the two sockets' fds (-1: none, for ``feed`` only); it closes them."""
    if (impl or implementation()) == "native":
        from media.relay_native import NativeRelay
        return NativeRelay(fd_a, fd_b)
    from media.relay_py import PyRelay
    return PyRelay(fd_a, fd_b)


def _env_count(name: str, default: int, most: int, what: str) -> int:
    """A whole number 0..most from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= most:
        raise ValueError(f"{name} must be {what}, not {raw!r}")
    return value


def media_threads() -> int:
    """Worker threads of a native hub: ``GATEWAY_MEDIA_THREADS``, else one per core."""
    return _env_count(THREADS_ENV, os.cpu_count() or 1, 1 << 16,
                      "a number of threads (0: none)")


def media_coalesce_us() -> int:
    """``GATEWAY_MEDIA_COALESCE_US``, else COALESCE_US (0: every arrival wakes a worker)."""
    return _env_count(COALESCE_ENV, COALESCE_US, 999_999, "microseconds 0..999999")


def make_hub(timestamps: bool = False, impl: str | None = None, rcvbuf: int = 0,
             threads: int | None = None, coalesce_us: int | None = None) -> Hub:
    """A hub for relays of the same implementation; ``timestamps`` records the relay-added
    latency (kernel receive timestamp to after the send) in 1 us buckets; ``rcvbuf`` (bytes,
    0: the system's) sizes each socket's receive queue, which absorbs the relay's scheduling
    delays; ``threads`` (native only; None: ``media_threads()``) worker threads, started by
    ``attach`` (or ``start``); ``coalesce_us`` (native workers only; None:
    ``media_coalesce_us()``) how long a worker naps after a round that found several sockets
    ready."""
    if (impl or implementation()) == "native":
        from media.relay_native import NativeHub
        return NativeHub(timestamps, rcvbuf, media_threads() if threads is None else threads,
                         media_coalesce_us() if coalesce_us is None else coalesce_us)
    from media.relay_py import PyHub
    return PyHub(timestamps, rcvbuf)


def attach(hub: Hub, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Serve ``hub`` from ``loop``: its worker threads (if any) are started and the loop runs
    the callbacks they queue; without workers the loop pumps the hub (one reader on its epoll
    fd: one Python call per wake-up for all its relays, not one per packet). Returns the
    function that detaches it (and joins the workers)."""
    hub.start()
    fd = hub.fileno()
    loop.add_reader(fd, hub.poll)

    def detach() -> None:
        loop.remove_reader(fd)
        hub.stop()
    return detach
