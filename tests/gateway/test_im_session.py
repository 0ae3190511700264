"""IM sessions through the gateway runtime, over real loopback sockets and mutual TLS.

The Microsoft side is the FE stand-in of test_runtime (certificate "fe", a trusted host)
sending the INVITE pidgin-sipe sends to start IM (``m=message ... sip null``, ms-text-format,
Ms-Conversation-ID); the IM&P node is the lab's simulated IM&P behind the broker.

Checked: the INVITE, its ACK, the MESSAGEs (both ways: IM&P's comes back through the
broker's Record-Route though IM&P is no Microsoft trusted host) and the BYE all reach the
other side; no call is made and no media port taken; without a broker the INVITE gets 488
saying why, and 503 saying so when the node cannot be reached; a CANCEL of an IM session
INVITE still ringing at the node reaches the node and its 487 comes back; a MESSAGE in no
known session gets 481 (from the gateway when it is not routed through the broker, from
IM&P when it is); which INVITEs count as IM sessions.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from certs.pki import LabPKI
from gateway.broker import BROKER_PARAM
from gateway.im_session import NO_BROKER, is_im_session
from lab.cisco.config import ImpConfig
from lab.cisco.imp import Imp
from sip.dialog import Dialog
from sip.message import Headers, Request, new_branch, new_tag
from sip.stack import SipStack, StackHandlers
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI
from tests.gateway.test_runtime import FAST, WAIT, FrontEnd, Lab, make_lab

__all__ = ["make_lab"]  # the fixture, used here by name

IMP_HOST = "127.0.3.2"
TEXT = "hello from pidgin-sipe"


def sipe_offer(host: str, port: int, kind: str = "message") -> bytes:
    """The SDP of pidgin-sipe 1.25's IM INVITE (sipe-im.c), for our address."""
    return (
        f"v=0\r\no=- 0 0 IN IP4 {host}\r\ns=session\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m={kind} {port} sip null\r\n"
        "a=accept-types:text/plain text/html image/gif multipart/alternative "
        "application/im-iscomposing+xml application/ms-imdn+xml text/x-msmsgsinvite\r\n"
    ).encode()


