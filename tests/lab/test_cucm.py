"""The simulated Unified CM on loopback: endpoints register (UDP/TCP, refresh, unregister),
3001 calls 3002 through it with RTP both ways (early and delayed offer), CANCEL passes
through, example.com goes over the trunk to a stand-in gateway on TLS and TCP (and the
gateway's calls come back in), 404 / 480 / 483 / 413 refusals, OPTIONS 200; the registrar
core by hand-driven time; the `gateway cucm` CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certs.pki import LabPKI
from lab.cisco.config import CucmConfig, TrunkConfig
from lab.cisco.cucm import Cucm, RouteKind
from lab.cisco.registrar import Registrar
from lab.endpoint import CallFailed, Endpoint, EndpointConfig, ListenSpec, SipTarget
from sip.message import parse_message
from sip.stack import Hop
from sip.timers import TimerSettings
from sip.transport import Transport
from sip.uri import URI

CUCM_HOST = "127.0.3.61"
EP1_HOST, EP2_HOST, GW_HOST = "127.0.3.62", "127.0.3.63", "127.0.3.64"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)


def cucm_config(pki: LabPKI, **overrides: Any) -> CucmConfig:
    return replace(
        CucmConfig(
            listen=(f"udp:{CUCM_HOST}:0", f"tcp:{CUCM_HOST}:0", f"tls:{CUCM_HOST}:0"),
            certs=str(pki.directory),
            t1=0.05,
        ),
        **overrides,
    )


@pytest.fixture
async def cucm(pki: LabPKI) -> AsyncIterator[Cucm]:
    node = await Cucm.start(cucm_config(pki))
    try:
        yield node
    finally:
        await node.close()


def at(node: Cucm, transport: Transport) -> SipTarget:
    listener = node.stack.listener(transport)
    assert listener is not None
    return SipTarget(transport, listener.host, listener.port)


@pytest.fixture
async def endpoints(pki: LabPKI) -> AsyncIterator[Callable[..., Any]]:
    started: list[Endpoint] = []

    async def make(user: str, host: str, **overrides: Any) -> Endpoint:
        config = EndpointConfig(
            aor=f"{user}@video.example.com",
            listen=(ListenSpec(Transport.UDP, host, 0), ListenSpec(Transport.TCP, host, 0)),
            certs=pki.directory,
            registrar_tls_name="cucm.video.example.com",
            timers=FAST,
        )
        endpoint = await Endpoint.start(replace(config, **overrides))
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        await endpoint.close()


# -- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
async def test_endpoint_registers_and_unregisters(cucm, endpoints, transport) -> None:  # type: ignore[no-untyped-def]
    endpoint = await endpoints("3001", EP1_HOST, registrar=at(cucm, transport))
    now = asyncio.get_running_loop().time()
    binding = cucm.registrar.lookup("3001", now)
    assert binding is not None and binding.contact.host == EP1_HOST
    assert binding.hop.transport is transport
    assert endpoint.registration is not None and endpoint.registration.granted == 3600
    await endpoint.registration.stop()
    assert cucm.registrar.lookup("3001", asyncio.get_running_loop().time()) is None


async def test_registration_is_refreshed_before_it_expires(pki, endpoints) -> None:  # type: ignore[no-untyped-def]
    async with await Cucm.start(cucm_config(pki, max_expires=2)) as node:
        endpoint = await endpoints("3001", EP1_HOST, registrar=at(node, Transport.UDP))
        registration = endpoint.registration
        assert registration is not None and registration.granted == 2  # cut to max_expires
        registration.refreshed.clear()
        await asyncio.wait_for(registration.refreshed.wait(), 3)  # refreshed at 1 s
        assert registration.count == 2
        await endpoint.close()


async def test_registration_for_another_domain_is_refused(cucm, endpoints) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="404"):
        await endpoints("4001", EP1_HOST, registrar=at(cucm, Transport.UDP))


def test_registrar_bindings_expire_by_the_clock() -> None:
    from sip.headers import Address  # noqa: F401
    from sip.message import Headers, Request

    registrar = Registrar("video.example.com", r"3\d{3}", local_hosts=frozenset({"127.0.3.1"}))

    def register(expires: str, user: str = "3001") -> Request:
        headers = Headers()
        for name, value in (
            ("Via", "SIP/2.0/UDP 127.0.3.11:5060;branch=z9hG4bKx"),
            ("From", f"<sip:{user}@video.example.com>;tag=a"),
            ("To", f"<sip:{user}@video.example.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 REGISTER"),
            ("Contact", f"<sip:{user}@127.0.3.11:5060>"),
            ("Expires", expires),
        ):
            headers.add(name, value)
        return Request("REGISTER", URI.parse("sip:video.example.com"), headers)

    source = Hop(Transport.UDP, "127.0.3.11", 5060)
    outcome = registrar.register(register("60"), source, now=100.0)
    assert outcome.status == 200 and ("Contact", "<sip:3001@127.0.3.11:5060>;expires=60") in (
        outcome.headers
    )
    assert registrar.lookup("3001", 159.9) is not None
    assert registrar.lookup("3001", 160.0) is None  # the deadline passed
    assert registrar.register(register("0"), source, now=200.0).status == 200
    assert registrar.register(register("10000"), source, now=0).headers[0][1].endswith("=3600")
    assert registrar.register(register("0"), source, now=1).status == 200
    assert registrar.lookup("3001", 2) is None
    assert registrar.register(register("60", user="alice"), source, now=0).status == 404
    assert registrar.register(register("soon"), source, now=0).status == 400
    strict = Registrar("video.example.com", r"3\d{3}", min_expires=30)
    refused = strict.register(register("5"), source, now=0)
    assert (refused.status, refused.headers) == (423, (("Min-Expires", "30"),))


# -- calls through CUCM -------------------------------------------------------------------------


async def registered_pair(cucm: Cucm, make: Callable[..., Any], **caller: Any) -> tuple[Any, Any]:
    a = await make("3001", EP1_HOST, registrar=at(cucm, Transport.UDP), **caller)
    b = await make("3002", EP2_HOST, registrar=at(cucm, Transport.TCP))
    return a, b


async def test_3001_calls_3002_through_cucm_with_rtp_both_ways(cucm, endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await registered_pair(cucm, endpoints)
    call = await caller.call("3002@video.example.com")
    answered = await callee.next_call(timeout=5)
    await call.wait_connected(timeout=5)
    await call.wait_media(both_ways=True, min_packets=20, timeout=5)
    await answered.wait_media(both_ways=True, min_packets=20, timeout=5)
    # CUCM stayed in the path (Record-Route) for the transport change UDP -> TCP.
    assert len(call.call.dialog.route_set) == 2
    await call.hangup()
    await asyncio.wait_for(answered.call.ended.wait(), 5)
    kinds = [(method, kind) for method, _, kind in cucm.routed]
    assert ("INVITE", RouteKind.ENDPOINT) in kinds and ("BYE", RouteKind.NEXT_HOP) in kinds


async def test_delayed_offer_through_cucm(cucm, endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await registered_pair(cucm, endpoints, delayed_offer=True)
    call = await caller.call("3002@video.example.com")
    answered = await callee.next_call(timeout=5)
    await call.wait_connected(timeout=5)
    assert answered.call.awaiting_answer or answered.call.remote_sdp is not None
    await call.wait_media(min_packets=15, timeout=5)
    await answered.wait_media(min_packets=15, timeout=5)
    await call.hangup()


async def test_cancel_passes_through_cucm(cucm, endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", EP1_HOST, registrar=at(cucm, Transport.UDP))
    callee = await endpoints("3002", EP2_HOST, registrar=at(cucm, Transport.UDP), auto_answer=False)
    call = await caller.call("3002@video.example.com")
    answered = await callee.next_call(timeout=5)
    assert answered.state == "ringing"
    await call.hangup()  # CANCEL before the answer
    await asyncio.wait_for(answered.call.ended.wait(), 5)
    assert answered.call.result == "cancelled"
    with pytest.raises(CallFailed) as failure:
        await call.wait_connected(timeout=5)
    assert failure.value.status == 487


async def test_unknown_targets_get_404_and_unregistered_dns_480(cucm, endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", EP1_HOST, registrar=at(cucm, Transport.UDP))
    for target, status in (("bob@elsewhere.example.org", 404), ("3999@video.example.com", 480)):
        call = await caller.call(target)
        with pytest.raises(CallFailed) as failure:
            await call.wait_connected(timeout=5)
        assert failure.value.status == status


async def test_options_is_answered_and_max_forwards_0_gets_483(cucm, endpoints) -> None:  # type: ignore[no-untyped-def]
    probe = await endpoints("3001", EP1_HOST)
    target = at(cucm, Transport.UDP)
    hop = Hop(target.transport, target.host, target.port)
    options = probe.new_request("OPTIONS", URI("sip", host=CUCM_HOST), hop)
    response = await asyncio.wait_for(probe.stack.send_request(options, hop), 5)
    assert response.status == 200 and "REGISTER" in (response.headers.get("Allow") or "")
    invite = probe.new_request("INVITE", URI("sip", user="x", host="example.com"), hop)
    invite.headers.set("Max-Forwards", "0")
    response = await asyncio.wait_for(probe.stack.send_request(invite, hop), 5)
    assert response.status == 483


async def test_message_above_11000_bytes_gets_413(cucm) -> None:  # type: ignore[no-untyped-def]
    target = at(cucm, Transport.UDP)
    body = b"x" * 11500
    request = (
        f"OPTIONS sip:{CUCM_HOST} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.3.62:5999;branch=z9hG4bKbig;rport\r\n"
        "From: <sip:3001@video.example.com>;tag=1\r\nTo: <sip:cucm@video.example.com>\r\n"
        "Call-ID: big@127.0.3.62\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((EP1_HOST, 0))
        sock.setblocking(False)
        await loop.sock_sendto(sock, request, (target.host, target.port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    response = parse_message(data)
    assert response.status == 413  # type: ignore[union-attr]
    # The listener keeps serving.
    small = request.replace(b"x" * 11500, b"x" * 10).replace(b"11500", b"10")
    small = small.replace(b"z9hG4bKbig", b"z9hG4bKsmall")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((EP1_HOST, 0))
        sock.setblocking(False)
        await loop.sock_sendto(sock, small, (target.host, target.port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    assert parse_message(data).status == 200  # type: ignore[union-attr]


# -- the trunk -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.TLS, Transport.TCP])
async def test_example_com_goes_over_the_trunk_and_back(pki, endpoints, transport) -> None:  # type: ignore[no-untyped-def]
    # A stand-in gateway: a UA with the gateway's certificate on TLS and TCP.
    gateway = await endpoints(
        "alice.parkes",
        GW_HOST,
        listen=(ListenSpec(Transport.TLS, GW_HOST, 0), ListenSpec(Transport.TCP, GW_HOST, 0)),
        cert_name="gateway",
    )
    listener = gateway.stack.listener(transport)
    assert listener is not None
    trunk = TrunkConfig(destination=f"{transport.value.lower()}:{GW_HOST}:{listener.port}")
    async with await Cucm.start(cucm_config(pki, trunk=trunk)) as node:
        caller = await endpoints("3001", EP1_HOST, registrar=at(node, Transport.UDP))
        call = await caller.call("alice.parkes@example.com")
        answered = await gateway.next_call(timeout=5)
        await call.wait_connected(timeout=5)
        await call.wait_media(min_packets=15, timeout=5)
        await answered.wait_media(min_packets=15, timeout=5)
        assert answered.call.transport is transport
        await answered.hangup()  # BYE from the gateway side, back through CUCM
        await asyncio.wait_for(call.call.ended.wait(), 5)

        # And the other way: the gateway calls 3001 through the trunk.
        back = replace(gateway.config, proxy=at(node, transport))
        inbound = await endpoints("alice.parkes", "127.0.3.65", **_fields(back, "127.0.3.65"))
        second = await inbound.call("3001@video.example.com")
        taken = await caller.next_call(timeout=5)
        await second.wait_connected(timeout=5)
        await taken.wait_media(min_packets=10, timeout=5)
        await second.hangup()


def _fields(config: EndpointConfig, host: str) -> dict[str, Any]:
    return {
        "listen": tuple(ListenSpec(s.transport, host, 0) for s in config.listen),
        "cert_name": config.cert_name,
        "proxy": config.proxy,
    }


# -- the CLI ---------------------------------------------------------------------------------


def test_cucm_cli_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lab.cisco.cli import cucm_main

    assert cucm_main(["--check-config", "lab/configs/cucm.toml"]) == 0
    assert capsys.readouterr().out == "config OK: lab/configs/cucm.toml\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('[trunk]\ndestination = "sctp:127.0.2.1:5061"\n')
    assert cucm_main(["--check-config", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"config error: {bad}: trunk.destination")
    bad.write_text("dn_patern = '3'\n")
    assert cucm_main(["--check-config", str(bad)]) == 1
    assert "dn_patern" in capsys.readouterr().err


async def test_cucm_cli_serves_and_says_ready(pki: LabPKI, tmp_path: Path) -> None:
    config = tmp_path / "cucm.toml"
    config.write_text(
        f'listen = ["udp:{CUCM_HOST}:0", "tcp:{CUCM_HOST}:0"]\ncerts = "{pki.directory}"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "cucm",
        "--config",
        str(config),
        "--set",
        "trunk.destination=tcp:127.0.2.1:5060",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        async with asyncio.timeout(20):
            while not any(line.endswith("cucm ready") for line in lines):
                raw = await process.stderr.readline()
                assert raw, f"exited early: {lines}"
                lines.append(raw.decode().rstrip())
        listening = [line for line in lines if "listening on" in line]
        assert len(listening) == 2
        assert {line.split("listening on ")[1].split(":")[0] for line in listening} == {
            "udp",
            "tcp",
        }
    finally:
        process.terminate()
        await process.wait()
