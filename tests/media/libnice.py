"""A real libnice agent (tests/peers/libnice_peer.py) in a network namespace of its own,
joined to the test process by a veth: libnice ignores loopback interfaces.

The namespace and veth are ``lab.netns.VethHost``'s (``VethHost.unique``: names with a
per-run tag, a 10.99.N.0/24 not already on this host, so parallel runs do not meet), without
its lab-loopback routing; both are deleted on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.netns import NetnsUnavailable, VethHost, unavailable
from media.ms_dialect import Candidate, CandidateTransport, parse_candidate

SCRIPT = Path(__file__).resolve().parent.parent / "peers" / "libnice_peer.py"
SYSTEM_PYTHON = "/usr/bin/python3"
EVENT_TIMEOUT = 20.0


def why_not() -> str | None:
    """Why the libnice peer cannot run here (None when it can)."""
    reason = unavailable()
    if reason is not None:
        return reason
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('Nice', '0.1');"
         " from gi.repository import Nice"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return ("libnice's introspection data is missing (scripts/install-peers.sh installs "
                f"gir1.2-nice-0.1 python3-gi): {last}")
    return None


class NamespaceUnavailable(RuntimeError):
    """The namespace or veth could not be made here (no CAP_NET_ADMIN, no veth module)."""


@dataclass(frozen=True, slots=True)
class Veth:
    namespace: str
    ours: str
    """Our address (root namespace end)."""
    theirs: str
    """libnice's address (inside ``namespace``)."""
    network: str


@contextlib.contextmanager
def veth_pair() -> Iterator[Veth]:
    host = VethHost.unique(lab_loopback=False)
    try:
        with host:
            yield Veth(host.namespace, host.outer, host.address, str(host.subnet))
    except NetnsUnavailable as error:
        raise NamespaceUnavailable(str(error)) from error


class LibnicePeer:
    """The libnice peer process; its JSON events are kept in order and awaited."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        """libnice's debug output (G_MESSAGES_DEBUG / NICE_DEBUG from the environment)."""
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())
        self._errors = asyncio.ensure_future(self._read_errors())

    async def _read_errors(self) -> None:
        # Always drained: a full stderr pipe would block libnice's debug logging.
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr += line.decode(errors="replace")

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    async def wait(self, match: Callable[[dict[str, Any]], bool],
                   timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            async with self._changed:
                while True:
                    for event in self.events:
                        if match(event):
                            return event
                    if self.events and self.events[-1]["event"] == "exit":
                        await self._errors
                        raise AssertionError(f"libnice peer exited: {self.events[-3:]}; "
                                             f"stderr: {self.stderr[-1500:]}")
                    await self._changed.wait()
        return await asyncio.wait_for(find(), timeout)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())

    def payloads(self, prefix: str) -> list[str]:
        return [e["payload"] for e in self.events
                if e["event"] == "data" and e["payload"].startswith(prefix)]


@contextlib.asynccontextmanager
async def libnice_peer(veth: Veth, *, controlling: bool,
                       compatibility: str = "OC2007R2") -> AsyncIterator[LibnicePeer]:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", veth.namespace, SYSTEM_PYTHON, str(SCRIPT),
        "--controlling" if controlling else "--controlled", "--compatibility", compatibility,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    peer = LibnicePeer(process)
    try:
        yield peer
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionError):
                peer.send(quit=True)
                assert process.stdin is not None
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        peer._reader.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer._errors, 5.0)


@dataclass(frozen=True, slots=True)
class NiceSdp:
    ufrag: str
    pwd: str
    candidates: tuple[Candidate, ...]


def read_nice_sdp(sdp: str) -> NiceSdp:
    """libnice's ``generate_local_sdp`` output: credentials and its UDP candidates."""
    ufrag = pwd = ""
    candidates = []
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.partition(":")[2]
        elif line.startswith("a=ice-pwd:"):
            pwd = line.partition(":")[2]
        elif line.startswith("a=candidate:"):
            candidate = parse_candidate(line.partition(":")[2])
            if candidate.transport is CandidateTransport.UDP:
                candidates.append(candidate)
    return NiceSdp(ufrag, pwd, tuple(candidates))


def write_nice_sdp(ufrag: str, pwd: str, candidates: Sequence[Candidate]) -> str:
    """Our side in the SDP form ``parse_remote_sdp`` reads (stream name "audio")."""
    rtp = next(c for c in candidates if c.component == 1)
    lines = [f"m=audio {rtp.port} ICE/SDP", f"c=IN IP4 {rtp.address}",
             f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
    lines += [f"a=candidate:{c.value()}" for c in candidates]
    return "\n".join(lines) + "\n"
