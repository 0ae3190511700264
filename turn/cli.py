"""``gateway turn`` / ``python -m turn``: run the TURN server until SIGINT/SIGTERM.

``--check-config FILE`` validates FILE (with ``--set`` and the other flags applied) and exits:
0 with ``config OK: ...`` on stdout, 1 with the error naming the key on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from sip import aio

from .config import ConfigError, TurnConfig, load, parse_port_range
from .server import TurnServer, format_stats

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway turn",
        description="TURN server (RFC 8656, RFC 6062, and MS-TURN for Microsoft clients)",
    )
    p.add_argument("--config", help="TOML file (flags override it)")
    p.add_argument("--check-config", metavar="FILE",
                   help="validate FILE (with the other flags) and exit (0 valid, 1 invalid)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override a key of the file (repeatable), e.g. allow_peers=[\"10.0.0.0/8\"]"
                   " or users.NAME=PASSWORD")
    p.add_argument("--listen", help="listening IP address (default 127.0.0.1)")
    p.add_argument("--ports", help="listening port or range, e.g. 3478 or 3478-3483 (0: any free)")
    p.add_argument("--relay-ports", help="relay port range (default 24000-29999)")
    p.add_argument("--relay-address", help="IP address relays bind to (default: --listen)")
    p.add_argument("--external-address", help="relay IP to advertise (behind NAT)")
    p.add_argument("--realm", help="long-term credential realm (default example.com)")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="an account (repeatable; added to those of --config)",
    )
    p.add_argument("--auth-secret", help="TURN REST API shared secret")
    p.add_argument(
        "--ms-turn-secret", help="MRAS key shared with the FE (MS-TURN credentials)"
    )
    p.add_argument(
        "--allow-peer",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow relaying to this otherwise denied network (repeatable)",
    )
    p.add_argument("--user-quota", type=int, help="allocations per user (default 500)")
    p.add_argument("--total-quota", type=int, help="allocations in all (default 6000)")
    p.add_argument("--no-udp", action="store_true", help="do not listen on UDP")
    p.add_argument("--no-tcp", action="store_true", help="do not listen on TCP")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ...")
    return p


def config_from_args(args: argparse.Namespace, path: str | None = None) -> TurnConfig:
    """defaults < file (``path``, else --config) < --set < the other flags."""
    path = path if path is not None else args.config
    config = load(path or None, overrides=args.overrides)
    changes: dict[str, Any] = {}
    for flag in (
        "listen",
        "relay_address",
        "external_address",
        "realm",
        "auth_secret",
        "ms_turn_secret",
        "user_quota",
        "total_quota",
    ):
        value = getattr(args, flag)
        if value is not None:
            changes[flag] = value
    if args.ports is not None:
        changes["ports"] = parse_port_range(args.ports, "--ports")
    if args.relay_ports is not None:
        changes["relay_ports"] = parse_port_range(args.relay_ports, "--relay-ports")
    if args.user:
        users = dict(config.users)
        for entry in args.user:
            name, sep, password = entry.partition(":")
            if not sep or not name:
                raise ConfigError(f"--user: expected NAME:PASSWORD, got {name or entry!r}")
            users[name] = password
        changes["users"] = tuple(users.items())
    if args.allow_peer:
        changes["allow_peers"] = tuple(dict.fromkeys((*config.allow_peers, *args.allow_peer)))
    if args.no_udp:
        changes["udp"] = False
    if args.no_tcp:
        changes["tcp"] = False
    return config.replace(**changes)


async def serve(config: TurnConfig) -> None:
    loop = asyncio.get_running_loop()
    server = TurnServer(config)
    stop = asyncio.Event()
    with contextlib.ExitStack() as stack:
        # Handlers first: the "listening" log line is the cue that signals are safe to send.
        for sig, handler in (
            (signal.SIGINT, stop.set),
            (signal.SIGTERM, stop.set),
            (signal.SIGUSR1, lambda: logger.info("TURN stats: %s", format_stats(server.stats()))),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
                stack.callback(loop.remove_signal_handler, sig)
        await server.start()
        try:
            await stop.wait()
        finally:
            await server.stop()


def check_config(args: argparse.Namespace) -> int:
    """``--check-config FILE``: ``config OK: FILE: summary`` (0) or the error (1)."""
    path = args.check_config
    try:
        config = config_from_args(args, path)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {path}: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"config error: {path}: cannot read the file: {exc.strerror or exc}\n")
        return 1
    if not config.users and not config.auth_secret and not config.ms_turn_secret:
        sys.stderr.write("warning: no users and no auth_secret: every request will get 401\n")
    sys.stdout.write(f"config OK: {path}: {config.summary()}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_config is not None:
        return check_config(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except (ConfigError, OSError) as exc:
        logger.error("configuration: %s", exc)
        return 2
    if not config.users and not config.auth_secret and not config.ms_turn_secret:
        logger.warning("no --user or --auth-secret: every request will be refused (401)")
    try:
        aio.run(serve(config))
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
