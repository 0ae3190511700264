"""`gateway probe TARGET`: one health check of a lab role over its real transport; exit 0
when it answered as a working one does, 1 (with the reason on stderr) when not.

Targets:

- ``tls:HOST:PORT`` / ``tcp:...`` / ``udp:...``: a SIP OPTIONS; any final answer but 408 /
  5xx / 6xx passes (a server that parses, routes and answers). Over TLS the probe checks the
  server's certificate against ``--tls-name`` and presents ``--cert`` (a Lync server pings
  its peers with OPTIONS as one of them: the FE answers a trusted server, warns about others).
  The connection is closed with a TLS close_notify, so the server logs nothing.
- ``stun:HOST:PORT``: a STUN Binding request over UDP (RFC 8489); a success answer passes.
- ``control:HOST:PORT``: a party's control port (see :mod:`lab.control`); passes while the
  party is registered.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from sip import aio
from sip.message import Request, new_branch, new_call_id, new_tag, parse_message
from sip.stack import Hop, SipStack, SipTimeoutError
from sip.transport import Transport, TransportError, TransportSettings
from sip.uri import format_host

__all__ = ["main", "probe_control", "probe_sip", "probe_stun"]

FAILED_STATUSES = range(500, 700)
"""Answers that mean the server is not working (408 too)."""


class ProbeFailed(Exception):
    """The target did not answer as a working one does."""


def _options(transport: Transport, host: str, port: int) -> Request:
    target = f"{format_host(host)}:{port}"
    text = (
        f"OPTIONS sip:{target};transport={transport.value.lower()} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.value} probe.invalid;branch={new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@probe.invalid>;tag={new_tag()}\r\n"
        f"To: <sip:{target}>\r\n"
        f"Call-ID: {new_call_id('probe.invalid')}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        "User-Agent: gateway-probe\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


async def probe_sip(transport: Transport, host: str, port: int, *, tls_name: str | None,
                    certs: Path | None, cert: str | None, timeout: float) -> str:
    """OPTIONS to ``host:port``; the answer's status line, or :class:`ProbeFailed`."""
    tls_client = None
    if transport is Transport.TLS:
        from certs.pki import load_pki

        if certs is None:
            raise ProbeFailed("TLS needs --certs DIR (the lab CA)")
        tls_client = await asyncio.to_thread(load_pki(certs).client_context, cert)
    stack = SipStack(transport_settings=TransportSettings(
        outbound_ports=None, connect_timeout=timeout, tls_handshake_timeout=timeout),
        tls_client=tls_client)
    try:
        async with asyncio.timeout(timeout):
            response = await stack.send_request(
                _options(transport, host, port),
                Hop(transport, host, port, server_hostname=tls_name))
    except (TimeoutError, SipTimeoutError, TransportError, OSError) as error:
        raise ProbeFailed(f"no answer to OPTIONS from {transport.value.lower()}:"
                          f"{format_host(host)}:{port}: {error or type(error).__name__}"
                          ) from None
    finally:
        await stack.close()
    status = f"{response.status} {response.reason}"
    if response.status == 408 or response.status in FAILED_STATUSES:
        raise ProbeFailed(f"OPTIONS answered {status}")
    return status


async def probe_stun(host: str, port: int, *, timeout: float) -> str:
    """A STUN Binding request; the mapped address it answered, or :class:`ProbeFailed`."""
    from aioice import stun

    loop = asyncio.get_running_loop()
    answered: asyncio.Future[stun.Message] = loop.create_future()
    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST,
                           transaction_id=secrets.token_bytes(12))

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            try:
                message = stun.parse_message(data)
            except ValueError:
                return
            if message.transaction_id == request.transaction_id and not answered.done():
                answered.set_result(message)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    try:
        async with asyncio.timeout(timeout):
            while not answered.done():  # RFC 8489 §6.2.1 retransmits; twice a second here
                transport.sendto(bytes(request))
                await asyncio.wait({answered}, timeout=0.5)
    except TimeoutError:
        raise ProbeFailed(f"no STUN answer from {format_host(host)}:{port}") from None
    finally:
        transport.close()
    message = answered.result()
    if message.message_class is not stun.Class.RESPONSE:
        raise ProbeFailed(f"STUN Binding answered {message.message_class.name}")
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS")
    return f"STUN Binding success, mapped {mapped}"


async def probe_control(host: str, port: int, *, timeout: float) -> str:
    """A party's registration state, or :class:`ProbeFailed` while it is not registered."""
    from lab.control import ControlError, RemoteParty

    try:
        status = await RemoteParty(host, port, timeout=timeout).status()
    except (ControlError, OSError, TimeoutError) as error:
        raise ProbeFailed(f"control port {format_host(host)}:{port}: "
                          f"{error or type(error).__name__}") from None
    if not status.get("registered"):
        raise ProbeFailed(f"{status.get('aor')} is not registered")
    return f"{status.get('aor')} registered"


def _split(target: str) -> tuple[str, str, int]:
    scheme, sep, rest = target.partition(":")
    if not sep:
        raise ValueError(f"target {target!r} is not scheme:host:port")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {target!r} needs a host and a port 1-65535")
    return scheme.lower(), host, int(port_text)


async def _probe(args: argparse.Namespace) -> str:
    scheme, host, port = _split(args.target)
    if scheme == "stun":
        return await probe_stun(host, port, timeout=args.timeout)
    if scheme == "control":
        return await probe_control(host, port, timeout=args.timeout)
    try:
        transport = Transport.parse(scheme)
    except ValueError:
        raise ValueError(f"target {args.target!r}: scheme must be udp, tcp, tls, stun or "
                         "control") from None
    return await probe_sip(transport, host, port, tls_name=args.tls_name, certs=args.certs,
                           cert=args.cert, timeout=args.timeout)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway probe",
        description="Health check of a lab role over its real transport (exit 0 / 1).")
    parser.add_argument("target", help="tls|tcp|udp:HOST:PORT (SIP OPTIONS), stun:HOST:PORT "
                        "or control:HOST:PORT (a party's registration)")
    parser.add_argument("--tls-name", help="name the server certificate must carry")
    parser.add_argument("--certs", type=Path, help="lab PKI directory (TLS)")
    parser.add_argument("--cert", help="lab certificate to present over TLS")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        _split(args.target)
    except ValueError as error:
        parser.error(str(error))
    try:
        line = aio.run(_probe(args))
    except (ProbeFailed, ValueError) as error:
        sys.stderr.write(f"gateway probe: {args.target}: {error}\n")
        return 1
    sys.stdout.write(f"{args.target}: {line}\n")
    return 0
