"""The simulated Lync Front End on loopback with real mutual TLS: REGISTER and routing to
registered clients, the static route to a stand-in gateway (its INVITE arrives over mutual
TLS with the FE's certificate, Record-Routed), the untrusted-sender answers of the real FE
(OPTIONS 401, INFO "400 Missing Correct Via Header", INVITE 403), configs and the CLI."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certs.pki import LabPKI
from gateway.configkit import ConfigError, UnknownKeyError, load_dataclass
from lab.lync.client import CallRefused
from lab.lync.config import FrontEndConfig, StaticRoute
from lab.lync.topology import MicrosoftSide
from sip.message import Request, make_response
from sip.stack import Hop, SipStack, StackHandlers
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportAddress, TransportSettings
from sip.uri import URI, Params
from sip.useragent import UserAgent
from tests.peers.procs import free_port, start_gateway

CONFIGS = Path(__file__).resolve().parents[2] / "lab" / "configs"
GATEWAY_HOST = "127.0.2.1"
STRANGER_HOST = "127.0.3.77"


@dataclass
class StandIn:
    """A TLS UA that records what reaches it and answers with a fixed status."""

    agent: UserAgent
    status: int = 603
    received: asyncio.Queue[tuple[Request, tuple[str, ...]]] = field(
        default_factory=asyncio.Queue)

    @property
    def address(self) -> TransportAddress:
        listener = self.agent.stack.listener(Transport.TLS)
        assert listener is not None
        return listener


@pytest.fixture
async def stand_in(pki: LabPKI) -> AsyncIterator[StandIn]:
    """A stand-in gateway: mutual TLS listener with the "gateway" certificate."""
    stack = SipStack(transport_settings=TransportSettings(outbound_ports=None),
                     tls_client=pki.client_context("gateway"))
    await stack.listen(Transport.TLS, GATEWAY_HOST, 0, ssl=pki.server_context("gateway"))
    agent = UserAgent(stack, user="gateway", domain="video.example.com")
    holder = StandIn(agent)

    def on_request(transaction: ServerTransaction, request: Request) -> None:
        source = transaction.source
        assert isinstance(source, Hop) and source.connection_id is not None
        info = stack.transports.connection(source.connection_id)
        holder.received.put_nowait((request, info.peer_names if info else ()))
        stack.send_response(transaction, make_response(request, holder.status))

    stack.handlers = StackHandlers(on_request=on_request)
    yield holder
    await stack.close()


def routed_to(stand_in: StandIn) -> FrontEndConfig:
    destination = TransportAddress(Transport.TLS, GATEWAY_HOST, stand_in.address.port)
    return FrontEndConfig(static_routes=(
        StaticRoute("video.example.com", destination, "lyncexp.video.example.com"),))


async def stranger(pki: LabPKI, cert: str) -> UserAgent:
    """A TLS UA presenting lab certificate ``cert`` (a server cert, so it may listen)."""
    stack = SipStack(transport_settings=TransportSettings(outbound_ports=None),
                     tls_client=pki.client_context(cert))
    await stack.listen(Transport.TLS, STRANGER_HOST, 0, ssl=pki.server_context(cert))
    return UserAgent(stack, user="probe", domain="video.example.com")


async def ask(agent: UserAgent, side: MicrosoftSide, method: str, user: str | None = None
              ) -> tuple[int, str, Request]:
    listener = side.fe.listener
    if user is None:  # the FE itself
        uri = URI("sip", host=listener.host, port=listener.port,
                  params=Params.of(transport="tls"))
    else:
        uri = URI("sip", user=user, host="example.com")
    hop = Hop(Transport.TLS, listener.host, listener.port, server_hostname="fe.example.com")
    request = agent.new_request(method, uri, hop)
    response = await agent.stack.send_request(request, hop)
    return response.status, response.reason, request


async def test_register_then_route_to_the_registered_client(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        david = await side.client("david", video=False)  # internal here: via the FE
        bindings = side.fe.lookup("david.jones@example.com")
        assert len(bindings) == 1
        assert bindings[0].contact.host == "127.0.5.10"
        call = await alice.call("david.jones@example.com")
        incoming = await asyncio.wait_for(david.incoming_calls.get(), 10)
        await call.wait_connected()
        assert incoming.call_id == call.call_id
        # The FE Record-Routed the INVITE: both route sets name it.
        fe = side.fe.listener
        assert incoming.dialog is not None and call.dialog is not None
        for dialog in (incoming.dialog, call.dialog):
            assert [(r.uri.host, r.uri.port) for r in dialog.route_set] == [(fe.host, fe.port)]
        await call.hangup()
        await asyncio.wait_for(incoming.ended.wait(), 5)
        assert incoming.result == "BYE from peer"
        assert call.result == "completed"


async def test_unregistered_user_is_temporarily_unavailable(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        call = await alice.call("nobody@example.com")
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected()
        assert refused.value.status == 480
        assert call.state == "ended"


async def test_unregister_removes_the_binding(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        assert side.fe.lookup("alice.parkes@example.com")
        await alice.register(0)
        assert side.fe.lookup("alice.parkes@example.com") == []


async def test_register_as_someone_else_is_forbidden(pki: LabPKI) -> None:
    """NTLM as david (right password) cannot register alice's AOR."""
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        with pytest.raises(CallRefused) as refused:
            await side.client("alice", login="david.jones")
        assert refused.value.status == 403
        assert side.fe.lookup("alice.parkes@example.com") == []


