"""`gateway lync-fe | lync-edge | lync-client`: the simulated Microsoft side as processes.

Each takes ``--config FILE`` (TOML, see lab/configs/lync-*.toml), ``--set key=value``
overrides and ``--check-config FILE``. Once up, it logs one ``listening on
<transport>:<host>:<port>`` line per listener then ``ready`` (stderr), and runs until
SIGINT/SIGTERM. ``lync-client --call TARGET`` places one call, waits for media both ways,
prints a one-line JSON report and exits (0 when media flowed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.addresses import parse_host_port
from gateway.configkit import ConfigError, load_dataclass
from lab.lync.config import ClientConfig, EdgeConfig, FrontEndConfig
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

__all__ = ["client_main", "edge_main", "fe_main"]

logger = logging.getLogger("lab.lync")
T = TypeVar("T")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gateway {prog}", description=description)
    add_config_options(
        p,
        config_help="TOML configuration file",
        set_help="override a configuration key (repeatable)",
        check_help="validate FILE and exit (0 valid, 1 invalid)",
        set_dest="overrides",
    )
    add_verbose_option(p)
    return p


def _load(cls: type[T], path: Path | None, overrides: Sequence[str]) -> T:
    if path is None:
        raise ConfigError("--config", "a configuration file is needed")
    try:
        return load_dataclass(cls, path, overrides=overrides)
    except ConfigError:
        raise
    except ValueError as error:  # a dataclass's own check (__post_init__)
        raise ConfigError("", str(error)) from None


def _prepare(cls: type[T], args: argparse.Namespace, prog: str) -> T | int:
    """The config, or an exit status (check-config done, or an error)."""
    if args.check_config is not None:
        return check_config(
            args.check_config, lambda: _load(cls, args.check_config, args.overrides)
        )
    try:
        config = _load(cls, args.config, args.overrides)
    except ConfigError as error:
        sys.stderr.write(f"gateway {prog}: config error: {args.config}: {error}\n")
        return 2
    setup_logging(args.verbose, quiet={"sip.transport": logging.WARNING, "aioice": logging.WARNING})
    return config


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()
    logger.info("stopping")


def fe_main(argv: list[str]) -> int:
    """`gateway lync-fe`: the Lync Front End (registrar + proxy, TLS 5061, NTLM sign-in)."""
    args = _parser("lync-fe", "A simulated Lync Front End pool.").parse_args(argv)
    config = _prepare(FrontEndConfig, args, "lync-fe")
    if isinstance(config, int):
        return config

    async def serve() -> int:
        from lab.lync.fe import FrontEnd

        # Installed before listening: a signal right after the "ready" line still stops us.
        stop = stop_on_signal()
        fe = await FrontEnd.start(config)
        try:
            announce(logger, fe.stack.listeners, f"Lync FE {config.domain} ready")
            await _until(stop)
        finally:
            await fe.stop()
        return 0

    return run(serve(), "lync-fe")


def edge_main(argv: list[str]) -> int:
    """`gateway lync-edge`: Access Edge (TLS 5061 / 443) and A/V Edge TURN (3478)."""
    args = _parser("lync-edge", "A simulated Lync Edge (Access + A/V).").parse_args(argv)
    config = _prepare(EdgeConfig, args, "lync-edge")
    if isinstance(config, int):
        return config

    async def serve() -> int:
        from lab.lync.edge import Edge

        stop = stop_on_signal()
        edge = await Edge.start(config)
        try:
            addresses: list[TransportAddress | tuple[str, str, int]] = list(edge.stack.listeners)
            if edge.turn is not None:
                addresses += edge.turn.addresses
            announce(logger, addresses, "Lync Edge ready")
            await _until(stop)
        finally:
            await edge.stop()
        return 0

    return run(serve(), "lync-edge")


def client_main(argv: list[str]) -> int:
    """`gateway lync-client`: register, then answer calls or place one (--call)."""
    parser = _parser("lync-client", "A simulated Lync / Skype for Business client.")
    parser.add_argument(
        "--call",
        metavar="TARGET",
        help="call TARGET (e.g. 3001@video.example.com), report media, exit",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=2.0,
        help="seconds to keep a --call call up after media flows",
    )
    parser.add_argument("--no-video", action="store_true", help="audio only for --call")
    parser.add_argument("--control", metavar="HOST:PORT", type=parse_host_port,
                        help="serve a control port there (lab.control: calls, MESSAGE and the "
                        "registration state for the demo and the health probe)")
    args = parser.parse_args(argv)
    config = _prepare(ClientConfig, args, "lync-client")
    if isinstance(config, int):
        return config

    async def serve() -> int:
        from lab.lync.client import LyncClient

        stop = stop_on_signal()
        client = await LyncClient.start(config)
        try:
            local = client.agent.local
            announce(
                logger,
                [("tls", local.host, local.port)] if local else [],
                f"Lync client {client.aor} (registered) ready",
            )
            async with contextlib.AsyncExitStack() as served:
                if args.control is not None:
                    from lab.control import ControlServer

                    await served.enter_async_context(ControlServer(
                        _Party(client), args.control.host, args.control.port))
                if args.call is None:
                    await _until(stop)
                    return 0
                return await _place(client, args.call, not args.no_video, args.duration)
        finally:
            await client.close()

    return run(serve(), "lync-client")


class _Party:
    """The client as a :class:`lab.control.Party` (its public state only)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.aor: str = client.aor

    def registered(self) -> bool:
        return bool(self.client.registered)

    async def call(self, target: str, video: bool) -> Any:
        return await self.client.call(target, video=video)

    async def next_incoming(self) -> Any:
        return await self.client.incoming_calls.get()

    async def message(self, target: str, text: str, timeout: float) -> tuple[int, str]:
        from sip.headers import Address
        from sip.uri import URI

        client = self.client
        uri = URI.parse(target if target.startswith("sip") else f"sip:{target}")
        request = client.agent.new_request(
            "MESSAGE", uri, client.registrar, to=Address(uri), body=text.encode(),
            content_type="text/plain")
        async with asyncio.timeout(timeout):
            response = await client.agent.stack.send_request(request, client.registrar)
        return response.status, response.reason


async def _place(client: Any, target: str, video: bool, duration: float) -> int:
    call = await client.call(target, video=video)
    report: dict[str, Any] = {"call_id": call.call_id, "caller": client.aor, "callee": target}
    status = 0
    try:
        await call.wait_connected(timeout=30.0)
        media = await call.wait_media(both_ways=True, min_packets=10, timeout=30.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), duration)
        media = call.media()
        report.update(
            result="passed",
            ice_pair=media.ice_pair,
            streams=list(media.streams),
            packets={"sent": media.packets_sent, "received": media.packets_received},
        )
    except Exception as error:  # reported, not raised: the CLI's answer is the report
        report.update(result="failed", reason=str(error) or type(error).__name__)
        status = 1
    finally:
        await call.hangup()
    sys.stdout.write(json.dumps(report) + "\n")
    return status
