"""What the command lines of the lab roles share (cucm, imp, endpoint, lync-*, lab).

The configuration options, logging to stderr, the readiness lines scripts wait for, the
stop-on-signal event, the run wrapper that turns OSError / Ctrl-C into exit statuses, and
``--check-config`` (one behaviour for every role, the same as ``gateway run`` and
``gateway turn``: ``config OK: FILE`` and 0, or ``config error: FILE: key: why`` and 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from sip import aio
from sip.transport import TransportAddress
from sip.uri import format_host

__all__ = [
    "add_config_options",
    "check_config",
    "add_verbose_option",
    "announce",
    "run",
    "setup_logging",
    "stop_on_signal",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def check_config(path: str | Path, load: Callable[[], object]) -> int:
    """``--check-config FILE``: load it (``load`` raises ConfigError naming the key)."""
    from gateway.configkit import ConfigError

    try:
        load()
    except ConfigError as error:
        sys.stderr.write(f"config error: {path}: {error}\n")
        return 1
    sys.stdout.write(f"config OK: {path}\n")
    return 0


def add_config_options(
    parser: argparse.ArgumentParser,
    *,
    config_help: str,
    set_help: str,
    config_default: Path | None = None,
    config_metavar: str | None = "FILE",
    check_help: str = "validate FILE and exit",
    set_dest: str = "set",
) -> None:
    """``--config FILE``, ``--set KEY=VALUE`` (repeatable, into ``set_dest``) and
    ``--check-config FILE``."""
    parser.add_argument(
        "--config", type=Path, default=config_default, metavar=config_metavar, help=config_help
    )
    parser.add_argument(
        "--set", action="append", default=[], dest=set_dest, metavar="KEY=VALUE", help=set_help
    )
    parser.add_argument("--check-config", type=Path, metavar="FILE", help=check_help)


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose``: debug logging (see :func:`setup_logging`)."""
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def setup_logging(
    verbose: bool,
    *,
    level: int = logging.INFO,
    quiet: Mapping[str, int] | None = None,
) -> None:
    """Log to stderr: DEBUG with ``verbose``, else ``level``, and the ``quiet`` loggers only
    from their level (default: the transport's per-socket lines, which would announce
    readiness before every listener is up)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else level, format=LOG_FORMAT, stream=sys.stderr
    )
    if verbose:
        return
    if quiet is None:
        quiet = {"sip.transport": logging.WARNING}
    for name, quiet_level in quiet.items():
        logging.getLogger(name).setLevel(quiet_level)


def announce(
    logger: logging.Logger,
    addresses: Iterable[TransportAddress | tuple[str, str, int]],
    ready: str,
) -> None:
    """The readiness lines: ``listening on <transport>:<host>:<port>`` per listener (actual
    port; a tuple names the transport as it is written), then ``ready`` ("cucm ready")."""
    for address in addresses:
        if isinstance(address, TransportAddress):
            transport, host, port = address.transport.value.lower(), address.host, address.port
        else:
            transport, host, port = address
        logger.info("listening on %s:%s:%d", transport, format_host(host), port)
    logger.info("%s", ready)


def stop_on_signal() -> asyncio.Event:
    """An event set on SIGINT/SIGTERM (handlers installed now, on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def run(main: Coroutine[Any, Any, int], prog: str) -> int:
    """Run a role's main coroutine: its status; 1 for an OSError (a port that cannot be
    bound: said on stderr as ``gateway <prog>: <error>``), 130 for Ctrl-C."""
    try:
        return aio.run(main)
    except OSError as error:
        sys.stderr.write(f"gateway {prog}: {error}\n")
        return 1
    except KeyboardInterrupt:
        return 130
