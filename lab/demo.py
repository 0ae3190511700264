"""The demo matrix ``gateway lab`` places through a running :class:`lab.topology.Lab`, and
its report.

Rows: internal Lync -> endpoint, endpoint -> internal Lync, external Lync via the Edge and
TURN -> endpoint, hold/resume, voice -> video, IM through the broker; or, for load,
``count`` calls of the basic kind (alternating directions) ``concurrency`` at a time.
A media row passes when RTP arrived both ways at both ends (at least ``MIN_PACKETS``), the
Lync client's nominated ICE pair has the expected kind, and the call hung up cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.topology import Lab

__all__ = ["CallReport", "IcePath", "MIN_PACKETS", "Result", "demo_matrix", "load_calls",
           "summary"]

logger = logging.getLogger(__name__)

MIN_PACKETS = 10
"""RTP packets each end must receive for a media row to pass."""
STEP_TIMEOUT = 10.0
"""Seconds each step (answer, media, re-INVITE) may take."""

Handle = Any  # LyncCall | EndpointCall: both are lab.api.CallHandle


class Result(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"


class IcePath(enum.Enum):
    """Which nominated ICE pair a row expects of the Lync client."""

    HOST = "host/*"
    """Internal: the client's own host candidate (to the gateway's host candidate or its
    DMZ TURN relay, whichever answered first)."""
    RELAY = "relay"
    """External: a relay candidate on either side."""

    def accepts(self, pair: str | None) -> bool:
        if pair is None:
            return False
        if self is IcePath.HOST:
            return pair.startswith("host/")
        return "relay" in pair.split("/")


@dataclass(frozen=True, slots=True)
class CallReport:
    """One row of the demo."""

    name: str
    caller: str
    callee: str
    path: str
    """The elements the call crossed."""
    ice_pair: str | None
    """The Lync client's nominated pair, "local/remote" candidate types."""
    to_callee: int
    """RTP packets the callee received (SIP MESSAGEs for the IM row)."""
    to_caller: int
    """RTP packets the caller received (final responses for the IM row)."""
    result: Result
    reason: str
    """Why it failed, or what was checked."""

    @property
    def passed(self) -> bool:
        return self.result is Result.PASSED

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "caller": self.caller, "callee": self.callee,
                "path": self.path, "ice_pair": self.ice_pair,
                "packets": {"to_callee": self.to_callee, "to_caller": self.to_caller},
                "result": self.result.value, "reason": self.reason}


def summary(reports: list[CallReport]) -> dict[str, Any]:
    """The ``--json`` document."""
    passed = sum(1 for r in reports if r.passed)
    return {"calls": [r.to_json() for r in reports], "passed": passed,
            "failed": len(reports) - passed}


class _Failed(Exception):
    """A check of a row did not hold."""


