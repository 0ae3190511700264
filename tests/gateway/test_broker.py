"""SipBroker over real loopback sockets: a Lync FE stand-in (a SipStack client) sends SIP
SIMPLE to a gateway stack whose only TU is the broker; IM&P stand-ins (SipStacks answering
200) record what reaches them.

Checked: the request reaches the node on the transport it came in on (UDP, TCP, mutual
TLS), with the broker's Via on top and Max-Forwards decremented, and the response comes
back without that Via; SUBSCRIBE is double Record-Routed and an in-dialog request routed
by that Record-Route is proxied on; round robin and fail-over past an unreachable node or
a 503; 503 when no node can be reached, 408 when the node stays silent, 483 for a spent
Max-Forwards, 482 for a loop; what `handles` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

import pytest

from certs.pki import LabPKI
from gateway.broker import BROKER_PARAM, SipBroker
from gateway.config import BrokerConfig
from sip.headers import Address
from sip.message import Headers, Request, Response, make_response, new_branch, new_tag
from sip.stack import Hop, SipStack, StackHandlers
from sip.timers import TimerSettings
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI

FE_HOST = "127.0.1.1"
GATEWAY_HOST = "127.0.2.1"
IMP_HOSTS = ("127.0.3.2", "127.0.3.3")
DEAD_HOST = "127.0.3.9"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)
NO_RANGE = TransportSettings(outbound_ports=None)
WAIT = 5.0


@dataclass(eq=False)
class ImpNode:
    """An IM&P stand-in: records each request and answers it with `status`."""

    stack: SipStack
    host: str
    status: int = 200
    seen: asyncio.Queue[tuple[Request, Hop]] = field(default_factory=asyncio.Queue)

    def answer(self, tx: ServerTransaction, request: Request) -> None:
        self.seen.put_nowait((request, tx.source))
        response = make_response(request, self.status, to_tag=request.to.tag or new_tag())
        if request.method == "SUBSCRIBE":
            # A UAS copies the Record-Route into its dialog-forming 2xx (RFC 3261 §12.1.1).
            for value in request.headers.getlist("Record-Route"):
                response.headers.add("Record-Route", value)
            response.headers.add("Contact", f"<sip:imp@{self.host}:{self.port};transport=tcp>")
            response.headers.add("Expires", "3600")
        self.stack.send_response(tx, response)

    @property
    def port(self) -> int:
        return self.stack.listeners[0].port


@dataclass(eq=False)
class Lab:
    fe: SipStack
    gateway: SipStack
    broker: SipBroker
    nodes: list[ImpNode]
    transport: Transport

    def gateway_hop(self) -> Hop:
        bound = self.gateway.listener(self.transport)
        assert bound is not None
        return Hop(
            self.transport,
            bound.host,
            bound.port,
            server_hostname="lyncexp.video.example.com",
        )


def fe_request(
    lab: Lab, method: str, *, max_forwards: int = 70, body: bytes = b"", **extra: str
) -> Request:
    """An out-of-dialog request from the FE, as Lync sends SIP SIMPLE."""
    local = lab.fe.listener(lab.transport)
    assert local is not None
    headers = Headers()
    headers.add(
        "Via", f"SIP/2.0/{lab.transport.value} {local.host}:{local.port};branch={new_branch()}"
    )
    headers.add("Max-Forwards", str(max_forwards))
    headers.add("From", f"<sip:alice.parkes@example.com>;tag={new_tag()}")
    headers.add("To", "<sip:3001@video.example.com>")
    headers.add("Call-ID", f"{new_tag()}@{FE_HOST}")
    headers.add("CSeq", f"1 {method}")
    headers.add(
        "Contact",
        f"<sip:alice.parkes@{local.host}:{local.port};transport={lab.transport.value.lower()}>",
    )
    for name, value in extra.items():
        headers.add(name.replace("_", "-"), value)
    if body:
        headers.add("Content-Type", "text/plain")
    return Request(method, URI.parse("sip:3001@video.example.com"), headers, body)


def free_common_port(transport: Transport, hosts: tuple[str, ...]) -> int:
    """A port free on every host in `hosts` (the broker has one port for all nodes)."""
    kind = socket.SOCK_DGRAM if transport is Transport.UDP else socket.SOCK_STREAM
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        ok = True
        for host in hosts[1:]:
            with socket.socket(socket.AF_INET, kind) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


@contextlib.asynccontextmanager
async def lab(
    transport: Transport,
    pki: LabPKI,
    *,
    node_hosts: tuple[str, ...] = IMP_HOSTS[:1],
    live: int | None = None,
    statuses: tuple[int, ...] = (),
    answer_within: float = 3.0,
    enabled: bool = True,
    port: int | None = None,
) -> AsyncIterator[Lab]:
    """FE -> gateway (broker) -> IM&P nodes; the first `live` of `node_hosts` listen."""
    tls = transport is Transport.TLS
    fe = SipStack(
        timers=FAST,
        transport_settings=NO_RANGE,
        tls_client=pki.client_context("fe") if tls else None,
    )
    gateway = SipStack(
        timers=FAST,
        transport_settings=NO_RANGE,
        tls_client=pki.client_context("gateway") if tls else None,
    )
    port = port or free_common_port(transport, node_hosts)
    settings = BrokerConfig(enabled=enabled, destinations=node_hosts, port=port)
    broker = SipBroker(settings, gateway, answer_within=answer_within)
    nodes: list[ImpNode] = []
    stacks = [fe, gateway]

    def on_request(tx: ServerTransaction, request: Request) -> Awaitable[None] | None:
        if broker.handles(request):
            return broker.forward(tx, request, tx.source)
        gateway.send_response(tx, make_response(request, 501, "Not brokered"))
        return None

    gateway.handlers = StackHandlers(on_request=on_request)
    try:
        await fe.listen(transport, FE_HOST, 0, ssl=pki.server_context("fe") if tls else None)
        await gateway.listen(
            transport, GATEWAY_HOST, 0, ssl=pki.server_context("gateway") if tls else None
        )
        for index, host in enumerate(node_hosts[: len(node_hosts) if live is None else live]):
            stack = SipStack(timers=FAST, transport_settings=NO_RANGE)
            stacks.append(stack)
            node = ImpNode(stack, host, statuses[index] if index < len(statuses) else 200)
            stack.handlers = StackHandlers(on_request=node.answer)
            await stack.listen(
                transport, host, port, ssl=pki.server_context("imp") if tls else None
            )
            nodes.append(node)
        yield Lab(fe, gateway, broker, nodes, transport)
    finally:
        for stack in stacks:
            await stack.close()


async def send(lab: Lab, request: Request) -> Response:
    async with asyncio.timeout(WAIT):
        return await lab.fe.send_request(request, lab.gateway_hop())


async def received(node: ImpNode) -> tuple[Request, Hop]:
    async with asyncio.timeout(WAIT):
        return await node.seen.get()


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP, Transport.TLS])
async def test_message_reaches_the_node_on_the_same_transport(
    transport: Transport, pki: LabPKI
) -> None:
    async with lab(transport, pki) as env:
        request = fe_request(env, "MESSAGE", max_forwards=10, body=b"hello from Lync")
        response = await send(env, request)
        forwarded, source = await received(env.nodes[0])
        gateway = env.gateway.listener(transport)

    assert response.status == 200
    # The FE sees its own Via only: the broker took its own off (RFC 3261 §16.7).
    assert [v.branch for v in response.via] == [request.top_via.branch]
    assert response.call_id == request.call_id
    assert gateway is not None
    # (Outbound TCP/TLS connections take the kernel's source address, so only the
    # transport is compared here; the Via below names the gateway.)
    assert source.transport is transport
    top, below = forwarded.via[0], forwarded.via[1]
    assert (top.transport, top.host, top.port) == (transport.value, GATEWAY_HOST, gateway.port)
    assert top.branch is not None and top.branch.startswith("z9hG4bK")
    assert top.branch != request.top_via.branch
    assert below.branch == request.top_via.branch
    assert forwarded.max_forwards == 9
    assert forwarded.body == b"hello from Lync"
    # A proxy keeps the end-to-end identifiers.
    assert forwarded.call_id == request.call_id
    assert forwarded.from_.tag == request.from_.tag
    assert str(forwarded.uri) == "sip:3001@video.example.com"
    assert "Record-Route" not in forwarded.headers  # MESSAGE creates no dialog
    assert env.broker.stats.forwarded == 1 and env.broker.stats.relayed == 1


@pytest.mark.parametrize("method", ["PUBLISH", "INFO", "NOTIFY"])
async def test_other_simple_methods_are_brokered(method: str, pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki) as env:
        response = await send(env, fe_request(env, method, Event="presence"))
        forwarded, _ = await received(env.nodes[0])
    assert response.status == 200
    assert forwarded.method == method


async def test_subscribe_is_record_routed_and_in_dialog_requests_follow(pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki) as env:
        subscribe = fe_request(env, "SUBSCRIBE", Event="presence", Expires="3600")
        response = await send(env, subscribe)
        forwarded, _ = await received(env.nodes[0])
        assert response.status == 200
        record_route = forwarded.record_route
        assert record_route, forwarded.encode().decode()
        assert all(BROKER_PARAM in rr.uri.params and "lr" in rr.uri.params for rr in record_route)
        gateway = env.gateway.listener(Transport.TCP)
        assert gateway is not None
        assert (record_route[0].uri.host, record_route[0].uri.port) == (GATEWAY_HOST, gateway.port)
        # The response carries the route set back to the FE unchanged.
        assert [str(a.uri) for a in response.record_route] == [str(a.uri) for a in record_route]

        # A refresh inside the dialog: Route = the reversed Record-Route, target = Contact.
        contact = response.contact[0].uri
        refresh = fe_request(env, "SUBSCRIBE", Event="presence", Expires="0")
        refresh.uri = contact
        refresh.headers.set("Call-ID", subscribe.call_id)
        refresh.headers.set("From", subscribe.headers.get("From"))
        refresh.headers.set("To", str(response.to))
        refresh.headers.set("CSeq", "2 SUBSCRIBE")
        for rr in reversed(response.record_route):
            refresh.headers.add("Route", str(rr))
        assert env.broker.handles(refresh)
        again = await send(env, refresh)
        routed, _ = await received(env.nodes[0])
    assert again.status == 200
    assert routed.to.tag == response.to.tag
    assert routed.uri == contact
    assert "Route" not in routed.headers  # our entries were consumed
    assert "Record-Route" not in routed.headers  # only the initial request is record-routed


async def test_round_robin_and_fail_over_past_an_unreachable_node(pki: LabPKI) -> None:
    hosts = (IMP_HOSTS[0], IMP_HOSTS[1])
    async with lab(Transport.TCP, pki, node_hosts=hosts) as env:
        for _ in range(4):
            assert (await send(env, fe_request(env, "MESSAGE", body=b"x"))).status == 200
        counts = [env.nodes[0].seen.qsize(), env.nodes[1].seen.qsize()]
    assert counts == [2, 2]

    # Nothing listens on the second node: every request still lands on the first.
    async with lab(Transport.TCP, pki, node_hosts=(IMP_HOSTS[0], DEAD_HOST), live=1) as env:
        for _ in range(3):
            assert (await send(env, fe_request(env, "MESSAGE", body=b"x"))).status == 200
        assert env.nodes[0].seen.qsize() == 3


async def test_a_503_from_one_node_moves_on_to_the_next(pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki, node_hosts=IMP_HOSTS, statuses=(503, 200)) as env:
        statuses = [
            (await send(env, fe_request(env, "MESSAGE", body=b"x"))).status for _ in range(2)
        ]
    assert statuses == [200, 200]


async def test_no_reachable_node_gives_503_with_a_reason(pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki, node_hosts=(DEAD_HOST,), live=0) as env:
        response = await send(env, fe_request(env, "MESSAGE", body=b"x"))
    assert response.status == 503
    assert "IM&P" in response.reason and "reachable" in response.reason
    assert env.broker.stats.refused == 1


async def test_a_silent_node_gives_408(pki: LabPKI) -> None:
    # A UDP socket that reads nothing: the request arrives and is never answered.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((IMP_HOSTS[0], 0))
        port = silent.getsockname()[1]
        async with lab(
            Transport.UDP, pki, node_hosts=(IMP_HOSTS[0],), live=0, answer_within=0.5, port=port
        ) as env:
            response = await send(env, fe_request(env, "MESSAGE", body=b"x"))
        data = silent.recv(65536)
    assert response.status == 408
    assert "did not answer" in response.reason
    assert data.startswith(b"MESSAGE sip:3001@video.example.com SIP/2.0")


async def test_spent_max_forwards_gives_483_and_nothing_is_sent(pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki) as env:
        response = await send(env, fe_request(env, "MESSAGE", max_forwards=0))
        assert env.nodes[0].seen.empty()
    assert response.status == 483


async def test_a_request_carrying_our_via_is_a_loop(pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki) as env:
        gateway = env.gateway.listener(Transport.TCP)
        assert gateway is not None
        request = fe_request(env, "MESSAGE")
        # As if the request had passed through this gateway already.
        request.headers.add(
            "Via", f"SIP/2.0/TCP {gateway.host}:{gateway.port};branch={new_branch()}"
        )
        response = await send(env, request)
        assert env.nodes[0].seen.empty()
    assert response.status == 482


async def test_handles_only_out_of_dialog_simple_when_enabled(pki: LabPKI) -> None:
    async with lab(Transport.TCP, pki) as env:
        assert env.broker.handles(fe_request(env, "MESSAGE"))
        assert not env.broker.handles(fe_request(env, "INVITE"))
        assert not env.broker.handles(fe_request(env, "OPTIONS"))
        in_dialog = fe_request(env, "NOTIFY")
        in_dialog.headers.set(
            "To", str(Address.parse("<sip:3001@video.example.com>").with_tag("t9"))
        )
        assert not env.broker.handles(in_dialog)
        # A Route to someone else's x-broker entry is not ours.
        foreign = fe_request(env, "NOTIFY")
        foreign.headers.set("To", "<sip:3001@video.example.com>;tag=t9")
        foreign.headers.add("Route", f"<sip:127.0.9.9:5060;lr;{BROKER_PARAM}>")
        assert not env.broker.handles(foreign)
    async with lab(Transport.TCP, pki, enabled=False) as env:
        assert not env.broker.handles(fe_request(env, "MESSAGE"))
        # Not brokered: the gateway's own TU answers.
        response = await send(env, fe_request(env, "MESSAGE"))
    assert response.status == 501
