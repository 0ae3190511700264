"""A lab party's control port: place, inspect and end calls of a running Lync client or
SIP endpoint from another process (the Docker ``demo`` service, the health probe).

One JSON object per line each way over TCP, on the lab network only (no authentication:
it is a lab). Requests ``{"op": ..., ...}``; answers ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}`` (a bad request never closes the server). Call operations
name a handle the server gave out and answer with the call's state and media counters.

- ``status``: ``aor``, ``registered``, ``incoming`` (calls offered to us so far)
- ``call`` target, video: a new outgoing call's handle
- ``incoming`` after, timeout: the handle of the first call offered after the first ``after``
- ``wait_connected`` / ``wait_media`` (both_ways, min_packets) / ``hold`` / ``resume`` /
  ``add_video`` / ``hangup`` / ``media``: on a handle
- ``message`` target, text, timeout (Lync clients): a SIP MESSAGE, its final status

:class:`RemoteParty` and :class:`RemoteCall` are the client side, shaped like the lab's
:class:`lab.api.Caller` and :class:`lab.api.CallHandle` so :mod:`lab.demo` can drive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from lab.api import CallHandle, MediaReport

__all__ = ["ControlError", "ControlServer", "Party", "RemoteCall", "RemoteParty"]

logger = logging.getLogger(__name__)

MAX_LINE = 65536
"""Longest request line."""
HANDLE_OPS = frozenset({"wait_connected", "wait_media", "hold", "resume", "add_video", "hangup",
                        "media"})
"""Operations on a call handle."""
MAX_HANDLES = 200
"""Call handles kept (oldest forgotten first): a long-running party serves many demos."""
RPC_MARGIN = 5.0
"""Seconds a client waits beyond the timeout it asked the server to use."""


class ControlError(Exception):
    """The control server refused a request (or could not be reached)."""


class Party(Protocol):
    """What the control server needs of a Lync client or an endpoint (an adapter)."""

    aor: str

    def registered(self) -> bool: ...

    async def call(self, target: str, video: bool) -> CallHandle: ...

    async def next_incoming(self) -> CallHandle: ...

    async def message(self, target: str, text: str, timeout: float) -> tuple[int, str]: ...


def _media(handle: CallHandle) -> dict[str, Any]:
    return asdict(handle.media())


class ControlServer:
    """Serves one :class:`Party` on ``host:port``; an async context manager."""

    def __init__(self, party: Party, host: str, port: int) -> None:
        self.party = party
        self.host = host
        self.port = port
        self.handles: dict[str, CallHandle] = {}
        self.incoming: list[str] = []
        """Handles of calls offered to us, in arrival order."""
        self._issued = 0
        self._arrived = asyncio.Condition()
        self._server: asyncio.AbstractServer | None = None
        self._collector: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ControlServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        self._collector = asyncio.ensure_future(self._collect())
        logger.info("control port on %s:%d", self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _keep(self, handle: CallHandle) -> str:
        self._issued += 1
        key = f"h{self._issued}"
        self.handles[key] = handle
        while len(self.handles) > MAX_HANDLES:
            del self.handles[next(iter(self.handles))]
        return key

    async def _collect(self) -> None:
        while True:
            handle = await self.party.next_incoming()
            async with self._arrived:
                self.incoming.append(self._keep(handle))
                self._arrived.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line over MAX_LINE
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ControlError("a request is a JSON object")
            return {"ok": True, **await self._do(request)}
        except json.JSONDecodeError as error:
            return {"ok": False, "error": f"not JSON: {error}"}
        except Exception as error:  # every failure is the answer, never the server's end
            return {"ok": False, "error": str(error) or type(error).__name__}

    def _handle(self, request: dict[str, Any]) -> CallHandle:
        key = request.get("handle")
        if not isinstance(key, str) or key not in self.handles:
            raise ControlError(f"no call handle {key!r}")
        return self.handles[key]

    async def _do(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        timeout = float(request.get("timeout", 10.0))
        if op == "status":
            return {"aor": self.party.aor, "registered": self.party.registered(),
                    "incoming": len(self.incoming)}
        if op == "call":
            handle = await self.party.call(str(request["target"]),
                                           bool(request.get("video", True)))
            key = self._keep(handle)
            return {"handle": key, "call_id": handle.call_id, "media": _media(handle)}
        if op == "incoming":
            after = int(request.get("after", 0))
            async with self._arrived:
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: len(self.incoming) > after), timeout)
                key = self.incoming[after]
            handle = self._handle({"handle": key})
            return {"handle": key, "call_id": handle.call_id, "media": _media(handle)}
        if op == "message":
            status, reason = await self.party.message(str(request["target"]),
                                                      str(request.get("text", "")), timeout)
            return {"status": status, "reason": reason}
        if op not in HANDLE_OPS:
            raise ControlError(f"unknown op {op!r}")
        handle = self._handle(request)
        actions: dict[str, Callable[[], Awaitable[Any]]] = {
            "wait_connected": lambda: handle.wait_connected(timeout),
            "wait_media": lambda: handle.wait_media(
                both_ways=bool(request.get("both_ways", True)),
                min_packets=int(request.get("min_packets", 10)), timeout=timeout),
            "hold": handle.hold,
            "resume": handle.resume,
            "add_video": handle.add_video,
            "hangup": handle.hangup,
        }
        if op in actions:
            await actions[op]()
        return {"state": handle.state, "media": _media(handle)}


# -- the client side -----------------------------------------------------------------------


def _report(data: dict[str, Any] | None) -> MediaReport:
    if not data:
        return MediaReport(0, 0, ())
    return MediaReport(int(data["packets_sent"]), int(data["packets_received"]),
                       tuple(data["streams"]), data.get("ice_pair"))


class RemoteParty:
    """A party behind a control port, shaped like :class:`lab.api.Caller`."""

    def __init__(self, host: str, port: int, *, aor: str = "", timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.aor = aor
        self.timeout = timeout
        self.before_call: Callable[[], Awaitable[None]] | None = None
        """Awaited before each call is placed (the demo notes every callee's count then)."""

    async def rpc(self, op: str, **args: Any) -> dict[str, Any]:
        """One request on its own connection; the answer, or :class:`ControlError`."""
        wait = float(args.get("timeout", self.timeout)) + RPC_MARGIN
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
            try:
                writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        if not line:
            raise ControlError(f"{self.host}:{self.port} closed without an answer to {op}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error")))
        return answer

    async def status(self) -> dict[str, Any]:
        return await self.rpc("status", timeout=self.timeout)

    async def call(self, target: str, *, video: bool = True) -> RemoteCall:
        if self.before_call is not None:
            await self.before_call()
        answer = await self.rpc("call", target=target, video=video)
        return RemoteCall(self, answer["handle"], answer["call_id"], _report(answer["media"]))

    def offered_after(self, after: int) -> RemoteCall:
        """The first call offered to this party after its first ``after`` ones (bound on
        first use: the caller has it already, the callee may not have it yet)."""
        return RemoteCall(self, None, "", _report(None), after=after)

    async def message(self, target: str, text: str, timeout: float) -> tuple[int, str]:
        answer = await self.rpc("message", target=target, text=text, timeout=timeout)
        return int(answer["status"]), str(answer["reason"])


