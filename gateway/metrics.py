"""The gateway's Prometheus metrics, behind a small interface (not folded into logging).

Each :class:`GatewayMetrics` owns its own ``CollectorRegistry`` rather than the process-wide
default one, so several gateways (or tests) can live in one process without "Duplicated
timeseries" errors. Label values come only from enums or SIP status codes, never from
network text, so a peer cannot blow up the number of series with invented method names.

Series (with the default ``namespace="gateway"``)::

    gateway_calls_total{result}                    calls that ended, by how
    gateway_calls_refused_total{reason}            calls refused before any set-up
    gateway_sip_messages_total{direction,method_or_status}
    gateway_active_calls                           calls in progress
    gateway_media_ports_in_use                     media pool ports held
    gateway_turn_allocations                       allocations held on TURN servers
    gateway_zone_up{zone}                          1 when the zone is Active, else 0
    gateway_call_setup_seconds                     INVITE in -> 200 OK relayed (histogram)
    gateway_sip_transport_events_total{side,reason} what each side's SIP transport limits did

The transport series are read from each stack's live ``TransportCounters`` at scrape time (a
collector, not a second count kept in step): they cannot drift from what ``/status`` shows.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway.status import LegSide
from sip.transport import TransportCounters

__all__ = [
    "CONTENT_TYPE",
    "CallResult",
    "Direction",
    "GatewayMetrics",
    "RefusalReason",
    "SIP_METHODS",
    "TransportReason",
]

# Spelled out: prometheus-client 0.22+ moved CONTENT_TYPE_LATEST to version=1.0.0, while
# generate_latest() still writes the classic format (all our names are legacy-valid).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format's media type."""

SIP_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE", "SERVICE", "BENOTIFY", "NEGOTIATE",
})
"""Methods counted under their own name (RFC 3261 and extensions, plus Microsoft's
SERVICE / BENOTIFY / NEGOTIATE); any other token is counted as ``OTHER``."""

# Set-up times run from tens of milliseconds on loopback to the 180 s INVITE expiry.
SETUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)


class CallResult(enum.Enum):
    """How a call that was set up (or tried) ended."""

    COMPLETED = "completed"
    """Answered, then cleared with BYE."""
    CANCELLED = "cancelled"
    """The caller cancelled before an answer (487 on the far leg)."""
    REJECTED = "rejected"
    """The far side answered with a final error (4xx/5xx/6xx)."""
    FAILED = "failed"
    """Cleared by the gateway: ICE failure, no ACK after 64*T1, transport loss."""


class RefusalReason(enum.Enum):
    """Why the gateway refused a call before setting anything up."""

    MAX_CALLS = "max_calls"
    """``max_calls`` reached: 503 with Retry-After."""
    PORT_POOL_EXHAUSTED = "port_pool_exhausted"
    """"Media port pool exhausted": 503."""
    ENCRYPTION_MISMATCH = "encryption_mismatch"
    """Encryption policy mismatch: 488."""
    UNTRUSTED_HOST = "untrusted_host"
    """Microsoft-side request from a host that is not trusted: 403."""
    NO_ROUTE = "no_route"
    """No search rule matched: 404."""
    TOO_MANY_HOPS = "too_many_hops"
    """Max-Forwards / hop count exhausted: 483."""
    LOOP = "loop"
    """Loop detected: 482."""
    DRAINING = "draining"
    """Shutting down: 503."""
    CALL_ID_IN_USE = "call_id_in_use"
    """The INVITE's Call-ID is already a call here: 482."""
    BAD_SDP = "bad_sdp"
    """A body that cannot be used as SDP: 400 / 415."""
    NO_SDP = "no_sdp"
    """An INVITE from Microsoft without SDP: 488."""
    TOO_MANY_MEDIA_LINES = "too_many_media_lines"
    """More m= lines than the gateway relays: 488."""
    ZONE_ENCRYPTION = "zone_encryption"
    """The zone's media encryption mode refuses the offer: 488."""
    NO_COMMON_CODEC = "no_common_codec"
    """No codec both sides take: 488."""
    MEDIA_SETUP_FAILED = "media_setup_failed"
    """Media ports could not be bound, or media set-up failed otherwise: 503 / 500."""


class TransportReason(enum.Enum):
    """What a SIP transport limit did: the fields of ``sip.transport.TransportCounters``."""

    REFUSED = "refused"
    """An inbound connection closed at once: the cap was reached and nothing was idle."""
    EVICTED = "evicted"
    """An idle inbound connection closed to make room for a new one."""
    MESSAGE_DEADLINE = "message_deadline"
    """A connection closed because a message was not completed in time."""
    SLOW_READER = "slow_reader"
    """A connection closed because the peer did not read what was sent."""
    IDLE = "idle"
    """A connection closed after the idle timeout."""
    OVERSIZED = "oversized"
    """A message over the size limit passed over."""
    TLS_FAILED = "tls_failed"
    """An inbound TLS handshake that failed."""


