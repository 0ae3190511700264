"""The asyncio side of the zone monitor: OPTIONS to each peer when ``ZoneMonitors`` says so.

All the scheduling and the Active / failed state live in the sans-IO
:class:`gateway.zones.ZoneMonitors`; this task only sends what :meth:`~ZoneMonitors.due`
returns, reports each outcome with the loop's time, and sleeps until
:meth:`~ZoneMonitors.get_timer` (aioquic's one-timer adapter shape).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.zones import FailureKind, Probe, ZoneMonitors, failure_reason
from sip.stack import Hop, SipTimeoutError
from sip.transport import Transport, TransportAddress
from sip.uri import URI, Params
from sip.useragent import UserAgent

__all__ = ["ZoneMonitorTask"]

logger = logging.getLogger(__name__)


class ZoneMonitorTask:
    """Drives a :class:`ZoneMonitors` with real OPTIONS requests.

    ``agents`` maps a zone name to the UA that reaches it (the Microsoft zone goes out of
    the Microsoft-side stack, neighbor zones out of the video-side one); ``server_name``
    gives the TLS name to check for a zone (None: the peer address).
    """

    def __init__(
        self,
        monitors: ZoneMonitors,
        agent_for: Callable[[str], UserAgent],
        *,
        server_name: Callable[[str], str | None] = lambda zone: None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.monitors = monitors
        self._agent_for = agent_for
        self._server_name = server_name
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._probes.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for probe in self.monitors.due(loop.time()):
                task = asyncio.ensure_future(self._probe(probe))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            self._changed()
            deadline = self.monitors.get_timer()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _probe(self, probe: Probe) -> None:
        loop = asyncio.get_running_loop()
        peer = probe.peer
        agent = self._agent_for(probe.zone)
        params = Params() if peer.transport is Transport.UDP else Params.of(
            transport=peer.transport.value.lower())
        uri = URI("sip", host=peer.host, port=peer.port, params=params)
        hop = Hop(peer.transport, peer.host, peer.port,
                  server_hostname=self._server_name(probe.zone))
        try:
            request = agent.new_request("OPTIONS", uri, hop)
            response = await agent.stack.send_request(request, hop)
        except SipTimeoutError as error:
            self.monitors.on_failure(probe.zone, peer, _probe_failure(peer, error), loop.time())
        except Exception as error:  # noqa: BLE001 - a probe must never kill the monitor
            logger.warning("OPTIONS to %s failed: %r", peer, error)
            self.monitors.on_failure(probe.zone, peer, failure_reason(
                FailureKind.ERROR, peer, str(error)), loop.time())
        else:
            self.monitors.on_response(probe.zone, peer, response.status, loop.time())
        self._changed()
        self._wake.set()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _probe_failure(peer: TransportAddress, error: SipTimeoutError) -> str:
    """The status text for an unanswered OPTIONS, from the transport's own reason."""
    if not error.transport_error:
        return failure_reason(FailureKind.TIMEOUT, peer)
    detail = error.reason or ""
    if "refused" in detail.lower():
        return failure_reason(FailureKind.REFUSED, peer)
    if peer.transport is Transport.TLS and any(
        word in detail.lower() for word in ("certificate", "ssl", "tls", "handshake")
    ):
        _, _, why = detail.partition(": ")
        return failure_reason(FailureKind.TLS, peer, why or detail)
    return failure_reason(FailureKind.ERROR, peer, detail)