class ImFrontEnd(FrontEnd):
    """The FE stand-in, also taking MESSAGEs inside IM sessions it started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: asyncio.Queue[Request] = asyncio.Queue()

    def handle_dialog_request(self, dialog: Dialog, transaction: ServerTransaction,
                              request: Request) -> None:
        if request.method == "MESSAGE":
            self.received.append(request)
            self.stack.respond(transaction, 200)
            self.messages.put_nowait(request)
            return
        super().handle_dialog_request(dialog, transaction, request)

    def im_invite(self, user: str = "bob@video.example.com") -> Request:
        assert self.gateway is not None
        encoded = base64.b64encode(TEXT.encode()).decode()
        return self.new_request(
            "INVITE", URI.parse(f"sip:{user}"), self.gateway,
            body=sipe_offer(self.stack.listeners[0].host, self.port),
            content_type="application/sdp",
            headers=(("Supported", "ms-sender"),
                     ("ms-text-format", f"text/plain; charset=UTF-8;ms-body={encoded}"),
                     ("Ms-Conversation-ID", "271828182")),
        )


@pytest.fixture
async def imp(pki: LabPKI) -> AsyncIterator[Imp]:
    node = await Imp.start(ImpConfig(listen=(f"tls:{IMP_HOST}:0",), certs=str(pki.directory),
                                     t1=0.05))
    try:
        yield node
    finally:
        await node.close()


def broker_toml(imp: Imp) -> str:
    listener = imp.stack.listeners[0]
    return (f'\n[b2bua.broker]\nenabled = true\ndestinations = ["{listener.host}"]\n'
            f"port = {listener.port}\n")


async def im_lab(make_lab: Callable[..., Any], imp: Imp | None) -> Lab:
    lab: Lab = await make_lab(extra=broker_toml(imp) if imp is not None else "")
    fe = ImFrontEnd(lab.fe.stack)
    fe.gateway = lab.fe.gateway
    lab.fe = fe
    return lab


def no_call_no_port(lab: Lab) -> None:
    assert not lab.gateway.calls
    assert lab.gateway.pool.ports_in_use == 0


async def test_im_session_reaches_imp_both_ways_and_ends(make_lab, imp) -> None:  # type: ignore[no-untyped-def]
    lab = await im_lab(make_lab, imp)
    fe = lab.fe
    assert isinstance(fe, ImFrontEnd) and fe.gateway is not None
    invite = fe.im_invite()
    pending = fe.stack.start_request(invite, fe.gateway)
    ok = await asyncio.wait_for(pending.final, WAIT)
    assert ok.status == 200, f"{ok.status} {ok.reason}"
    assert b"m=message " in ok.body and b" sip sip:imp@video.example.com" in ok.body
    # The broker stays in the session: its Record-Route came back in the 200.
    assert any(BROKER_PARAM in rr.uri.params for rr in ok.record_route)
    dialog = Dialog.create_uac(invite, ok)
    fe.dialogs.add(dialog, fe.gateway)
    fe.send_ack(dialog, pending.transaction)

    got = await imp.wait_for("INVITE", timeout=WAIT)
    assert got.call_id == invite.call_id and got.body == invite.body
    assert got.headers.get("ms-text-format") == invite.headers.get("ms-text-format")
    assert got.headers.get("Ms-Conversation-ID") == "271828182"
    assert (await imp.wait_for("ACK", timeout=WAIT)).call_id == invite.call_id
    no_call_no_port(lab)

    response = await asyncio.wait_for(fe.send_in_dialog(
        dialog, "MESSAGE", body=TEXT.encode(), content_type="text/plain; charset=UTF-8"), WAIT)
    assert response.status == 200
    message = await imp.wait_for("MESSAGE", timeout=WAIT)
    assert message.body == TEXT.encode() and message.call_id == invite.call_id

    # IM&P -> Microsoft inside the session: through the broker, to the FE's Contact.
    back = await asyncio.wait_for(imp.send_message(invite.call_id, "hello back"), WAIT)
    assert back.status == 200, f"{back.status} {back.reason}"
    received = await asyncio.wait_for(fe.messages.get(), WAIT)
    assert received.body == b"hello back" and received.call_id == invite.call_id
    assert len(received.via) == 2  # IM&P's and the broker's

    bye = await asyncio.wait_for(fe.send_in_dialog(dialog, "BYE"), WAIT)
    assert bye.status == 200
    assert (await imp.wait_for("BYE", timeout=WAIT)).call_id == invite.call_id
    assert invite.call_id not in imp.sessions
    no_call_no_port(lab)
    stats = lab.gateway.broker.stats
    assert (stats.im_sessions, stats.im_sessions_ended, stats.acks) == (1, 1, 1)


async def test_without_a_broker_an_im_session_gets_488_saying_why(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = await im_lab(make_lab, None)
    fe = lab.fe
    assert isinstance(fe, ImFrontEnd) and fe.gateway is not None
    response = await asyncio.wait_for(fe.stack.send_request(fe.im_invite(), fe.gateway), WAIT)
    assert (response.status, response.reason) == NO_BROKER
    assert "IM&P" in response.reason and "broker" in response.reason
    no_call_no_port(lab)
    # Not counted as a refused call: it never was one.
    assert not lab.gateway.controller.ended


async def test_a_message_in_no_known_session_is_refused(make_lab, imp) -> None:  # type: ignore[no-untyped-def]
    lab = await im_lab(make_lab, imp)
    fe = lab.fe
    assert isinstance(fe, ImFrontEnd) and fe.gateway is not None
    listener = lab.gateway.stacks[next(iter(lab.gateway.stacks))].listeners[0]

    def stray(route: bool) -> Request:
        headers = Headers()
        local = fe.stack.listeners[0]
        headers.add("Via", f"SIP/2.0/TLS {local.host}:{local.port};branch={new_branch()}")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:alice.parkes@example.com>;tag={new_tag()}")
        headers.add("To", f"<sip:bob@video.example.com>;tag={new_tag()}")
        headers.add("Call-ID", f"{new_tag()}@127.0.1.1")
        headers.add("CSeq", "2 MESSAGE")
        headers.add("Content-Type", "text/plain")
        if route:
            headers.add("Route", f"<sip:{listener.host}:{listener.port};transport=tls;lr;"
                                 f"{BROKER_PARAM}>")
        node = imp.stack.listeners[0]
        uri = URI.parse(f"sip:imp@{node.host}:{node.port};transport=tls")
        return Request("MESSAGE", uri, headers, b"lost text")

    # Not routed through the broker: no dialog of the gateway's, 481 from the gateway.
    response = await asyncio.wait_for(fe.stack.send_request(stray(False), fe.gateway), WAIT)
    assert response.status == 481
    # Routed through the broker (a session the node has forgotten): the node's 481.
    response = await asyncio.wait_for(fe.stack.send_request(stray(True), fe.gateway), WAIT)
    assert response.status == 481
    assert len(response.via) == 1  # came back through the broker, its Via removed
    with pytest.raises(TimeoutError):
        await imp.wait_for("MESSAGE", timeout=0.2)
    no_call_no_port(lab)


# -- which INVITEs are IM sessions --------------------------------------------------------


def invite(body: bytes, content_type: str | None = "application/sdp",
           method: str = "INVITE") -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/TLS 127.0.1.1:5061;branch={new_branch()}")
    headers.add("From", f"<sip:alice.parkes@example.com>;tag={new_tag()}")
    headers.add("To", "<sip:bob@video.example.com>")
    headers.add("Call-ID", new_tag())
    headers.add("CSeq", f"1 {method}")
    if content_type is not None:
        headers.add("Content-Type", content_type)
    return Request(method, URI.parse("sip:bob@video.example.com"), headers, body)


@pytest.mark.parametrize(
    ("body", "content_type", "method", "expected"),
    [
        (sipe_offer("10.0.0.5", 5061), "application/sdp", "INVITE", True),
        (sipe_offer("10.0.0.5", 5061), "Application/SDP; charset=x", "INVITE", True),
        (sipe_offer("10.0.0.5", 5061, "x-ms-message"), "application/sdp", "INVITE", True),
        (sipe_offer("10.0.0.5", 5061), "application/sdp", "MESSAGE", False),
        (sipe_offer("10.0.0.5", 5061) + b"m=audio 5004 RTP/AVP 0\r\n", "application/sdp",
         "INVITE", False),
        (b"v=0\r\nm=audio 5004 RTP/SAVP 0\r\n", "application/sdp", "INVITE", False),
        (sipe_offer("10.0.0.5", 5061), "text/plain", "INVITE", False),
        (b"", None, "INVITE", False),
        (b"m=message\r\n", "application/sdp", "INVITE", False),
        (b"\xff\xfe m=message 1 sip null", "application/sdp", "INVITE", False),
    ],
)
def test_is_im_session(body: bytes, content_type: str | None, method: str,
                       expected: bool) -> None:
    assert is_im_session(invite(body, content_type, method)) is expected


async def test_cancel_of_a_pending_im_session_reaches_the_node(make_lab, pki) -> None:  # type: ignore[no-untyped-def]
    # A node that rings and never answers: the CANCEL must reach it, and its 487 come back.
    node = SipStack(timers=FAST, transport_settings=TransportSettings(outbound_ports=None))
    invites: asyncio.Queue[Request] = asyncio.Queue()

    def ring(transaction: ServerTransaction, request: Request) -> None:
        invites.put_nowait(request)
        node.respond(transaction, 180, to_tag=new_tag())

    cancels: asyncio.Queue[Request] = asyncio.Queue()

    def cancelled(transaction: ServerTransaction, cancel: Request) -> None:
        cancels.put_nowait(cancel)
        node.respond(transaction, 487)

    node.handlers = StackHandlers(on_request=ring, on_cancel=cancelled)
    await node.listen(Transport.TLS, IMP_HOST, 0, ssl=pki.server_context("imp"))
    try:
        listener = node.listeners[0]
        lab: Lab = await make_lab(extra=(
            f'\n[b2bua.broker]\nenabled = true\ndestinations = ["{listener.host}"]\n'
            f"port = {listener.port}\n"))
        fe = ImFrontEnd(lab.fe.stack)
        fe.gateway = lab.fe.gateway
        assert fe.gateway is not None
        ringing = asyncio.Event()
        pending = fe.stack.start_request(
            fe.im_invite(), fe.gateway,
            on_provisional=lambda r: ringing.set() if r.status == 180 else None)
        await asyncio.wait_for(ringing.wait(), WAIT)
        assert (await asyncio.wait_for(invites.get(), WAIT)).method == "INVITE"
        pending.cancel()
        final = await asyncio.wait_for(pending.final, WAIT)
        assert final.status == 487
        # The 487 is the node's: the CANCEL went on to it (not answered by the gateway).
        assert (await asyncio.wait_for(cancels.get(), WAIT)).method == "CANCEL"
        no_call_no_port(lab)
        assert lab.gateway.broker.stats.im_sessions == 0
    finally:
        await node.close()


async def test_an_unreachable_imp_node_gives_503_saying_so(make_lab) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens there (a port just closed on the node's address).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((IMP_HOST, 0))
        port = probe.getsockname()[1]
    lab: Lab = await make_lab(extra=(
        f'\n[b2bua.broker]\nenabled = true\ndestinations = ["{IMP_HOST}"]\nport = {port}\n'))
    fe = ImFrontEnd(lab.fe.stack)
    fe.gateway = lab.fe.gateway
    assert fe.gateway is not None
    response = await asyncio.wait_for(fe.stack.send_request(fe.im_invite(), fe.gateway), WAIT)
    assert response.status == 503
    assert "IM&P" in response.reason and "reachable" in response.reason
    no_call_no_port(lab)
