"""The status model: JSON shape (checked against the module's documented shape), adapters."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

import gateway.status as status_module
from gateway.status import (
    CallView,
    Capacity,
    GatewayStatus,
    Health,
    LegSide,
    LegView,
    PeerView,
    PortPoolView,
    SideStatus,
    StatusSource,
    StreamCountersView,
    SystemView,
    TransportCountersView,
    TurnServerView,
    ZoneStatusView,
    streams_of,
)
from media.counters import LegCounters
from media.port_pool import PortPool, PortPoolSettings, PortUnit
from sip.transport import TransportCounters

NOW = 1000.0


def sample_status(now: float = NOW, *, draining: bool = False,
                  ms_health: Health | None = None) -> GatewayStatus:
    """A gateway with one connected call, one live and one failed zone, one TURN server."""
    audio = StreamCountersView("audio", 500, 498, 86_000, 85_656, now - 0.02)
    video_waiting = StreamCountersView("video", 0, 12, 0, 14_400, None)
    return GatewayStatus(
        generated_at=now,
        system=SystemView("exp01", "video.example.com", "lyncexp.video.example.com",
                          started_at=now - 3600, version="0.1.0", draining=draining),
        microsoft_side=SideStatus("Microsoft", "tls:127.0.1.1:5061",
                                  ms_health or Health.up()),
        video_side=SideStatus("Video", "udp:127.0.2.1:5060 tcp:127.0.2.1:5060",
                              Health.up()),
        zones=(
            ZoneStatusView("To Microsoft destination via B2BUA", "microsoft", Health.up()),
            ZoneStatusView("CUCM Neighbor", "neighbor",
                           Health.down("Failed: 408 Request Timeout to OPTIONS"),
                           (PeerView("127.0.3.1:5061",
                                     Health.down("Failed: 408 Request Timeout to OPTIONS")),)),
        ),
        calls=(CallView("call-1@fe01", "connected", now - 12.5, (
            LegView(LegSide.MICROSOFT, "call-1@fe01", "tls:127.0.1.1:5061", "confirmed",
                    (audio, video_waiting)),
            LegView(LegSide.VIDEO, "b2b-7@exp01", "tls:127.0.3.1:5061", "confirmed",
                    (audio,)),
        )),),
        port_pool=PortPoolView(56000, 57000, 1000, 8, 992, 0),
        turn_servers=(TurnServerView("127.0.4.1", 3478, Health.up(), 2),),
        capacity=Capacity(1, 100),
        transport=(TransportCountersView(LegSide.MICROSOFT, TransportCounters(tls_failed=3)),
                   TransportCountersView(LegSide.VIDEO,
                                         TransportCounters(oversized=1, slow_reader=2))),
    )


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        keys = set(value)
        for item in value.values():
            keys |= all_keys(item)
        return keys
    if isinstance(value, list):
        return set().union(*(all_keys(v) for v in value)) if value else set()
    return set()


def documented_keys() -> set[str]:
    doc = status_module.__doc__ or ""
    shape = doc[doc.index("JSON shape"):]
    return set(re.findall(r'"([a-z_]+)":', shape))


def test_json_keys_are_exactly_the_documented_ones() -> None:
    produced = all_keys(sample_status().to_json())
    assert produced == documented_keys()


def test_json_values_and_ages() -> None:
    data = json.loads(json.dumps(sample_status().to_json(), allow_nan=False))
    assert data["generated_at"] == NOW
    assert data["system"]["uptime"] == 3600
    assert data["system"]["draining"] is False
    assert data["microsoft_side"] == {"name": "Microsoft", "address": "tls:127.0.1.1:5061",
                                      "alive": True, "status": "Alive"}
    ms_zone, cucm = data["zones"]
    assert (ms_zone["status"], ms_zone["alive"]) == ("Active", True)
    assert cucm["alive"] is False
    assert cucm["status"] == "Failed: 408 Request Timeout to OPTIONS"
    assert cucm["peers"][0]["status"].startswith("Failed")
    (call,) = data["calls"]
    assert call["duration"] == 12.5
    ms_leg, video_leg = call["legs"]
    assert (ms_leg["side"], video_leg["side"]) == ("microsoft", "video")
    assert ms_leg["call_id"] != video_leg["call_id"]
    audio, video = ms_leg["media"]
    assert audio["packets_in"] == 500 and audio["bytes_out"] == 85_656
    assert audio["idle"] == pytest.approx(0.02)
    assert video["last_packet_at"] is None and video["idle"] is None
    assert data["port_pool"] == {"first": 56000, "last": 57000, "total": 1000, "in_use": 8,
                                 "free": 992, "calls_refused": 0, "bound": 0, "held_back": 0,
                                 "turn_total": 0, "turn_in_use": 0}
    assert data["tasks"] == 0  # no loop running here
    assert data["turn_servers"] == [{"address": "127.0.4.1", "port": 3478, "alive": True,
                                     "status": "Alive", "allocations": 2}]
    assert data["capacity"] == {"active": 1, "max": 100}


def test_ages_never_negative_when_clocks_disagree() -> None:
    view = CallView("c", "trying", started_at=NOW + 5)
    assert view.to_json(NOW)["duration"] == 0.0


def test_health_needs_a_reason_exactly_when_down() -> None:
    with pytest.raises(ValueError):
        Health(False)
    with pytest.raises(ValueError):
        Health(False, "")
    with pytest.raises(ValueError):
        Health(True, "but why")
    assert Health.down("TLS handshake failed").text() == "TLS handshake failed"
    assert Health.up().text() == "Alive"


def test_views_are_frozen() -> None:
    status = sample_status()
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.capacity.active = 5  # type: ignore[misc]


def test_healthy_means_not_draining() -> None:
    assert sample_status().healthy
    # A dead Microsoft side is for /status to show, not a reason to restart the gateway.
    assert sample_status(ms_health=Health.down("TLS handshake failed")).healthy
    assert not sample_status(draining=True).healthy


def test_port_pool_view_from_a_real_pool() -> None:
    pool = PortPool(PortPoolSettings(56000, 56019))  # 10 pairs = 20 ports
    pool.allocate("call-a", [PortUnit.AUDIO_VIDEO])
    with pytest.raises(Exception, match="exhausted"):
        pool.allocate("call-b", [PortUnit.AUDIO_VIDEO, PortUnit.SCREEN_SHARE])
    view = PortPoolView.from_pool(pool)
    assert view == PortPoolView(56000, 56019, 20, 8, 12, 1)


def test_stream_counters_from_media_leg_counters() -> None:
    leg = LegCounters()
    leg.received(172, now=10.0)
    leg.received(172, now=10.02)
    leg.sent(160, now=10.03)
    view = StreamCountersView.from_leg("audio", leg)
    assert view == StreamCountersView("audio", 2, 1, 344, 160, 10.02)
    assert view.to_json(11.02)["idle"] == pytest.approx(1.0)
    assert streams_of([("audio", leg), ("video", LegCounters())])[1].packets_in == 0


def test_status_source_protocol() -> None:
    class Source:
        def status(self, now: float) -> GatewayStatus:
            return sample_status(now)

    assert isinstance(Source(), StatusSource)
    assert not isinstance(object(), StatusSource)