async def test_wrong_password_is_refused(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        with pytest.raises(CallRefused) as refused:
            await side.client("alice", password="not-the-password")
        assert refused.value.status == 401
        assert side.fe.lookup("alice.parkes@example.com") == []
        assert side.fe.auth_failures[-1][0] == "alice.parkes@example.com"
        assert "wrong password" in side.fe.auth_failures[-1][1]


async def test_static_route_reaches_the_gateway_over_mutual_tls(
        pki: LabPKI, stand_in: StandIn) -> None:
    async with MicrosoftSide.run(pki, fe=routed_to(stand_in), with_edge=False) as side:
        alice = await side.client("alice", video=False)
        call = await alice.call("3001@video.example.com")
        request, peer_names = await asyncio.wait_for(stand_in.received.get(), 10)
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected()
        assert refused.value.status == 603
        fe = side.fe.listener
    assert request.method == "INVITE"
    assert str(request.uri) == "sip:3001@video.example.com"
    assert "fe.example.com" in peer_names  # the FE presented its certificate (mutual TLS)
    assert request.headers.get("Authorization") is None  # alice's signature was for the FE
    assert request.record_route[0].uri.host == fe.host
    assert "lr" in request.record_route[0].uri.params
    assert request.via[0].host == fe.host  # the FE's Via on top, alice's below
    assert request.via[1].host == "127.0.1.10"
    assert request.max_forwards == 69
    assert (request.content_type or "").startswith("multipart/alternative")


async def test_untrusted_sender_gets_what_the_real_fe_answers(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        probe = await stranger(pki, "endpoint")  # endpoint.video.example.com: not trusted
        try:
            status, reason, _ = await ask(probe, side, "OPTIONS")
            assert status == 401
            status, reason, _ = await ask(probe, side, "INFO", "alice.parkes")
            assert (status, reason) == (400, "Missing Correct Via Header")
            status, reason, _ = await ask(probe, side, "INVITE", "alice.parkes")
            assert status == 403
        finally:
            await probe.stack.close()
        assert side.fe.refusals == [("OPTIONS", 401), ("INFO", 400), ("INVITE", 403)]


async def test_trusted_application_pool_is_trusted_by_certificate_name(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        gateway = await stranger(pki, "gateway")  # exp01 / lyncexp.video.example.com
        try:
            status, _, _ = await ask(gateway, side, "OPTIONS")
            assert status == 200
            status, _, _ = await ask(gateway, side, "INFO", "alice.parkes")
            assert status == 480  # trusted, routed; alice is simply not registered
        finally:
            await gateway.stack.close()


async def test_gateway_not_in_the_pool_is_untrusted(pki: LabPKI) -> None:
    config = FrontEndConfig(trusted_applications=("other.video.example.com",))
    async with MicrosoftSide.run(pki, fe=config, with_edge=False) as side:
        gateway = await stranger(pki, "gateway")
        try:
            status, _, _ = await ask(gateway, side, "OPTIONS")
            assert status == 401
            status, reason, _ = await ask(gateway, side, "INFO", "alice.parkes")
            assert (status, reason) == (400, "Missing Correct Via Header")
        finally:
            await gateway.stack.close()


async def test_spent_max_forwards_gets_483(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        gateway = await stranger(pki, "gateway")
        try:
            listener = side.fe.listener
            hop = Hop(Transport.TLS, listener.host, listener.port,
                      server_hostname="fe.example.com")
            uri = URI("sip", user="alice.parkes", host="example.com")
            request = gateway.new_request("MESSAGE", uri, hop, body=b"hi",
                                          content_type="text/plain")
            request.headers.set("Max-Forwards", "0")
            response = await gateway.stack.send_request(request, hop)
            assert response.status == 483
        finally:
            await gateway.stack.close()


def test_lab_config_file_loads_with_the_lab_defaults() -> None:
    config = load_dataclass(FrontEndConfig, CONFIGS / "lync-fe.toml")
    assert config.listen == TransportAddress(Transport.TLS, "127.0.1.1", 5061)
    assert config.static_routes[0].destination == TransportAddress(
        Transport.TLS, "lyncexp.video.example.com", 65072)
    assert "lyncexp.video.example.com" in config.trusted_applications


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "fe.toml"
    path.write_text('[[static_routes]]\ndomain = "video.example.com"\ndestination = 5\n')
    with pytest.raises(ConfigError) as error:
        load_dataclass(FrontEndConfig, path)
    assert error.value.key == "static_routes[0].destination"
    path.write_text('trusted_aplications = []\n')
    with pytest.raises(UnknownKeyError, match="trusted_applications"):
        load_dataclass(FrontEndConfig, path)


def test_cli_check_config(tmp_path: Path) -> None:
    from lab.lync.cli import fe_main

    assert fe_main(["--check-config", str(CONFIGS / "lync-fe.toml")]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = "udp:127.0.1.1:5060"\n')
    assert fe_main(["--check-config", str(bad)]) == 1


def test_cli_serves_until_sigterm(pki: LabPKI, tmp_path: Path) -> None:
    process = start_gateway(
        ["lync-fe", "--config", str(CONFIGS / "lync-fe.toml"), "--set",
         f"certs={pki.directory}", "--set", f"listen=tls:127.0.1.1:{free_port(host='127.0.1.1')}"],
        expect=["tls"])
    try:
        host, port = process.address("tls")
        assert host == "127.0.1.1" and port > 0
        process.peer.wait_for_output(lambda lines: any("ready" in x for x in lines) or None,
                                     10, "ready")
    finally:
        process.peer.proc.send_signal(signal.SIGTERM)
        finished = process.stop()
    assert finished.returncode == 0, finished


