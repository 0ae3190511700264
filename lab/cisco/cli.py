"""`gateway cucm` and `gateway imp`: run the simulated Unified CM or IM&P node.

``--config FILE`` (TOML, see lab/configs/), ``--set key=value`` overrides (repeatable),
``--check-config FILE`` validates and exits (0 good, 2 with the error naming the key).
Readiness for scripts: one ``listening on <transport>:<host>:<port>`` line per listener
(actual port) then ``ready`` go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.configkit import ConfigError
from lab.cisco.config import CucmConfig, ImpConfig, load_cucm, load_imp
from lab.role_cli import (
    add_config_options,
    add_verbose_option,
    announce,
    check_config,
    run,
    setup_logging,
    stop_on_signal,
)
from sip.transport import TransportAddress

__all__ = ["cucm_main", "imp_main"]


class _Node(Protocol):
    @property
    def listeners(self) -> tuple[TransportAddress, ...]: ...

    async def close(self) -> None: ...


def _parser(prog: str, description: str, default: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_config_options(
        p,
        config_default=Path(default),
        config_metavar=None,
        config_help=f"TOML file ({default})",
        set_help="override a setting, e.g. trunk.destination=tcp:127.0.2.1:5060 (repeatable)",
    )
    add_verbose_option(p)
    return p


async def _serve(name: str, start: Awaitable[Any], logger: logging.Logger) -> int:
    node = await start
    try:
        announce(logger, node.listeners, f"{name} ready")
        await stop_on_signal().wait()
        logger.info("stopping")
        return 0
    finally:
        await node.close()


def _main(
    argv: list[str],
    *,
    name: str,
    description: str,
    default: str,
    load: Callable[[Path, tuple[str, ...]], CucmConfig | ImpConfig],
    start: Callable[[Any], Awaitable[Any]],
) -> int:
    args = _parser(f"gateway {name}", description, default).parse_args(argv)
    setup_logging(args.verbose)
    if args.check_config is not None:
        return check_config(args.check_config, lambda: load(args.check_config, tuple(args.set)))
    path = args.config
    try:
        config = load(path, tuple(args.set))
    except ConfigError as error:
        sys.stderr.write(f"gateway {name}: {path}: {error}\n")
        return 2
    logger = logging.getLogger(f"lab.cisco.{name}")
    return run(_serve(name, start(config), logger), name)


def cucm_main(argv: list[str]) -> int:
    """`gateway cucm`."""
    from lab.cisco.cucm import Cucm

    return _main(
        argv,
        name="cucm",
        description="A simulated Unified CM: registrar and proxy for 3xxx@video.example.com, "
        "SIP trunk to the gateway.",
        default="lab/configs/cucm.toml",
        load=load_cucm,
        start=Cucm.start,
    )


def imp_main(argv: list[str]) -> int:
    """`gateway imp`."""
    from lab.cisco.imp import Imp

    return _main(
        argv,
        name="imp",
        description="A simulated IM&P node: MESSAGE / SUBSCRIBE / NOTIFY / PUBLISH / INFO.",
        default="lab/configs/imp.toml",
        load=load_imp,
        start=Imp.start,
    )
