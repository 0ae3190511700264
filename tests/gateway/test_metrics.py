"""Gateway metrics: values as a Prometheus parser reads them back from the exposition text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    CONTENT_TYPE,
    CallResult,
    Direction,
    GatewayMetrics,
    RefusalReason,
    sip_label,
)


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_fresh_metrics_show_every_result_and_reason_at_zero() -> None:
    metrics = GatewayMetrics()
    for result in CallResult:
        assert value(metrics, "gateway_calls_total", result=result.value) == 0
    for reason in RefusalReason:
        assert value(metrics, "gateway_calls_refused_total", reason=reason.value) == 0
    assert value(metrics, "gateway_active_calls") == 0
    assert value(metrics, "gateway_call_setup_seconds_count") == 0


def test_call_lifecycle() -> None:
    metrics = GatewayMetrics()
    metrics.call_started()
    metrics.call_started()
    assert value(metrics, "gateway_active_calls") == 2
    metrics.call_connected(0.3)
    metrics.call_ended(CallResult.COMPLETED)
    metrics.call_ended(CallResult.CANCELLED)
    assert value(metrics, "gateway_active_calls") == 0
    assert value(metrics, "gateway_calls_total", result="completed") == 1
    assert value(metrics, "gateway_calls_total", result="cancelled") == 1
    assert value(metrics, "gateway_calls_total", result="failed") == 0
    assert value(metrics, "gateway_call_setup_seconds_count") == 1
    assert value(metrics, "gateway_call_setup_seconds_sum") == pytest.approx(0.3)
    assert value(metrics, "gateway_call_setup_seconds_bucket", le="0.25") == 0
    assert value(metrics, "gateway_call_setup_seconds_bucket", le="0.5") == 1


def test_refusals_never_count_as_active() -> None:
    metrics = GatewayMetrics()
    metrics.call_refused(RefusalReason.MAX_CALLS)
    metrics.call_refused(RefusalReason.MAX_CALLS)
    metrics.call_refused(RefusalReason.UNTRUSTED_HOST)
    assert value(metrics, "gateway_calls_refused_total", reason="max_calls") == 2
    assert value(metrics, "gateway_calls_refused_total", reason="untrusted_host") == 1
    assert value(metrics, "gateway_active_calls") == 0


def test_sip_messages_by_direction_and_method_or_status() -> None:
    metrics = GatewayMetrics()
    metrics.sip_message(Direction.RECEIVED, "INVITE")
    metrics.sip_message(Direction.RECEIVED, "invite")
    metrics.sip_message(Direction.SENT, 180)
    metrics.sip_message(Direction.SENT, "FROBNICATE")
    metrics.sip_message(Direction.SENT, "X-EVIL-" + "A" * 50)
    got = samples(metrics)
    key = "gateway_sip_messages_total"
    assert got[(key, (("direction", "received"), ("method_or_status", "INVITE")))] == 2
    assert got[(key, (("direction", "sent"), ("method_or_status", "180")))] == 1
    # Invented methods share one series: a peer cannot mint new time series.
    assert got[(key, (("direction", "sent"), ("method_or_status", "OTHER")))] == 2
    sip_series = {labels for name, labels in got if name == key}
    assert len(sip_series) == 3


def test_sip_label_rejects_non_status_numbers() -> None:
    assert sip_label(699) == "699"
    assert sip_label("benotify") == "BENOTIFY"
    for bad in (99, 700, -1):
        with pytest.raises(ValueError):
            sip_label(bad)


def test_resource_gauges_and_zones() -> None:
    metrics = GatewayMetrics()
    metrics.set_media_ports_in_use(16)
    metrics.set_turn_allocations(2)
    metrics.set_zone_up("CUCM Neighbor", True)
    metrics.set_zone_up("Lab \"quoted\" zone", False)
    assert value(metrics, "gateway_media_ports_in_use") == 16
    assert value(metrics, "gateway_turn_allocations") == 2
    assert value(metrics, "gateway_zone_up", zone="CUCM Neighbor") == 1
    assert value(metrics, "gateway_zone_up", zone='Lab "quoted" zone') == 0
    metrics.set_zone_up("CUCM Neighbor", False)
    assert value(metrics, "gateway_zone_up", zone="CUCM Neighbor") == 0
    metrics.remove_zone("CUCM Neighbor")
    metrics.remove_zone("never existed")
    assert ("gateway_zone_up", (("zone", "CUCM Neighbor"),)) not in samples(metrics)


def test_two_gateways_in_one_process_are_independent() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.call_started()
    assert value(first, "gateway_active_calls") == 1
    assert value(second, "gateway_active_calls") == 0


def test_labels_only_from_the_enums() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(ValueError):
        metrics.call_ended("exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        metrics.call_refused("bored")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        metrics.call_connected(-1.0)


def test_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    text = GatewayMetrics().render().decode()
    assert "# TYPE gateway_calls_total counter" in text
    assert "# TYPE gateway_call_setup_seconds histogram" in text
