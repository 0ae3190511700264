"""The management HTTP server (aiohttp): the operator's page and the machine endpoints.

For machines, as before: ``/status`` (JSON; times as ISO 8601 wall-clock), ``/metrics``
(Prometheus) and ``/healthz`` (200 ``ok`` / 503 ``draining``). For people: ``/`` (the
dashboard: sides, zones, TURN, port pool, active calls with live counters over server-sent
events, recent calls, refusals), ``/call/{id}`` (the SIP ladder of both legs, the media
timeline) and ``/call/{id}/pcap`` (that call's SIP and media). The pages are static files
(``gateway/web/``) whose scripts read ``/api/...`` JSON and build the DOM with
``textContent``, so nothing taken from SIP is ever interpreted as HTML.

aiohttp parses HTTP: malformed requests get its 4xx and the connection is closed; nothing a
client sends can take the listener down. A failing status source costs one 500.

Bound to 127.0.0.1:9090 by default (``[system] management``): the pages show call details,
so they are for the host's operators, not the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway.call_log import CallLog, CallRecord, LoggedMessage
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewayMetrics
from gateway.status import StatusSource

__all__ = [
    "ManagementServer",
    "ManagementSettings",
    "iso_times",
]

logger = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
"""Seconds an idle keep-alive connection is kept."""
EVENTS_INTERVAL = 1.0
"""Seconds between two dashboard updates on ``/events``."""
JSON_CONTENT_TYPE = "application/json"
MACHINE_PATHS = ("/status", "/metrics", "/healthz")
_STATIC = {
    "app.css": "text/css",
    "dashboard.js": "text/javascript",
    "call.js": "text/javascript",
    "common.js": "text/javascript",
}
_CALL_ID_MAX = 256


@dataclass(frozen=True, slots=True)
class ManagementSettings:
    """Where the management server listens."""

    host: str = "127.0.0.1"
    """Bind address (an IP literal)."""
    port: int = 9090
    """TCP port; 0 picks a free one (tests)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"management port out of range: {self.port}")

    @classmethod
    def parse(cls, text: str) -> ManagementSettings:
        """``"127.0.0.1:9090"``, ``"[::1]:9090"`` or ``":9090"`` (host defaults to loopback)."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"management address must be HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"an IPv6 management address needs brackets: {text!r}")
        return cls(host or "127.0.0.1", int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def iso_times(document: Any, offset: float) -> Any:
    """``document`` with every number under a key ending in ``_at`` (a time on the runtime's
    clock) turned into ISO 8601 UTC wall-clock text (``offset`` = wall clock - runtime clock).
    Ages (``uptime``, ``duration``, ``idle``) stay seconds."""
    if isinstance(document, dict):
        return {key: (_iso(value + offset) if key.endswith("_at")
                      and isinstance(value, int | float) and not isinstance(value, bool)
                      else iso_times(value, offset))
                for key, value in document.items()}
    if isinstance(document, list):
        return [iso_times(item, offset) for item in document]
    return document


class ManagementServer:
    """Serves a :class:`StatusSource`, a :class:`GatewayMetrics` and a :class:`CallLog`.

    Use as ``async with ManagementServer(source, metrics, settings) as server:``, or call
    :meth:`start` and :meth:`close`. ``clock`` gives the ``now`` passed to
    ``source.status(now)`` (default: the running loop's clock); ``wall_clock`` turns those
    times into wall-clock ones for the JSON.
    """

    def __init__(self, source: StatusSource, metrics: GatewayMetrics,
                 settings: ManagementSettings | None = None, *,
                 clock: Callable[[], float] | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 read_timeout: float = READ_TIMEOUT,
                 calls: CallLog | None = None,
                 events_interval: float = EVENTS_INTERVAL) -> None:
        self.source = source
        self.metrics = metrics
        self.settings = settings or ManagementSettings()
        self.calls = calls if calls is not None else CallLog()
        self._clock = clock
        self._wall_clock = wall_clock
        self.read_timeout = read_timeout
        self.events_interval = events_interval
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._closing = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("management server already started")
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        app = web.Application(middlewares=[self._errors], client_max_size=1024)
        app.router.add_get("/", self._page("index.html"))
        app.router.add_get("/call/{call_id}", self._page("call.html"))
        app.router.add_get("/call/{call_id}/pcap", self._pcap)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/dashboard", self._dashboard)
        app.router.add_get("/api/call/{call_id}", self._call)
        app.router.add_get("/events", self._events, allow_head=False)  # a stream: no HEAD
        self._closing.clear()
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=self.read_timeout, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.info("management HTTP on %s", self.address_text)

    async def close(self) -> None:
        """Stop listening and drop connections still in progress (event streams too)."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> ManagementServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._runner is None:
            raise RuntimeError("management server not started")
        return self._port

    @property
    def address_text(self) -> str:
        return str(ManagementSettings(self.settings.host, self.port))

    @property
    def url(self) -> str:
        """The operator's page."""
        return f"http://{self.address_text}/"

    # -- plumbing ----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            response = await handler(request)
            if request.path in MACHINE_PATHS:
                # As before aiohttp: one request per connection for scrapers and scripts
                # that read until the server closes.
                response.force_close()
            return response
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="only GET and HEAD\n",
                                headers={"Allow": "GET, HEAD"})
        except web.HTTPNotFound:
            return web.Response(status=404, text="not found; try /, "
                                + ", ".join(MACHINE_PATHS) + "\n")
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            # A bug in a status provider must cost one 500, not the server.
            logger.exception("management %s failed", request.path)
            return web.Response(status=500, text="internal error\n")

    def _now(self) -> float:
        assert self._clock is not None, "start() sets the clock"
        return self._clock()

    def _offset(self) -> float:
        return self._wall_clock() - self._now()

    @staticmethod
    def _json(document: Any) -> web.Response:
        body = json.dumps(document, indent=2, allow_nan=False).encode() + b"\n"
        return web.Response(body=body, content_type=JSON_CONTENT_TYPE,
                            headers={"Cache-Control": "no-store"})

    # -- machines ----------------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        """``/status``: the source's snapshot with wall-clock ISO times."""
        snapshot = self.source.status(self._now())
        document: dict[str, Any] = iso_times(snapshot.to_json(), self._offset())
        return document

    async def _status(self, request: web.Request) -> web.Response:
        return self._json(self.status_json())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE,
                                     "Cache-Control": "no-store"})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.source.status(self._now()).healthy:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="draining\n")

    # -- people ------------------------------------------------------------------------------

    def _page(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def page(request: web.Request) -> web.Response:
            return web.Response(body=_resource(name), content_type="text/html",
                                charset="utf-8", headers=_PAGE_HEADERS)
        return page

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _STATIC.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=_resource(name), content_type=kind, charset="utf-8",
                            headers=_PAGE_HEADERS)

    def dashboard_json(self) -> dict[str, Any]:
        """``/api/dashboard`` (and each ``/events`` update): status, calls, refusals."""
        status = self.status_json()
        active = {call["call_id"]: call for call in status["calls"]}
        for call_id, call in active.items():
            record = self.calls.get(call_id)
            call["from"] = record.from_ if record else ""
            call["to"] = record.to if record else ""
            call["codecs"] = _codecs(record) if record else {}
            call["ice"] = _ice_of(record) if record else ""
        recent = [self._summary(record) for record in self.calls.newest_first()
                  if record.call_id not in active]
        return {"status": status, "recent": recent, "refusals": self._refusals()}

    def _summary(self, record: CallRecord) -> dict[str, Any]:
        outcome = self._outcome(record)
        return {
            "call_id": record.call_id,
            "started_at": _iso(record.started_at),
            "from": record.from_,
            "to": record.to,
            "direction": f"from {record.inbound_side.value}",
            "result": outcome[0],
            "reason": outcome[1],
            "messages": len(record.messages),
            "duration": round(record.last_at - record.started_at, 3),
        }

    def _outcome(self, record: CallRecord) -> tuple[str, str]:
        if record.outcome is not None:
            return record.outcome
        found = self.calls.outcome_of(record.call_id)
        if found is not None and found[1]:
            record.outcome = found  # ended: remember it (the runtime keeps only the last few)
            return found
        if found is not None:
            return found[0], ""
        final = record.final_answer()
        if final is not None and not final.label.startswith("2"):
            record.outcome = ("refused", final.label)
            return record.outcome
        return "ended", ""

    def _refusals(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for family in self.metrics.registry.collect():
            if family.name.endswith("calls_refused"):
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        counts[sample.labels.get("reason", "")] = sample.value
        return counts

    def call_json(self, call_id: str) -> dict[str, Any] | None:
        """``/api/call/{id}``: the ladder's messages and the media timeline."""
        record = self.calls.get(call_id)
        if record is None:
            return None
        messages = list(record.messages)
        return {
            **self._summary(record),
            "active": self.calls.is_active(call_id),
            "inbound_side": record.inbound_side.value,
            "legs": sorted(record.leg_ids, key=lambda leg: leg != record.call_id),
            "messages_dropped": record.messages_dropped,
            "packets": len(record.packets),
            "messages": [_message_json(record, m, messages) for m in messages],
            "timeline": _timeline(record),
        }

    async def _dashboard(self, request: web.Request) -> web.Response:
        return self._json(self.dashboard_json())

    async def _call(self, request: web.Request) -> web.Response:
        document = self.call_json(_call_id(request))
        if document is None:
            return web.Response(status=404, text="no such call (or no longer kept)\n")
        return self._json(document)

    async def _pcap(self, request: web.Request) -> web.Response:
        call_id = _call_id(request)
        data = self.calls.pcap(call_id)
        if data is None:
            return web.Response(status=404, text="no such call (or no longer kept)\n")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:64]
        return web.Response(body=data, headers={
            "Content-Type": "application/vnd.tcpdump.pcap",
            "Content-Disposition": f'attachment; filename="call-{safe}.pcap"',
            "Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the dashboard JSON every ``events_interval`` seconds."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            async for document in self._updates():
                await response.write(f"data: {json.dumps(document)}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def _updates(self) -> AsyncIterator[dict[str, Any]]:
        while not self._closing.is_set():
            try:
                yield self.dashboard_json()
            except Exception:
                logger.exception("management /events failed")
                return
            try:
                await asyncio.wait_for(self._closing.wait(), self.events_interval)
            except TimeoutError:
                pass


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # Only our own files run: a value that slipped into markup still could not run script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}


def _resource(name: str) -> bytes:
    return resources.files("gateway").joinpath("web", name).read_bytes()


def _call_id(request: web.Request) -> str:
    call_id = request.match_info["call_id"]
    if len(call_id) > _CALL_ID_MAX:
        raise web.HTTPBadRequest(text="call id too long\n")
    return call_id


def _message_json(record: CallRecord, message: LoggedMessage,
                  messages: list[LoggedMessage]) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "at": _iso(message.at),
        "t": message.at,
        "side": message.side.value,
        "sent": message.sent,
        "transport": message.transport,
        "local": _endpoint(message.local),
        "remote": _endpoint(message.remote),
        "leg": message.leg_call_id,
        "label": message.label,
        "cseq": message.cseq,
        "text": message.data.decode("utf-8", "replace"),
        "sdp": record.sdp(message),
        "sdp_other": _counterpart_sdp(record, message, messages),
    }


def _counterpart_sdp(record: CallRecord, message: LoggedMessage,
                     messages: list[LoggedMessage]) -> str | None:
    """The SDP on the other leg this one was rewritten from (sent) or into (received)."""
    if record.sdp(message) is None:
        return None
    if message.sent:
        earlier = [m for m in messages if m.seq < message.seq and not m.sent
                   and m.side is not message.side and record.sdp(m) is not None]
        return record.sdp(earlier[-1]) if earlier else None
    later = [m for m in messages if m.seq > message.seq and m.sent
             and m.side is not message.side and record.sdp(m) is not None]
    return record.sdp(later[0]) if later else None


def _endpoint(endpoint: tuple[str, int]) -> str:
    host = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
    return f"{host}:{endpoint[1]}"


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^\s]+)", re.MULTILINE)