class RemoteCall:
    """A call held by a remote party, shaped like :class:`lab.api.CallHandle`. ``media()``
    answers from the counters of the last request (each one brings them back)."""

    def __init__(self, party: RemoteParty, handle: str | None, call_id: str,
                 report: MediaReport, *, after: int = 0) -> None:
        self.party = party
        self.handle = handle
        self.call_id = call_id
        self._report = report
        self._state = "connecting"
        self._after = after

    @property
    def state(self) -> str:
        return self._state

    async def _bind(self, timeout: float) -> str:
        if self.handle is None:
            answer = await self.party.rpc("incoming", after=self._after, timeout=timeout)
            self.handle, self.call_id = answer["handle"], answer["call_id"]
        assert self.handle is not None
        return self.handle

    async def _op(self, op: str, timeout: float = 10.0, **args: Any) -> None:
        handle = await self._bind(timeout)
        answer = await self.party.rpc(op, handle=handle, timeout=timeout, **args)
        self._state = str(answer.get("state", self._state))
        self._report = _report(answer.get("media"))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self._op("wait_connected", timeout)

    async def wait_media(self, *, both_ways: bool = True, min_packets: int = 10,
                         timeout: float = 10.0) -> MediaReport:
        await self._op("wait_media", timeout, both_ways=both_ways, min_packets=min_packets)
        return self._report

    async def hold(self) -> None:
        await self._op("hold")

    async def resume(self) -> None:
        await self._op("resume")

    async def add_video(self) -> None:
        await self._op("add_video")

    async def hangup(self) -> None:
        await self._op("hangup")

    def media(self) -> MediaReport:
        return self._report

    async def refresh(self) -> str:
        """Ask for the call's state and counters now; the state."""
        await self._op("media")
        return self._state
