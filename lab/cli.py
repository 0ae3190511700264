"""`gateway lab` (what `make lab` runs): the whole topology in one process, the demo
matrix, a table of the results (or ``--json``).

Starts every role on its lab address (docs/lab-topology.md) with the lab certificates
(``--certs``, made when missing), showing each role's progress on stderr; places the demo
matrix (lab/demo.py) or, with ``--calls N``, N basic calls ``--concurrency`` at a time, each
holding media ``--duration`` seconds. Prints a table, or with ``--json`` only one object
on stdout: ``{"calls": [...], "passed": N, "failed": N}``. Exit 0 only when every call
passed (1 otherwise, or when the lab cannot start). ``--keep-running`` leaves the lab up
with the gateway's status page until Ctrl-C / SIGTERM. ``--any-port`` binds free ports
(tests, or a machine where the lab's ports are taken).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.role_cli import add_verbose_option, setup_logging, stop_on_signal
from sip import aio

if TYPE_CHECKING:
    from lab.demo import CallReport
    from lab.topology import Lab, RoleEvent

__all__ = ["Progress", "build_parser", "main"]

logger = logging.getLogger("lab")


class Progress:
    """Role progress on stderr: a rich spinner and a line per role on a terminal, plain
    lines otherwise (and always with --json, so stdout holds only the JSON)."""

    def __init__(self, *, fancy: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.fancy = fancy and self.console.is_terminal
        self.status: Any = None
        self.starting: list[str] = []

    def __call__(self, event: RoleEvent) -> None:
        from lab.topology import RoleState

        state = event.state
        if state is RoleState.STARTING:
            self.starting.append(event.role)
        elif event.role in self.starting:
            self.starting.remove(event.role)
        if self.fancy:
            mark = {RoleState.UP: "[green]✓[/green]", RoleState.FAILED: "[red]✗[/red]",
                    RoleState.STOPPED: "[dim]■[/dim]"}.get(state)
            if mark is not None:
                self.console.print(f"{mark} {event.role:<14} {state.value} {event.detail}")
            self._spin()
        elif state is not RoleState.STARTING:
            sys.stderr.write(f"lab: {event.role}: {state.value}"
                             f"{' ' + event.detail if event.detail else ''}\n")
            sys.stderr.flush()

    def _spin(self) -> None:
        if self.starting:
            text = f"starting {', '.join(self.starting)} ..."
            if self.status is None:
                self.status = self.console.status(text)
                self.status.start()
            else:
                self.status.update(text)
        elif self.status is not None:
            self.status.stop()
            self.status = None

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def print_table(reports: list[CallReport]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gateway lab: demo calls")
    for column in ("call", "path", "ICE pair", "to callee", "to caller", "result"):
        table.add_column(column)
    for report in reports:
        colour = "green" if report.passed else "red"
        word = "PASS" if report.passed else "FAIL"
        who = f"{report.caller.split('@')[0]} → {report.callee.split('@')[0]}"
        table.add_row(f"{report.name} ({who})", report.path,
                      report.ice_pair or "-", str(report.to_callee), str(report.to_caller),
                      f"[{colour}]{word}[/{colour}] {report.reason}")
    Console().print(table)


def write_report(reports: list[CallReport], *, as_json: bool) -> bool:
    """The results on stdout: the summary object (``--json``) or the table. True when
    every call passed."""
    from lab.demo import summary

    document = summary(reports)
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        print_table(reports)
    sys.stdout.flush()
    return bool(document["failed"] == 0)


async def _run(args: argparse.Namespace) -> int:
    from lab.demo import demo_matrix, load_calls
    from lab.topology import Lab

    progress = Progress(fancy=not args.json)
    lab = Lab(args.certs, any_port=args.any_port, progress=progress)
    try:
        async with lab:
            progress.close()
            reports = await _calls(lab, args, demo_matrix, load_calls)
            passed = write_report(reports, as_json=args.json)
            if args.keep_running:
                _announce(lab)
                await stop_on_signal().wait()
                sys.stderr.write("lab: stopping\n")
            return 0 if passed else 1
    finally:
        progress.close()


async def _calls(lab: Lab, args: argparse.Namespace, matrix: Any, load: Any
                 ) -> list[CallReport]:
    if args.calls is not None:
        result: list[CallReport] = await load(lab, args.calls, args.concurrency, args.duration)
        return result
    result = await matrix(lab, args.duration)
    return result


def _announce(lab: Lab) -> None:
    management = lab.gateway.management if lab.gateway is not None else None
    if management is not None:
        sys.stderr.write(f"lab: running; operator's page {management.url} "
                         f"(JSON {management.url}status); Ctrl-C to stop\n")
    else:
        sys.stderr.write("lab: running (management server off); Ctrl-C to stop\n")
    for role in lab.status().roles:
        sys.stderr.write(f"lab:   {role.role:<14} {role.state.value:<8} "
                         f"{', '.join(role.addresses)}\n")
    sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--certs", type=Path, default=Path("certs/lab"), help="lab PKI directory")
    p.add_argument("--json", action="store_true", help="print only a JSON object on stdout")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the lab up (status page) until Ctrl-C / SIGTERM")
    p.add_argument("--calls", type=_positive, default=None, metavar="N",
                   help="place N basic calls (alternating directions) instead of the matrix")
    p.add_argument("--concurrency", type=_positive, default=1, metavar="C",
                   help="calls at a time with --calls (default 1)")
    p.add_argument("--duration", type=float, default=0.0, metavar="S",
                   help="seconds each call holds media once it flows both ways")
    p.add_argument("--any-port", action="store_true",
                   help="bind free ports instead of the lab's (tests, busy machines)")
    add_verbose_option(p)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.duration < 0:
        sys.stderr.write("gateway lab: --duration must be >= 0\n")
        return 2
    # turn.core: expected noise of the lab's own design (the DMZ TURN refusing internal
    # clients).
    setup_logging(args.verbose, level=logging.WARNING, quiet={"turn.core": logging.ERROR})
    try:
        return aio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a role that cannot start: say which and why, no traceback
        from certs.pki import PKIError

        if not isinstance(error, (OSError, PKIError, LookupError, ValueError)):
            raise
        sys.stderr.write(f"gateway lab: {error}\n")
        return 1
