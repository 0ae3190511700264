"""Each side's SIP transport counters on /metrics and in /status, read live (issue 12)."""

from __future__ import annotations

import dataclasses

from gateway.metrics import GatewayMetrics, TransportReason
from gateway.status import LegSide, TransportCountersView
from sip.transport import TransportCounters

from .test_metrics import samples, value

NAME = "gateway_sip_transport_events_total"


def test_every_transport_counter_has_a_reason() -> None:
    """A counter added to the transport without a reason here would go unexported."""
    fields = {f.name for f in dataclasses.fields(TransportCounters)}
    assert {r.value for r in TransportReason} == fields
    assert set(TransportCountersView(LegSide.VIDEO).to_json()) == fields


def test_no_series_until_a_side_is_watched() -> None:
    assert not [key for key in samples(GatewayMetrics()) if key[0] == NAME]


def test_counters_are_read_at_scrape_time_per_side() -> None:
    metrics = GatewayMetrics()
    ms, video = TransportCounters(), TransportCounters()
    metrics.watch_transport(LegSide.MICROSOFT, ms)
    metrics.watch_transport(LegSide.VIDEO, video)
    for reason in TransportReason:
        for side in LegSide:
            assert value(metrics, NAME, side=side.value, reason=reason.value) == 0
    video.oversized += 2
    ms.tls_failed += 1
    ms.slow_reader += 5
    assert value(metrics, NAME, side="video", reason="oversized") == 2
    assert value(metrics, NAME, side="microsoft", reason="oversized") == 0
    assert value(metrics, NAME, side="microsoft", reason="tls_failed") == 1
    assert value(metrics, NAME, side="microsoft", reason="slow_reader") == 5
    assert value(metrics, NAME, side="video", reason="slow_reader") == 0


def test_two_gateways_keep_their_own_transport_series() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    counters = TransportCounters(refused=4)
    first.watch_transport(LegSide.VIDEO, counters)
    assert value(first, NAME, side="video", reason="refused") == 4
    assert not [key for key in samples(second) if key[0] == NAME]


def test_status_view_copies_the_counters() -> None:
    counters = TransportCounters(refused=1, evicted=2, message_deadline=3, slow_reader=4,
                                 idle=5, oversized=6, tls_failed=7)
    view = TransportCountersView.from_counters(LegSide.MICROSOFT, counters)
    counters.refused += 10  # a snapshot: later counts do not change it
    assert view.to_json() == {"refused": 1, "evicted": 2, "message_deadline": 3,
                              "slow_reader": 4, "idle": 5, "oversized": 6, "tls_failed": 7}
