"""`gateway lab` (what `make lab` runs), first version: the lab PKI, two SIP endpoints on
loopback (udp + tcp + tls each) and one call between them over each transport.

Prints a table (or ``--json``: ``{"calls": [...], "passed": N, "failed": N}``) and exits 0
only when every call passed. ``--keep-running`` leaves the endpoints up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.endpoint.agent import CallFailed, Endpoint
from lab.endpoint.config import EndpointConfig, ListenSpec
from sip import aio
from sip.stack import Hop
from sip.transport import Transport
from sip.uri import URI, Params

__all__ = ["CallReport", "LabEndpoints", "main", "run_calls"]

logger = logging.getLogger("lab")

ENDPOINT_CERT_NAME = "endpoint.video.example.com"
"""The name in the lab "endpoint" certificate: what callers check over TLS."""


@dataclass(frozen=True, slots=True)
class CallReport:
    """One demo call's outcome."""

    call: str
    """Who called whom."""
    transport: str
    """udp, tcp or tls."""
    passed: bool
    """True when set up, held and hung up cleanly."""
    result: str
    """What happened, in words."""
    setup_ms: float | None
    """INVITE to 200 OK."""
    call_id: str | None
    """Call-ID, to find it in the endpoints' logs."""


@dataclass(frozen=True, slots=True)
class LabEndpoints:
    """Where the lab's two endpoints are."""

    caller: Endpoint
    callee: Endpoint


async def start_endpoints(certs: Path, sip_port: int, tls_port: int) -> LabEndpoints:
    """Two endpoints: 3001 on 127.0.3.11 and 3002 on 127.0.3.12, udp + tcp + tls each."""
    started: list[Endpoint] = []
    try:
        for user, host in (("3001", "127.0.3.11"), ("3002", "127.0.3.12")):
            config = EndpointConfig(
                aor=f"{user}@video.example.com",
                listen=(
                    ListenSpec(Transport.UDP, host, sip_port),
                    ListenSpec(Transport.TCP, host, sip_port),
                    ListenSpec(Transport.TLS, host, tls_port),
                ),
                certs=certs,
                tls_server_name=ENDPOINT_CERT_NAME,
            )
            started.append(await Endpoint.start(config))
    except BaseException:
        for endpoint in started:
            await endpoint.close()
        raise
    return LabEndpoints(started[0], started[1])


async def run_calls(lab: LabEndpoints, duration: float) -> list[CallReport]:
    """Call from the caller to the callee once over each transport."""
    reports = []
    for transport in (Transport.UDP, Transport.TCP, Transport.TLS):
        listener = lab.callee.stack.listener(transport)
        assert listener is not None
        params = (
            Params() if transport is Transport.UDP else Params.of(transport=transport.value.lower())
        )
        uri = URI(
            "sip", user=lab.callee.user, host=listener.host, port=listener.port, params=params
        )
        hop = Hop.from_uri(uri, server_hostname=ENDPOINT_CERT_NAME)
        name = f"{lab.caller.user} -> {lab.callee.user}"
        try:
            call = await lab.caller.place_call(uri, hop, duration=duration)
        except CallFailed as error:
            reports.append(CallReport(name, transport.value.lower(), False, str(error), None, None))
            continue
        passed = call.result == "completed"
        reports.append(
            CallReport(
                name,
                transport.value.lower(),
                passed,
                call.result,
                None if call.setup_ms is None else round(call.setup_ms, 1),
                call.call_id,
            )
        )
    return reports


def _print_table(reports: list[CallReport]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gateway lab: demo calls")
    for column in ("call", "transport", "result", "setup ms"):
        table.add_column(column)
    for report in reports:
        colour = "green" if report.passed else "red"
        table.add_row(
            report.call,
            report.transport,
            f"[{colour}]{'PASS' if report.passed else 'FAIL'}[/{colour}] {report.result}",
            "-" if report.setup_ms is None else f"{report.setup_ms:.1f}",
        )
    Console().print(table)


async def _run(args: argparse.Namespace) -> int:
    lab = await start_endpoints(args.certs, args.sip_port, args.tls_port)
    try:
        for endpoint in (lab.caller, lab.callee):
            for address in endpoint.stack.listeners:
                logger.info(
                    "%s listening on %s:%s:%d",
                    endpoint.user,
                    address.transport.value.lower(),
                    address.host,
                    address.port,
                )
        reports = await run_calls(lab, args.duration)
        passed = sum(1 for r in reports if r.passed)
        if args.json:
            document = {
                "calls": [asdict(r) for r in reports],
                "passed": passed,
                "failed": len(reports) - passed,
            }
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        else:
            _print_table(reports)
        sys.stdout.flush()
        if args.keep_running:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            logger.info("endpoints running; Ctrl-C to stop")
            await stop.wait()
        return 0 if passed == len(reports) else 1
    finally:
        await lab.caller.close()
        await lab.callee.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gateway lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--certs", type=Path, default=Path("certs/lab"), help="lab PKI directory")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--keep-running", action="store_true", help="leave the endpoints up")
    p.add_argument("--duration", type=float, default=0.2, help="seconds each call is held")
    p.add_argument("--sip-port", type=int, default=5060, help="UDP/TCP port (0: any)")
    p.add_argument("--tls-port", type=int, default=5061, help="TLS port (0: any)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for name in ("sip.transport", "certs.pki"):
            logging.getLogger(name).setLevel(logging.WARNING)
    runner = aio.run
    try:
        return runner(_run(args))
    except OSError as error:
        sys.stderr.write(f"gateway lab: {error}\n")
        return 1
    except KeyboardInterrupt:
        return 130
