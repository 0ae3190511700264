"""Zones and the sans-IO OPTIONS monitor, driven by hand-set time."""

from __future__ import annotations

import logging

import pytest

from gateway import config as cfg
from gateway.config import MICROSOFT_ZONE
from gateway.zones import (
    FailureKind,
    PeerState,
    Zone,
    ZoneKind,
    ZoneMonitor,
    ZoneMonitors,
    ZoneState,
    failure_reason,
    zones_from_config,
)
from sip.transport import Transport, TransportAddress

P1 = TransportAddress(Transport.TLS, "127.0.3.1", 5061)
P2 = TransportAddress(Transport.TLS, "127.0.3.2", 5061)


def zone(*peers: TransportAddress, interval: float = 1.0, monitor: bool = True) -> Zone:
    return Zone("CUCM Neighbor", ZoneKind.NEIGHBOR, peers, 15, monitor, interval)


def test_zones_from_the_lab_config() -> None:
    config = cfg.loads(
        """
        [b2bua]
        ms_destination = "tls:127.0.1.1:5061"
        [[zones]]
        name = "CUCM Neighbor"
        peers = ["127.0.3.1", "127.0.3.2"]
        monitor = false
        """
    )
    zones = zones_from_config(config)
    assert list(zones) == [MICROSOFT_ZONE, "CUCM Neighbor"]
    ms = zones[MICROSOFT_ZONE]
    assert ms.kind is ZoneKind.MICROSOFT
    assert ms.destinations == (TransportAddress(Transport.TLS, "127.0.1.1", 5061),)
    cucm = zones["CUCM Neighbor"]
    assert cucm.destinations == (
        TransportAddress(Transport.TCP, "127.0.3.1", 5060),
        TransportAddress(Transport.TCP, "127.0.3.2", 5060),
    )
    assert (cucm.hop_count, cucm.monitor, cucm.monitor_interval) == (15, False, 30.0)


def test_schedule_probes_every_interval() -> None:
    monitor = ZoneMonitor(zone(P1, P2, interval=30.0), now=100.0)
    assert monitor.status().state is ZoneState.CHECKING
    assert monitor.get_timer() == 100.0
    assert monitor.due(100.0) == [P1, P2]
    assert monitor.due(100.0) == []  # already sent
    monitor.on_response(P1, 200, 100.1)
    monitor.on_response(P2, 200, 100.2)
    assert monitor.get_timer() == 130.0
    assert monitor.due(129.9) == []
    assert monitor.due(130.0) == [P1, P2]


def test_any_final_response_means_alive() -> None:
    monitor = ZoneMonitor(zone(P1), now=0.0)
    monitor.due(0.0)
    monitor.on_response(P1, 100, 0.1)  # provisional: not yet an answer
    assert monitor.status().state is ZoneState.CHECKING
    monitor.on_response(P1, 404, 0.2)  # the peer is up, even if it refuses OPTIONS
    status = monitor.status()
    assert status.state is ZoneState.ACTIVE and status.active
    assert status.describe() == "Active"
    assert status.peers[0].state is PeerState.ALIVE and status.peers[0].last_status == 404


def test_unanswered_probe_times_out_and_zone_fails() -> None:
    monitor = ZoneMonitor(zone(P1, interval=5.0), now=0.0)
    assert monitor.due(0.0) == [P1]
    assert monitor.get_timer() == 5.0
    assert monitor.due(5.0) == [P1]  # expires the old probe, sends a new one
    status = monitor.status()
    assert status.state is ZoneState.FAILED and not status.active
    assert status.reason == "No response from 127.0.3.1:5061 (timeout)"
    assert status.describe() == "No response from 127.0.3.1:5061 (timeout)"


def test_shorter_timeout_than_interval() -> None:
    monitor = ZoneMonitor(zone(P1, interval=10.0), now=0.0, timeout=2.0)
    monitor.due(0.0)
    assert monitor.get_timer() == 2.0
    assert monitor.due(2.0) == []
    assert monitor.status().state is ZoneState.FAILED
    assert monitor.get_timer() == 10.0


