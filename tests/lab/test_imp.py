"""The simulated IM&P node on loopback over TCP and TLS: MESSAGE, NOTIFY, PUBLISH (with a
SIP-ETag), INFO and OPTIONS get 200; SUBSCRIBE gets 200 with a To tag and Expires and then a
NOTIFY carrying PIDF (RFC 3863) in the new dialog; other methods 405; each is recorded for
`wait_for`; and the `gateway imp` config check."""

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
    request = client.new_request("INVITE", URI.parse("sip:bob@video.example.com"), hop)
    response = await asyncio.wait_for(client.stack.send_request(request, hop), 5)
    assert response.status == 405 and "MESSAGE" in (response.headers.get("Allow") or "")
    with pytest.raises(TimeoutError):
        await imp.wait_for("MESSAGE", timeout=0.1)


def test_imp_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert imp_main(["--check-config", "lab/configs/imp.toml"]) == 0
    assert capsys.readouterr().out == "config OK: lab/configs/imp.toml\n"
    bad = tmp_path / "imp.toml"
    bad.write_text('listen = ["tcp:127.0.3.2"]\n')
    assert imp_main(["--check-config", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"config error: {bad}: listen")
    assert replace(ImpConfig(listen=("tcp:127.0.0.1:0",)), presence="closed").presence == "closed"
