"""`gateway demo`: the demo matrix of ``gateway lab`` (:data:`lab.demo.MATRIX`) placed
between running lab containers, the same table or ``--json``.

The parties (alice, david, endpoints 3001 and 3002) are the long-running role containers;
this process drives them through their control ports (:mod:`lab.control`), so every call
crosses the real containers: FE, Edge, A/V Edge and DMZ TURN, gateway, CUCM. Run it as the
compose ``demo`` service: ``docker compose --profile demo run --rm demo [--json]``.

The callee's side of a row is the first call offered to it after the caller dialled (the
rows run one after the other). The IM row sends a MESSAGE from alice to IM&P through the
gateway's broker and passes on IM&P's 200 (the IM&P container has no control port, so the
text it received is not read back, unlike ``gateway lab``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from types import MappingProxyType

from gateway.addresses import HostPort, parse_host_port
from lab.control import ControlError, RemoteCall, RemoteParty
from lab.demo import AOR, MATRIX, STEP_TIMEOUT, CallReport, Result, run_call
from sip import aio

__all__ = ["DockerLab", "PARTIES", "main"]

PARTIES: Mapping[str, str] = MappingProxyType({
    "alice": "172.28.1.21:7000",
    "david": "172.28.5.31:7000",
    "3001": "172.28.3.21:7000",
    "3002": "172.28.3.22:7000",
})
"""Control ports of the compose file's parties (docker-compose.yml ``--control``)."""
CLIENTS = ("alice", "david")


class DockerLab:
    """What :func:`lab.demo.run_call` needs of a lab, over control ports."""

    def __init__(self, parties: Mapping[str, HostPort]) -> None:
        self.parties = {name: RemoteParty(a.host, a.port, aor=AOR.get(name, f"{name}@"
                                                                      "video.example.com"))
                        for name, a in parties.items()}
        for party in self.parties.values():
            party.before_call = self._note_offered
        self.clients = {n: p for n, p in self.parties.items() if n in CLIENTS}
        self.endpoints = {n: p for n, p in self.parties.items() if n not in CLIENTS}
        self._offered: dict[str, int] = {}

    def endpoint(self, name: str) -> RemoteParty:
        return self.endpoints[name]

    async def _note_offered(self) -> None:
        counts = await asyncio.gather(*(p.status() for p in self.parties.values()))
        self._offered = {name: int(c["incoming"]) for name, c in zip(self.parties, counts,
                                                                      strict=True)}

    def callee_of(self, caller_call_id: str, callee: str) -> RemoteCall:
        return self.parties[callee].offered_after(self._offered.get(callee, 0))

    async def wait_registered(self, timeout: float) -> list[str]:
        """Until every party is registered; the ones that are not when time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = []
            for name, party in self.parties.items():
                try:
                    if not (await party.status()).get("registered"):
                        missing.append(name)
                except (ControlError, OSError, TimeoutError):
                    missing.append(name)
            if not missing or loop.time() >= deadline:
                return missing
            await asyncio.sleep(0.5)  # the parties are other containers: asked again


async def run_message(lab: DockerLab, sender: str = "alice",
                      target: str = "imp@video.example.com") -> CallReport:
    """IM through the broker: a MESSAGE from a Lync client, answered 2xx by IM&P."""
    result, reason, answers = Result.FAILED, "", 0
    try:
        status, text = await lab.clients[sender].message(target, "hello from the demo",
                                                         STEP_TIMEOUT)
        answers = 1
        if 200 <= status < 300:
            result, reason = Result.PASSED, f"{status} {text} from IM&P (sent by {sender})"
        else:
            reason = f"MESSAGE answered {status} {text}"
    except (ControlError, OSError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
    return CallReport("IM through the broker", AOR[sender], target,
                      "FE -> gateway (SIP broker) -> IM&P", None, answers, answers, result,
                      reason)


async def docker_matrix(lab: DockerLab, duration: float = 0.0) -> list[CallReport]:
    reports = [await run_call(lab, row, duration) for row in MATRIX]  # type: ignore[arg-type]
    reports.append(await run_message(lab))
    return reports


async def _run(args: argparse.Namespace) -> int:
    lab = DockerLab({name: getattr(args, f"party_{name}") for name in PARTIES})
    missing = await lab.wait_registered(args.wait)
    if missing:
        sys.stderr.write(f"gateway demo: not registered after {args.wait:.0f} s: "
                         f"{', '.join(missing)}\n")
        return 1
    reports = await docker_matrix(lab, args.duration)
    from lab.cli import write_report

    return 0 if write_report(reports, as_json=args.json) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway demo",
        description="The demo matrix between running lab containers (docker compose).")
    parser.add_argument("--json", action="store_true", help="print only a JSON object")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds each call keeps media up after it flows")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for every party to be registered")
    for name, address in PARTIES.items():
        parser.add_argument(f"--{name}", dest=f"party_{name}", type=parse_host_port,
                            default=parse_host_port(address), metavar="HOST:PORT",
                            help=f"control port of {name} (default {address})")
    args = parser.parse_args(argv)
    try:
        return aio.run(_run(args))
    except KeyboardInterrupt:
        return 130
