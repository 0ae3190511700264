"""The simulated IM&P node on loopback over TCP and TLS: MESSAGE, NOTIFY, PUBLISH (with a
SIP-ETag), INFO and OPTIONS get 200; SUBSCRIBE gets 200 with a To tag and Expires and then a
NOTIFY carrying PIDF (RFC 3863) in the new dialog; an IM session INVITE (m=message, as
pidgin-sipe sends it) gets 200 with an m=message answer, its MESSAGEs are recorded like
page-mode ones, BYE ends it, and a MESSAGE for an unknown session gets 481; an INVITE for
anything but IM gets 488; other methods 405; each is recorded for `wait_for`; and the
`gateway imp` config check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from certs.pki import LabPKI
from lab.cisco.cli import imp_main
from lab.cisco.config import ImpConfig
from lab.cisco.imp import Imp
from sip.dialog import Dialog
from sip.message import Request
from sip.stack import Hop, SipStack
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI
from sip.useragent import UserAgent

IMP_HOST, CLIENT_HOST = "127.0.3.71", "127.0.3.72"


class Client(UserAgent):
    """A broker stand-in: sends SIMPLE requests, answers the NOTIFYs it gets."""

    def __init__(self, stack: SipStack) -> None:
        super().__init__(stack, user="alice.parkes", domain="example.com")
        self.notifies: asyncio.Queue[Request] = asyncio.Queue()

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> None:
        if request.method == "NOTIFY":
            self.notifies.put_nowait(request)
            self.stack.respond(transaction, 200)
            return None
        super().handle_dialog_request(dialog, transaction, request)
        return None


@pytest.fixture
async def imp(pki: LabPKI) -> AsyncIterator[Imp]:
    config = ImpConfig(
        listen=(f"tcp:{IMP_HOST}:0", f"tls:{IMP_HOST}:0"), certs=str(pki.directory), t1=0.05
    )
    node = await Imp.start(config)
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
async def client(pki: LabPKI) -> AsyncIterator[Client]:
    stack = SipStack(
        transport_settings=TransportSettings(outbound_ports=None),
        tls_client=pki.client_context("gateway"),
    )
    await stack.listen(Transport.TCP, CLIENT_HOST, 0)
    await stack.listen(Transport.TLS, CLIENT_HOST, 0, ssl=pki.server_context("gateway"))
    try:
        yield Client(stack)
    finally:
        await stack.close()


def hop_to(imp: Imp, transport: Transport) -> Hop:
    listener = imp.stack.listener(transport)
    assert listener is not None
    return Hop(transport, listener.host, listener.port, server_hostname="imp.video.example.com")


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
@pytest.mark.parametrize("method", ["MESSAGE", "NOTIFY", "PUBLISH", "INFO", "OPTIONS"])
async def test_each_method_is_answered_and_recorded(imp, client, transport, method) -> None:  # type: ignore[no-untyped-def]
    hop = hop_to(imp, transport)
    body = b"hello" if method == "MESSAGE" else b""
    request = client.new_request(
        method,
        URI.parse("sip:bob@video.example.com"),
        hop,
        body=body,
        content_type="text/plain" if body else None,
        headers=(("Event", "presence"),) if method in ("NOTIFY", "PUBLISH") else (),
    )
    response = await asyncio.wait_for(client.stack.send_request(request, hop), 5)
    assert response.status == 200
    if method == "PUBLISH":
        assert response.headers.get("SIP-ETag")
    got = await imp.wait_for(method, timeout=5)
    assert got.call_id == request.call_id and got.body == body


async def test_subscribe_gets_200_then_a_pidf_notify(imp, client) -> None:  # type: ignore[no-untyped-def]
    hop = hop_to(imp, Transport.TLS)
    subscribe = client.new_request(
        "SUBSCRIBE",
        URI.parse("sip:bob@video.example.com"),
        hop,
        headers=(("Event", "presence"), ("Expires", "7200"), ("Accept", "application/pidf+xml")),
    )
    response = await asyncio.wait_for(client.stack.send_request(subscribe, hop), 5)
    assert response.status == 200 and response.to.tag
    assert response.headers.get("Expires") == "3600"  # cut to subscription_expires
    client.dialogs.add(Dialog.create_uac(subscribe, response), hop)
    notify = await asyncio.wait_for(client.notifies.get(), 5)
    assert notify.headers.get("Subscription-State") == "active;expires=3600"
    assert notify.content_type == "application/pidf+xml"
    assert b"<basic>open</basic>" in notify.body and b'entity="sip:bob@video.example.com"' in (
        notify.body
    )
    assert (await imp.wait_for("SUBSCRIBE", timeout=1)).call_id == subscribe.call_id
    # The NOTIFY's 200 came back to the node.
    await asyncio.wait_for(imp.notify_answered.wait(), 5)
    assert imp.notify_responses[0].status == 200


async def test_other_methods_get_405_and_wait_for_times_out(imp, client) -> None:  # type: ignore[no-untyped-def]
    hop = hop_to(imp, Transport.TCP)
    request = client.new_request("REFER", URI.parse("sip:bob@video.example.com"), hop)
    response = await asyncio.wait_for(client.stack.send_request(request, hop), 5)
    assert response.status == 405 and "MESSAGE" in (response.headers.get("Allow") or "")
    with pytest.raises(TimeoutError):
        await imp.wait_for("MESSAGE", timeout=0.1)


# What pidgin-sipe 1.25 offers (sipe-im.c: sipe_im_invite), with a lab address and port.
SIPE_IM_OFFER = (
    b"v=0\r\no=- 0 0 IN IP4 127.0.3.72\r\ns=session\r\nc=IN IP4 127.0.3.72\r\nt=0 0\r\n"
    b"m=message 5061 sip null\r\na=accept-types:text/plain text/html image/gif "
    b"multipart/alternative application/im-iscomposing+xml application/ms-imdn+xml "
    b"text/x-msmsgsinvite\r\n"
)


async def test_im_session_invite_message_bye(imp, client) -> None:  # type: ignore[no-untyped-def]
    hop = hop_to(imp, Transport.TLS)
    invite = client.new_request(
        "INVITE",
        URI.parse("sip:bob@video.example.com"),
        hop,
        body=SIPE_IM_OFFER,
        content_type="application/sdp",
        headers=(("Supported", "ms-sender"), ("Ms-Conversation-ID", "123456789"),
                 ("ms-text-format", "text/plain; charset=UTF-8;ms-body=aGk=")),
    )
    pending = client.stack.start_request(invite, hop)
    ok = await asyncio.wait_for(pending.final, 5)
    assert ok.status == 200 and ok.to.tag and ok.contact
    assert ok.content_type == "application/sdp"
    answer = ok.body.decode()
    assert "\r\nm=message " in answer and " sip sip:imp@video.example.com\r\n" in answer
    assert "a=accept-types:text/plain" in answer
    # A standards node: it does not say it read the text in the INVITE's ms-text-format.
    assert "ms-text-format" not in ",".join(ok.headers.getlist("Supported"))
    dialog = Dialog.create_uac(invite, ok)
    client.dialogs.add(dialog, hop)
    client.send_ack(dialog, pending.transaction)
    assert (await imp.wait_for("INVITE", timeout=5)).call_id == invite.call_id
    assert (await imp.wait_for("ACK", timeout=5)).call_id == invite.call_id
    assert invite.call_id in imp.sessions

    text = b"hello inside the session"
    response = await asyncio.wait_for(
        client.send_in_dialog(dialog, "MESSAGE", body=text, content_type="text/plain"), 5
    )
    assert response.status == 200
    message = await imp.wait_for("MESSAGE", timeout=5)
    assert message.body == text and message.call_id == invite.call_id

    # A re-INVITE refreshing the session gets the same answer, in the same dialog.
    reinvite, _ = client.dialog_request(
        dialog, "INVITE", body=SIPE_IM_OFFER, content_type="application/sdp")
    pending = client.stack.start_request(reinvite, hop)
    again = await asyncio.wait_for(pending.final, 5)
    assert again.status == 200 and again.to.tag == ok.to.tag and again.body == ok.body
    client.send_ack(dialog, pending.transaction)
    assert (await imp.wait_for("ACK", timeout=5)).cseq.seq == reinvite.cseq.seq

    bye = await asyncio.wait_for(client.send_in_dialog(dialog, "BYE"), 5)
    assert bye.status == 200
    assert (await imp.wait_for("BYE", timeout=5)).call_id == invite.call_id
    assert invite.call_id not in imp.sessions
    # After the BYE the session is gone: a MESSAGE in it is refused, not recorded.
    late = client.new_request(
        "MESSAGE", URI.parse("sip:bob@video.example.com"), hop, body=b"late",
        content_type="text/plain", call_id=invite.call_id,
    )
    late.headers.set("To", str(ok.to))
    response = await asyncio.wait_for(client.stack.send_request(late, hop), 5)
    assert response.status == 481
    with pytest.raises(TimeoutError):
        await imp.wait_for("MESSAGE", timeout=0.1)


async def test_an_invite_that_is_no_im_session_gets_488(imp, client) -> None:  # type: ignore[no-untyped-def]
    hop = hop_to(imp, Transport.TCP)
    audio = SIPE_IM_OFFER.replace(b"m=message 5061 sip null", b"m=audio 5004 RTP/AVP 0")
    for body in (b"", audio):
        request = client.new_request(
            "INVITE", URI.parse("sip:bob@video.example.com"), hop, body=body,
            content_type="application/sdp" if body else None,
        )
        response = await asyncio.wait_for(client.stack.send_request(request, hop), 5)
        assert response.status == 488 and "IM" in response.reason
    assert not imp.sessions


def test_imp_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert imp_main(["--check-config", "lab/configs/imp.toml"]) == 0
    assert capsys.readouterr().out == "config OK: lab/configs/imp.toml\n"
    bad = tmp_path / "imp.toml"
    bad.write_text('listen = ["tcp:127.0.3.2"]\n')
    assert imp_main(["--check-config", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"config error: {bad}: listen")
    assert replace(ImpConfig(listen=("tcp:127.0.0.1:0",)), presence="closed").presence == "closed"
