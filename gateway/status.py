"""The status model: what ``/status`` shows, as frozen dataclasses, and the source that fills it.

The runtime implements :class:`StatusSource`; the management server calls
``source.status(now)`` for each ``/status`` request and serves ``GatewayStatus.to_json()``.
Nothing here touches a socket or a clock: every time is a number the caller passes in, on
whatever clock the runtime uses (the loop's monotonic clock, say). The JSON therefore also
gives ages measured against ``generated_at`` (``uptime``, ``duration``, ``idle``), which mean
the same on any clock.

JSON shape (stable snake_case keys; times and ages in seconds, ``null`` when unknown)::

    {
      "generated_at": float,
      "system": {"host_name": str, "domain": str, "cluster_fqdn": str, "version": str,
                 "started_at": float, "uptime": float, "draining": bool},
      "microsoft_side": SIDE,
      "video_side": SIDE,
      "zones": [{"name": str, "type": str, "alive": bool, "status": str,
                 "peers": [{"address": str, "alive": bool, "status": str}, ...]}, ...],
      "calls": [{"call_id": str, "state": str, "started_at": float, "duration": float,
                 "legs": [{"side": "microsoft" | "video", "call_id": str, "remote": str,
                           "dialog_state": str,
                           "media": [{"kind": str, "packets_in": int, "packets_out": int,
                                      "bytes_in": int, "bytes_out": int,
                                      "last_packet_at": float | null,
                                      "idle": float | null}, ...]}, ...]}, ...],
      "port_pool": {"first": int, "last": int, "total": int, "in_use": int, "free": int,
                    "calls_refused": int, "bound": int, "held_back": int,
                    "turn_total": int, "turn_in_use": int},
      "turn_servers": [{"address": str, "port": int, "alive": bool, "status": str,
                        "allocations": int}, ...],
      "capacity": {"active": int, "max": int},
      "tasks": int,
      "transport": {"microsoft": TRANSPORT, "video": TRANSPORT}
    }

    TRANSPORT = {"refused": int, "evicted": int, "message_deadline": int, "slow_reader": int,
                 "idle": int, "oversized": int, "tls_failed": int}

    SIDE = {"name": str, "address": str, "alive": bool, "status": str}

``port_pool.bound`` counts ports with a socket open now (not reservations: ``in_use`` also
counts reserved ports not yet bound); ``held_back`` counts leases kept out of the pool because
their sockets were still open at release. ``tasks`` is the number of asyncio tasks alive in
the gateway's loop (a leak check: it comes back to its idle value when calls end).

``transport`` gives, per side's SIP stack, what its transport limits did since start
(``sip.transport.TransportCounters``): connections refused at the cap, idle ones evicted for
a new one, closed for an unfinished message, a peer that does not read, or idleness; oversized
messages passed over; inbound TLS handshakes that failed. A side without a stack is absent.

``status`` is ``"Alive"`` (``"Active"`` for a zone, as the product's zone page says) when
``alive`` is true, else the failure reason, e.g. ``"Failed: 408 Request Timeout to OPTIONS"``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.views import (  # the view types, re-exported
    ALIVE,
    ZONE_ACTIVE,
    CallView,
    Capacity,
    GatewayStatus,
    Health,
    LegSide,
    LegView,
    PeerView,
    PortPoolView,
    SideStatus,
    StreamCountersView,
    SystemView,
    TransportCountersView,
    TurnServerView,
    ZoneStatusView,
    streams_of,
)

__all__ = [
    "ALIVE",
    "CallView",
    "Capacity",
    "GatewayStatus",
    "Health",
    "LegSide",
    "LegView",
    "PeerView",
    "PortPoolView",
    "SideStatus",
    "StatusSource",
    "StreamCountersView",
    "SystemView",
    "TransportCountersView",
    "TurnServerView",
    "ZONE_ACTIVE",
    "ZoneStatusView",
    "streams_of",
]


@runtime_checkable
class StatusSource(Protocol):
    """Implemented by the runtime: a consistent snapshot of the gateway at ``now``.

    Called on the event loop thread for every ``/status`` and ``/healthz`` request, so it
    must be quick and must not block (build the views from in-memory state only).
    """

    def status(self, now: float) -> GatewayStatus: ...
