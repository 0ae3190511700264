"""`gateway endpoint`: run a simulated SIP endpoint, or place one call with it.

Readiness for scripts: once every listener is bound, one line per listener
``listening on <transport>:<host>:<port>`` (actual port) then ``endpoint ready`` go to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.addresses import HostPort, parse_host_port
from gateway.configkit import ConfigError
from lab.control import ControlError, ControlServer
from lab.endpoint.agent import CallFailed, Endpoint
from lab.endpoint.config import EndpointConfig, ListenSpec, load_endpoint
from lab.role_cli import (
    add_config_options,
    add_verbose_option,
    announce,
    check_config,
    run,
    setup_logging,
    stop_on_signal,
)
from sip.errors import ProtocolError
from sip.timers import TimerSettings
from sip.uri import URI

__all__ = ["main", "parser"]

logger = logging.getLogger("lab.endpoint")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway endpoint",
        description="A simulated standards SIP video endpoint (plain RTP, PCMU/G.722/H.264).",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="TRANSPORT:HOST:PORT",
        help="udp|tcp|tls listener, e.g. udp:127.0.3.11:5060 (repeatable; port 0: any); "
        "required without --config",
    )
    add_config_options(
        p,
        config_help="TOML file (lab/configs/endpoint-3001.toml)",
        set_help="override a --config setting, e.g. srtp=true (repeatable)",
    )
    p.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="lab PKI directory (made if missing); the 'endpoint' cert is used for TLS",
    )
    p.add_argument("--aor", default="3001@video.example.com", help="address of record user@domain")
    p.add_argument(
        "--call",
        metavar="URI",
        help="place a call to URI (e.g. 'sip:3002@127.0.3.12:5061;transport=tls'), "
        "hold it --duration seconds, hang up, exit",
    )
    p.add_argument("--duration", type=float, default=1.0, help="seconds to hold a --call call")
    p.add_argument(
        "--ring-time",
        type=float,
        default=0.0,
        help="seconds between 180 Ringing and 200 OK when answering",
    )
    p.add_argument("--no-answer", action="store_true", help="ring until cancelled")
    p.add_argument(
        "--tls-name",
        metavar="NAME",
        help="name to check the server certificate against on outbound TLS",
    )
    p.add_argument(
        "--no-client-cert", action="store_true", help="do not present a certificate on outbound TLS"
    )
    p.add_argument(
        "--require-client-cert",
        action="store_true",
        help="TLS listeners refuse clients without a certificate",
    )
    p.add_argument("--media-host", help="address for RTP sockets (default: first listener host)")
    p.add_argument("--t1", type=float, default=0.5, help="RFC 3261 T1 in seconds")
    p.add_argument("--control", metavar="HOST:PORT", type=parse_host_port,
                   help="serve a control port there (lab.control: calls and the registration "
                   "state for the demo and the health probe)")
    add_verbose_option(p)
    return p


def _config(args: argparse.Namespace) -> EndpointConfig:
    return EndpointConfig(
        aor=args.aor,
        listen=tuple(ListenSpec.parse(text) for text in args.listen),
        certs=args.certs,
        client_cert=not args.no_client_cert,
        require_client_cert=args.require_client_cert,
        tls_server_name=args.tls_name,
        media_host=args.media_host,
        ring_time=args.ring_time,
        auto_answer=not args.no_answer,
        timers=TimerSettings(t1=args.t1, t2=max(4.0, args.t1)),
    )


class _Party:
    """The endpoint as a :class:`lab.control.Party`."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.aor = endpoint.config.aor

    def registered(self) -> bool:
        registration = self.endpoint.registration
        return registration is None or registration.registered.is_set()

    async def call(self, target: str, video: bool) -> Any:
        return await self.endpoint.call(target, video=video)

    async def next_incoming(self) -> Any:
        from lab.endpoint.handle import EndpointCall

        return EndpointCall.incoming(self.endpoint, await self.endpoint.incoming.get())

    async def message(self, target: str, text: str, timeout: float) -> tuple[int, str]:
        raise ControlError("an endpoint sends no MESSAGE")


async def _run(config: EndpointConfig, call: URI | None, duration: float,
               control: HostPort | None = None) -> int:
    endpoint = await Endpoint.start(config)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if control is not None:
                await stack.enter_async_context(
                    ControlServer(_Party(endpoint), control.host, control.port))
            return await _serve(endpoint, config, call, duration)
    finally:
        await endpoint.close()


async def _serve(endpoint: Endpoint, config: EndpointConfig, call: URI | None,
                 duration: float) -> int:
    announce(logger, endpoint.stack.listeners, f"endpoint ready ({config.aor})")
    if call is not None:
        try:
            placed = await endpoint.place_call(call, duration=duration)
        except CallFailed as error:
            sys.stderr.write(f"gateway endpoint: call failed: {error}\n")
            return 1
        sys.stdout.write(
            f"call {placed.call_id} to {call}: {placed.result}"
            f" (setup {placed.setup_ms or 0:.0f} ms)\n"
        )
        return 0
    await stop_on_signal().wait()
    logger.info("stopping")
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.check_config is not None:
        return check_config(
            args.check_config, lambda: load_endpoint(args.check_config, tuple(args.set))
        )
    try:
        if args.config is not None:
            config = load_endpoint(args.config, tuple(args.set))
        elif args.listen:
            config = _config(args)
        else:
            sys.stderr.write("gateway endpoint: --listen or --config is required\n")
            return 2
        target = URI.parse(args.call) if args.call else None
    except ConfigError as error:
        path = args.check_config or args.config
        sys.stderr.write(f"gateway endpoint: {path}: {error}\n")
        return 2
    except (ValueError, ProtocolError) as error:
        sys.stderr.write(f"gateway endpoint: {error}\n")
        return 2
    return run(_run(config, target, args.duration, args.control), "endpoint")