Step = Callable[[Handle, Handle], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class _Row:
    name: str
    caller: str
    """A client name or an endpoint user."""
    callee: str
    target: str
    path: str
    ice: IcePath
    video: bool = True
    step: Step | None = None


AOR = {"alice": "alice.parkes@example.com", "david": "david.jones@example.com"}
INTERNAL = "FE -> gateway -> CUCM"
EXTERNAL = "Edge -> FE -> gateway -> CUCM, media via A/V Edge TURN"


def _aor(party: str) -> str:
    return AOR.get(party, f"{party}@video.example.com")


async def _more_media(handle: Handle, more: int, *, kind: str | None = None) -> None:
    """Until ``more`` further packets arrived (of a stream of ``kind``, when given)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT
    while True:
        now = handle.media()
        report = await handle.wait_media(both_ways=False,
                                         min_packets=now.packets_received + more,
                                         timeout=max(0.1, deadline - loop.time()))
        if kind is None or kind in report.streams:
            return
        if loop.time() >= deadline:
            raise _Failed(f"no {kind} media: streams {report.streams}")


async def _hold_resume(call: Handle, answered: Handle) -> str:
    await call.hold()
    await call.resume()
    await asyncio.gather(_more_media(call, MIN_PACKETS), _more_media(answered, MIN_PACKETS))
    return "held, resumed, media both ways after"


async def _add_video(call: Handle, answered: Handle) -> str:
    if "video" in call.media().streams or "video" in answered.media().streams:
        raise _Failed("video flowed before the re-INVITE")
    await call.add_video()
    await asyncio.gather(_more_media(call, MIN_PACKETS, kind="video"),
                         _more_media(answered, MIN_PACKETS, kind="video"))
    return "video added, video media both ways"


def _party(lab: Lab, name: str) -> Any:
    return lab.clients[name] if name in lab.clients else lab.endpoint(name)


async def run_call(lab: Lab, row: _Row, duration: float) -> CallReport:
    """Place one media row and check it (never raises for a failed check)."""
    call: Handle | None = None
    answered: Handle | None = None
    reason = ""
    result = Result.FAILED
    pair: str | None = None
    try:
        async with asyncio.timeout(STEP_TIMEOUT * 4 + duration):
            call = await _party(lab, row.caller).call(row.target, video=row.video)
            await call.wait_connected(STEP_TIMEOUT)
            answered = lab.callee_of(call.call_id, row.callee)
            if answered is None:
                raise _Failed(f"{row.callee} has no call matching {call.call_id}")
            await asyncio.gather(
                call.wait_media(both_ways=True, min_packets=MIN_PACKETS, timeout=STEP_TIMEOUT),
                answered.wait_media(both_ways=True, min_packets=MIN_PACKETS,
                                    timeout=STEP_TIMEOUT))
            if duration > 0:
                await asyncio.sleep(duration)  # the call's requested length, not a wait
            reason = "media both ways"
            if row.step is not None:
                reason = await row.step(call, answered)
            pair = _ice_pair(lab, row, call, answered)  # before the hangup closes ICE
            if not row.ice.accepts(pair):
                raise _Failed(f"ICE pair {pair}, expected {row.ice.value}")
            await call.hangup()
            result = Result.PASSED
    except (_Failed, Exception) as error:  # every failure becomes the row's reason
        reason = str(error) or type(error).__name__
        logger.warning("%s: %s", row.name, reason)
    finally:
        if pair is None:
            pair = _ice_pair(lab, row, call, answered)
        if call is not None and result is Result.FAILED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.hangup(), STEP_TIMEOUT)
    return CallReport(
        row.name, _aor(row.caller), _aor(row.callee), row.path, pair,
        answered.media().packets_received if answered is not None else 0,
        call.media().packets_received if call is not None else 0,
        result, reason)


def _ice_pair(lab: Lab, row: _Row, call: Handle | None, answered: Handle | None) -> str | None:
    lync = call if row.caller in lab.clients else answered
    return lync.media().ice_pair if lync is not None else None


async def run_message(lab: Lab, sender: str = "alice",
                      target: str = "imp@video.example.com") -> CallReport:
    """IM through the broker, as the client sends it (an IM session for Lync 2010 and later:
    INVITE m=message, the text as a MESSAGE inside it, BYE): the text reaches IM&P."""
    text = "hello from the lab"
    delivered = answers = 0
    result, reason = Result.FAILED, ""
    assert lab.imp is not None
    client = lab.clients[sender]
    try:
        waiting = asyncio.ensure_future(lab.imp.wait_for("MESSAGE", STEP_TIMEOUT))
        try:
            response = await client.im.send(target, text, timeout=STEP_TIMEOUT)
            answers = 1
            if not 200 <= response.status < 300:
                raise _Failed(f"MESSAGE answered {response.status} {response.reason}")
            request = await waiting
        finally:
            waiting.cancel()
        delivered = 1
        if request.body.decode(errors="replace") != text:
            raise _Failed(f"IM&P got {request.body!r}")
        how = "page-mode MESSAGE"
        session = client.im.session_with(f"sip:{target}")
        if session is not None:
            how = "IM session"
            bye = await session.close(STEP_TIMEOUT)
            if bye is None or bye.status != 200:
                raise _Failed(f"BYE of the IM session answered {bye and bye.status}")
        result, reason = Result.PASSED, f"200 OK, IM&P received the text from {sender} ({how})"
    except (_Failed, Exception) as error:
        reason = str(error) or type(error).__name__
        logger.warning("IM through the broker: %s", reason)
    return CallReport("IM through the broker", _aor(sender), target,
                      "FE -> gateway (SIP broker) -> IM&P", None, delivered, answers, result,
                      reason)


MATRIX = (
    _Row("internal Lync -> endpoint", "alice", "3001", "3001@video.example.com", INTERNAL,
         IcePath.HOST),
    _Row("endpoint -> internal Lync", "3002", "alice", "alice.parkes@example.com",
         "CUCM -> gateway -> FE", IcePath.HOST),
    _Row("external Lync via Edge and TURN -> endpoint", "david", "3001",
         "3001@video.example.com", EXTERNAL, IcePath.RELAY),
    _Row("hold/resume", "alice", "3002", "3002@video.example.com", INTERNAL, IcePath.HOST,
         step=_hold_resume),
    _Row("voice -> video", "alice", "3001", "3001@video.example.com", INTERNAL, IcePath.HOST,
         video=False, step=_add_video),
)


async def demo_matrix(lab: Lab, duration: float = 0.0) -> list[CallReport]:
    """Every row of the matrix, one after the other, then the IM."""
    reports = [await run_call(lab, row, duration) for row in MATRIX]
    reports.append(await run_message(lab))
    return reports


async def load_calls(lab: Lab, count: int, concurrency: int, duration: float
                     ) -> list[CallReport]:
    """``count`` basic calls between alice and the endpoints, alternating directions
    (alice -> 3001, 3001 -> alice, alice -> 3002, 3002 -> alice ...), ``concurrency`` at a
    time, each holding media ``duration`` seconds; reported in order."""
    limit = asyncio.Semaphore(max(1, concurrency))
    endpoints = sorted(lab.endpoints)

    async def one(index: int) -> CallReport:
        endpoint = endpoints[(index // 2) % len(endpoints)]
        if index % 2 == 0:
            row = _Row(f"call {index + 1}", "alice", endpoint, f"{endpoint}@video.example.com",
                       INTERNAL, IcePath.HOST)
        else:
            row = _Row(f"call {index + 1}", endpoint, "alice", AOR["alice"],
                       "CUCM -> gateway -> FE", IcePath.HOST)
        async with limit:
            return await run_call(lab, row, duration)

    return list(await asyncio.gather(*(one(i) for i in range(count))))