class _TransportCollector(Collector):
    """``sip_transport_events_total{side,reason}``, read from the stacks' live counters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sides: dict[LegSide, TransportCounters] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            self.name, "What each side's SIP transport limits did, by reason.",
            labels=["side", "reason"])
        for side, counters in self.sides.items():
            for reason in TransportReason:
                family.add_metric([side.value, reason.value], getattr(counters, reason.value))
        yield family


class Direction(enum.Enum):
    """Whether the gateway sent or received a SIP message."""

    SENT = "sent"
    RECEIVED = "received"


def sip_label(method_or_status: str | int) -> str:
    """The ``method_or_status`` label: a known method name, ``OTHER``, or a 3-digit status."""
    if isinstance(method_or_status, int):
        if not 100 <= method_or_status <= 699:
            raise ValueError(f"not a SIP status code: {method_or_status}")
        return str(method_or_status)
    method = method_or_status.upper()
    return method if method in SIP_METHODS else "OTHER"


class GatewayMetrics:
    """The gateway's counters, gauges and histogram, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 namespace: str = "gateway") -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        ns, reg = namespace, self.registry
        self._calls = Counter("calls", "Calls that ended, by result.", ["result"],
                              namespace=ns, registry=reg)
        self._refused = Counter("calls_refused", "Calls refused before any set-up, by reason.",
                                ["reason"], namespace=ns, registry=reg)
        self._sip = Counter("sip_messages", "SIP messages sent and received.",
                            ["direction", "method_or_status"], namespace=ns, registry=reg)
        self._active = Gauge("active_calls", "Calls in progress.", namespace=ns, registry=reg)
        self._ports = Gauge("media_ports_in_use", "Media pool ports held by calls.",
                            namespace=ns, registry=reg)
        self._turn = Gauge("turn_allocations", "Allocations the gateway holds on TURN servers.",
                           namespace=ns, registry=reg)
        self._zone_up = Gauge("zone_up", "1 when the zone is Active, 0 when it failed.",
                              ["zone"], namespace=ns, registry=reg)
        self._setup = Histogram("call_setup_seconds",
                                "Time from the inbound INVITE to the relayed 200 OK.",
                                namespace=ns, registry=reg, buckets=SETUP_BUCKETS)
        self._transport = _TransportCollector(f"{ns}_sip_transport_events" if ns
                                              else "sip_transport_events")
        reg.register(self._transport)
        # Every result/reason series exists from the start (at 0): rate() and alerts then
        # work before the first occurrence.
        for result in CallResult:
            self._calls.labels(result.value)
        for reason in RefusalReason:
            self._refused.labels(reason.value)

    # -- calls -----------------------------------------------------------------------------

    def call_started(self) -> None:
        """A call was accepted for set-up (after the refusal checks)."""
        self._active.inc()

    def call_connected(self, setup_seconds: float) -> None:
        """The call was answered, ``setup_seconds`` after its INVITE arrived."""
        if setup_seconds < 0:
            raise ValueError("negative call set-up time")
        self._setup.observe(setup_seconds)

    def call_ended(self, result: CallResult) -> None:
        """A call that ``call_started`` counted is over."""
        self._calls.labels(CallResult(result).value).inc()
        self._active.dec()

    def call_refused(self, reason: RefusalReason) -> None:
        """A call was refused before ``call_started`` (it never counts as active)."""
        self._refused.labels(RefusalReason(reason).value).inc()

    # -- signalling and resources ----------------------------------------------------------

    def sip_message(self, direction: Direction, method_or_status: str | int) -> None:
        """One SIP message: a request's method (str) or a response's status code (int)."""
        self._sip.labels(Direction(direction).value, sip_label(method_or_status)).inc()

    def watch_transport(self, side: LegSide, counters: TransportCounters) -> None:
        """Export a side's transport counters (its ``TransportManager.counters``)."""
        self._transport.sides[LegSide(side)] = counters

    def set_media_ports_in_use(self, ports: int) -> None:
        self._ports.set(ports)

    def set_turn_allocations(self, allocations: int) -> None:
        self._turn.set(allocations)

    def set_zone_up(self, zone: str, up: bool) -> None:
        self._zone_up.labels(zone).set(1 if up else 0)

    def remove_zone(self, zone: str) -> None:
        """Forget a zone taken out of the configuration (no-op if unknown)."""
        try:
            self._zone_up.remove(zone)
        except KeyError:
            pass

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)