def test_active_turns_failed_when_the_peer_stops_answering_and_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = ZoneMonitor(zone(P1, interval=1.0), now=0.0)
    monitor.due(0.0)
    monitor.on_response(P1, 200, 0.01)
    assert monitor.status().state is ZoneState.ACTIVE
    monitor.due(1.0)
    with caplog.at_level(logging.WARNING, logger="gateway.zones"):
        monitor.due(2.0)
    assert monitor.status().state is ZoneState.FAILED
    assert "No response from 127.0.3.1:5061 (timeout)" in caplog.text
    monitor.on_response(P1, 200, 2.5)
    assert monitor.status().state is ZoneState.ACTIVE


def test_zone_is_active_while_any_peer_answers() -> None:
    monitor = ZoneMonitor(zone(P1, P2), now=0.0)
    monitor.due(0.0)
    monitor.on_failure(P1, failure_reason(FailureKind.REFUSED, P1), 0.1)
    assert monitor.status().state is ZoneState.CHECKING  # P2 not known yet
    monitor.on_response(P2, 200, 0.2)
    assert monitor.status().state is ZoneState.ACTIVE
    monitor.due(1.0)
    monitor.on_failure(P2, failure_reason(FailureKind.TLS, P2, "certificate verify failed"), 1.1)
    monitor.on_failure(P1, failure_reason(FailureKind.REFUSED, P1), 1.2)
    status = monitor.status()
    assert status.state is ZoneState.FAILED
    assert status.reason == (
        f"Connection refused by {P1.host}:{P1.port}; "
        "TLS negotiation failure: certificate verify failed"
    )


def test_failure_reasons() -> None:
    assert failure_reason(FailureKind.TIMEOUT, P1) == "No response from 127.0.3.1:5061 (timeout)"
    assert failure_reason(FailureKind.REFUSED, P1) == f"Connection refused by {P1.host}:{P1.port}"
    assert failure_reason(FailureKind.TLS, P1, "bad cert") == "TLS negotiation failure: bad cert"
    assert failure_reason(FailureKind.ERROR, P1, "No route to host") == "No route to host"


def test_unknown_peer_is_a_programming_error() -> None:
    monitor = ZoneMonitor(zone(P1), now=0.0)
    with pytest.raises(ValueError, match="not a peer"):
        monitor.on_response(P2, 200, 0.0)


def test_monitors_share_one_timer() -> None:
    zones = [
        Zone("fast", ZoneKind.NEIGHBOR, (P1,), 15, True, 1.0),
        Zone("slow", ZoneKind.NEIGHBOR, (P2,), 15, True, 3.0),
        Zone("quiet", ZoneKind.NEIGHBOR, (P2,), 15, False, 1.0),
    ]
    monitors = ZoneMonitors(zones, now=0.0)
    probes = monitors.due(0.0)
    assert [(p.zone, p.peer) for p in probes] == [("fast", P1), ("slow", P2)]
    monitors.on_response("fast", P1, 200, 0.1)
    monitors.on_response("slow", P2, 200, 0.1)
    assert monitors.get_timer() == 1.0
    assert [p.zone for p in monitors.due(1.0)] == ["fast"]
    statuses = monitors.statuses()
    assert statuses["fast"].state is ZoneState.ACTIVE
    assert statuses["quiet"].state is ZoneState.NOT_MONITORED
    assert statuses["quiet"].describe() == "Not monitored"
    monitors.on_failure("slow", P2, "Connection refused", 1.5)
    assert monitors.status("slow").describe() == "Connection refused"


def test_interval_override_for_tests() -> None:
    monitors = ZoneMonitors([zone(P1, interval=30.0)], now=0.0, interval=0.2)
    monitors.due(0.0)
    monitors.on_response("CUCM Neighbor", P1, 200, 0.05)
    assert monitors.get_timer() == pytest.approx(0.2)