def _codecs_of(sdp: str) -> list[str]:
    """``audio PCMU/8000``: each m= line's first payload type, by name."""
    names = dict(_RTPMAP.findall(sdp))
    result = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) >= 4 and fields[1] != "0":
                result.append(f"{fields[0]} {names.get(fields[3], fields[3])}")
    return result


def _codecs(record: CallRecord) -> dict[str, list[str]]:
    """Per side, the codecs of the last SDP the peer sent."""
    found: dict[str, list[str]] = {}
    for message in reversed(record.messages):
        side = message.side.value
        if message.sent or side in found:
            continue
        sdp = record.sdp(message)
        if sdp is not None:
            found[side] = _codecs_of(sdp)
    return found


def _ice_of(record: CallRecord) -> str:
    return next((n.text for n in record.notes if n.text.startswith("ICE")), "")


_DIRECTION = re.compile(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", re.MULTILINE)


def _timeline(record: CallRecord) -> list[dict[str, str]]:
    """Offer/answer, hold/resume (from the SDP directions), first packets, the ICE pair."""
    events: list[tuple[float, str]] = [(n.at, n.text) for n in record.notes]
    offers = 0
    for message in record.messages:
        sdp = record.sdp(message)
        if sdp is None or message.sent:
            continue
        offers += 1
        directions = set(_DIRECTION.findall(sdp)) or {"sendrecv"}
        what = "offer" if message.is_request else "answer"
        ways = ", ".join(sorted(directions))
        text = f"{message.side.value} peer {what} in {message.label} ({ways})"
        if message.is_request and offers > 1:
            held = directions & {"sendonly", "inactive"}
            text += ": hold" if held else ": resume"
        events.append((message.at, text))
    events.sort(key=lambda event: event[0])
    return [{"at": _iso(at), "text": text} for at, text in events]
