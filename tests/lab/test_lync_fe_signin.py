"""The FE as a real client registrar: MS-SIPAE NTLM over TLS without client certificates,
signed answers, self-subscriptions, SERVICE and MRAS, and clients signing in again after the
FE restarts. Real TLS on loopback; the lab client plays the client as sipe does."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import replace

import pytest

from certs.pki import LabPKI
from lab.lync.client import LyncClient
from lab.lync.fe import FrontEnd
from lab.lync.sipae import auth_params
from lab.lync.topology import MicrosoftSide
from sip.headers import Address
from sip.message import Request
from sip.stack import Hop, SipStack
from sip.transport import Transport, TransportSettings
from sip.uri import URI

MRAS_REQUEST = (
    '<request requestID="7" from="sip:alice.parkes@example.com" version="1.0" to="{to}"'
    ' xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp">'
    '<credentialsRequest credentialsRequestID="7"><identity>sip:alice.parkes@example.com'
    "</identity><location>intranet</location><duration>480</duration>"
    "</credentialsRequest></request>")


async def test_first_register_gets_the_ntlm_challenge(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        client = await side.client("alice", video=False)
        # A second, unsigned REGISTER on a fresh connection: challenged, not served.
        stranger = await LyncClient.start(side.client_config("alice"), pki, register=False)
        try:
            request = stranger.agent.new_request(
                "REGISTER", URI("sip", host="example.com"), stranger.registrar,
                to=Address(stranger.agent.aor),
                headers=(("Contact", stranger.agent.contact(Transport.TLS)),))
            response = await stranger.agent.stack.send_request(request, stranger.registrar)
        finally:
            await stranger.close()
        assert client.registered
    assert response.status == 401
    scheme, params = auth_params(response.headers.get("WWW-Authenticate") or "")
    assert scheme == "NTLM"
    assert params == {"realm": "SIP Communications Service", "targetname": "fe.example.com",
                      "version": "4"}


async def test_sign_in_answer_carries_what_sipe_reads(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        client = await LyncClient.start(side.client_config("alice"), pki, register=False)
        try:
            response = await client.register()
            assert client.server_signatures == 1  # the 200's rspauth verified
            assert client.keep_alive == 300  # from ms-keep-alive: the CRLF ping interval
            assert response.headers.get("Expires") == "3600"
            assert "msrtc-event-categories" in response.headers.get_all("Supported")
            events = (response.headers.get("Allow-Events") or "").split(",")
            assert "vnd-microsoft-provisioning-v2" in events and " " not in "".join(events)
            assert "timeout=300" in (response.headers.get("ms-keep-alive") or "")
            assert response.headers.get("Server") == "RTC/6.0"
            contact = response.headers.get("Contact") or ""
            assert f"urn:uuid:{client.instance}" in contact and 'gruu="sip:' in contact
            # A tampered FE signature is caught.
            info = response.headers.get("Authentication-Info") or ""
            response.headers.set("Authentication-Info", info.replace('snum="', 'snum="9'))
            with pytest.raises(Exception, match="does not verify"):
                client._verify(response)
        finally:
            await client.close()


async def test_unauthenticated_connection_gets_407_not_service(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        client = await LyncClient.start(side.client_config("alice"), pki, register=False)
        try:
            call = await client.call("3001@video.example.com", video=False)
            with pytest.raises(Exception) as refused:
                await call.wait_connected()
        finally:
            await client.close()
        assert getattr(refused.value, "status", None) == 407


async def test_provisioning_tells_the_encryption_policy_and_mras(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        assert alice.server_configuration["ucPC2PCAVEncryption"] == "RequireEncryption"
        assert alice.server_configuration["mrasUri"] == side.fe.mras_uri
        assert ("alice.parkes@example.com", "vnd-microsoft-provisioning-v2") in \
            side.fe.notified
    fe_config = replace(side.fe.config, av_encryption="SupportEncryption")
    async with MicrosoftSide.run(pki, fe=fe_config, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        assert alice.server_configuration["ucPC2PCAVEncryption"] == "SupportEncryption"


async def _self_request(client: LyncClient, method: str, uri: str, *,
                        headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                        content_type: str | None = None) -> Request:
    request = client.agent.new_request(method, URI.parse(uri), client.registrar,
                                       to=Address(client.agent.aor), body=body,
                                       content_type=content_type, headers=headers)
    client._sign(request)
    return request


@pytest.mark.parametrize(("event", "content_type", "root"), [
    ("vnd-microsoft-roaming-contacts", "application/vnd-microsoft-roaming-contacts+xml",
     "<contactList"),
    ("vnd-microsoft-roaming-ACL", "application/vnd-microsoft-roaming-acls+xml", "<acl"),
    ("vnd-microsoft-roaming-self", "application/vnd-microsoft-roaming-self+xml",
     "<roamingData"),
    ("presence.wpending", "text/xml+msrtc.wpending", "<watchers"),
])
async def test_self_subscriptions_are_answered_by_the_fe(
        pki: LabPKI, event: str, content_type: str, root: str) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        # Piggybacked first notification (sipe's ms-piggyback-first-notify).
        request = await _self_request(alice, "SUBSCRIBE", "sip:alice.parkes@example.com",
                                      headers=(("Event", event),
                                               ("Supported", "ms-piggyback-first-notify")))
        response = await alice.agent.stack.send_request(request, alice.registrar)
        assert response.status == 200
        assert response.to.tag
        assert response.headers.get("Expires") == "3600"
        assert response.headers.get("ms-piggyback-cseq") == "1"
        assert response.content_type == content_type
        assert response.body.decode().startswith(root)
        alice._verify(response)
        # Without piggyback support: 200, then a signed NOTIFY with the body.
        notifies: asyncio.Queue[Request] = asyncio.Queue()

        def observe(sent, message, local, remote, data):  # type: ignore[no-untyped-def]
            if not sent and isinstance(message, Request) and message.method == "NOTIFY":
                notifies.put_nowait(message)

        alice.agent.stack.observer = observe
        request = await _self_request(alice, "SUBSCRIBE", "sip:alice.parkes@example.com",
                                      headers=(("Event", event),))
        response = await alice.agent.stack.send_request(request, alice.registrar)
        assert response.status == 200 and not response.body
        notify = await asyncio.wait_for(notifies.get(), 5)
        assert notify.headers.get("Event") == event
        assert notify.content_type == content_type
        assert notify.body.decode().startswith(root)
        assert notify.from_.tag == response.to.tag
        alice._verify(notify)
        assert alice.unsigned == []


async def test_service_and_mras_are_answered_by_the_fe(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        publish = await _self_request(alice, "SERVICE", "sip:alice.parkes@example.com",
                                      body=b"<publish/>", content_type="application/xml")
        response = await alice.agent.stack.send_request(publish, alice.registrar)
        assert response.status == 200
        alice._verify(response)
        mras = side.fe.mras_uri
        ask = await _self_request(alice, "SERVICE", mras,
                                  body=MRAS_REQUEST.format(to=mras).encode(),
                                  content_type="application/msrtc-media-relay-auth+xml")
        response = await alice.agent.stack.send_request(ask, alice.registrar)
        assert response.status == 200
        body = response.body.decode()
        assert 'reasonPhrase="OK"' in body and 'credentialsRequestID="7"' in body
        # Time-limited credentials made under the key the A/V Edge shares (no static account).
        username = re.search(r"<username>([^<]+)</username>", body)
        assert username is not None
        expiry, _, user = base64.b64decode(username.group(1)).partition(b":")
        assert user == b"alice.parkes@example.com" and int(expiry) > time.time()
        assert "<password>lab-turn</password>" not in body
        assert "<udpPort>3478</udpPort>" in body and "<tcpPort>443</tcpPort>" in body
        bad = await _self_request(alice, "SERVICE", mras, body=b"<nope/>",
                                  content_type="application/msrtc-media-relay-auth+xml")
        response = await alice.agent.stack.send_request(bad, alice.registrar)
        assert response.status == 400


async def test_bad_signature_is_refused(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        request = await _self_request(alice, "SERVICE", "sip:alice.parkes@example.com",
                                      body=b"<publish/>", content_type="application/xml")
        header = request.headers.get("Authorization") or ""
        request.headers.set("Authorization", header.replace('cnum="', 'cnum="7'))
        response = await alice.agent.stack.send_request(request, alice.registrar)
        assert response.status == 401


async def test_clients_sign_in_again_after_the_fe_restarts(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False, retry_min=0.2, retry_max=1.0)
        old = side.fe
        listen = old.listener
        await old.stop()
        config = replace(old.config, listen=replace(old.config.listen, port=listen.port))
        side.fe = await FrontEnd.start(config, pki)
        try:
            # The FE binds before alice has read the 200: wait for both.
            await _until(lambda: bool(side.fe.lookup("alice.parkes@example.com"))
                         and alice.reregistrations >= 1, "alice never came back")
            assert alice.registered
        finally:
            await side.fe.stop()
            side.fe = old


async def test_trusted_server_is_not_challenged(pki: LabPKI) -> None:
    """An OPTIONS from a trusted application (certificate name) is answered, not 401."""
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        stack = SipStack(transport_settings=TransportSettings(outbound_ports=None,
                                                              source_host="127.0.2.1"),
                         tls_client=pki.client_context("gateway"))
        try:
            from sip.useragent import UserAgent
            agent = UserAgent(stack, user="gateway", domain="video.example.com")
            fe = side.fe.listener
            hop = Hop(Transport.TLS, fe.host, fe.port, server_hostname="fe.example.com")
            info = await stack.transports.send(b"\r\n\r\n", hop.address,
                                               server_hostname="fe.example.com")
            agent_local = info.local

            class _Agent(UserAgent):
                def local_address(self, transport):  # type: ignore[no-untyped-def]
                    return agent_local

            agent.__class__ = _Agent
            request = agent.new_request("OPTIONS", URI("sip", host=fe.host, port=fe.port,
                                                       params=URI.parse("sip:x").params),
                                        hop)
            response = await stack.send_request(request, hop)
        finally:
            await stack.close()
        assert response.status == 200


async def _until(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)  # polling state the roles expose, bounded above


async def test_external_client_signs_in_through_the_edge(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki) as side:
        david = await side.client("david", video=False)
        sessions = [s for s in side.fe.signed_in.values()
                    if s.aor == "david.jones@example.com"]
        assert len(sessions) == 1 and sessions[0].remote
        assert sessions[0].connection_id is None  # found by opaque, not by connection
        assert david.server_configuration["ucPC2PCAVEncryption"] == "RequireEncryption"
        assert side.edge is not None and side.edge.turn_address is not None
        assert (side.fe.config.turn_host, side.fe.config.turn_udp_port) == \
            side.edge.turn_address  # what MRAS hands out is the running A/V Edge
        refreshed = await david.register()  # signed both ways through the Edge
        assert refreshed.headers.get("ms-user-logon-data") == "RemoteUser"
        assert david.server_signatures >= 3


async def test_client_signs_in_again_after_the_fe_drops_its_connection(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False, retry_min=0.2, retry_max=1.0)
        first = side.fe.lookup("alice.parkes@example.com")[-1]
        assert first.hop.connection_id is not None
        side.fe.stack.transports.close_connection(first.hop.connection_id)
        await _until(lambda: alice.reregistrations >= 1, "alice never signed in again")
        latest = side.fe.lookup("alice.parkes@example.com")[-1]
        assert latest.hop.connection_id != first.hop.connection_id
        assert latest.opaque != first.opaque  # a new security association
        # The device's old contact and association are gone, not left to linger.
        assert len(side.fe.lookup("alice.parkes@example.com")) == 1
        assert first.opaque not in side.fe.signed_in
        assert alice.registered


@pytest.mark.parametrize("user", ["alice", "david"])
async def test_unsigned_request_after_sign_in_is_refused(pki: LabPKI, user: str) -> None:
    """Signed in (directly, or through the Edge), every request must still be signed."""
    async with MicrosoftSide.run(pki) as side:
        client = await side.client(user, video=False)
        request = client.agent.new_request(
            "SERVICE", URI.parse(f"sip:{client.aor}"), client.registrar,
            to=Address(client.agent.aor), body=b"<publish/>", content_type="application/xml")
        assert request.headers.get("Authorization")  # the client signs by itself
        signed = await client.agent.stack.send_request(request, client.registrar)
        assert signed.status == 200
        unsigned = client.agent.new_request(
            "SERVICE", URI.parse(f"sip:{client.aor}"), client.registrar,
            to=Address(client.agent.aor), body=b"<publish/>", content_type="application/xml")
        unsigned.headers.remove("Authorization")
        response = await client.agent.stack.send_request(unsigned, client.registrar)
        assert response.status == 407
        assert (response.headers.get("Proxy-Authenticate") or "").startswith("NTLM ")


@pytest.mark.parametrize("with_edge", [False, True])
async def test_everything_the_fe_sends_a_signed_in_client_is_signed(
        pki: LabPKI, with_edge: bool) -> None:
    """A call between two signed-in clients (david through the Edge when it runs): every
    request and final response each receives carries a valid FE signature."""
    async with MicrosoftSide.run(pki, with_edge=with_edge) as side:
        alice = await side.client("alice", video=False)
        david = await side.client("david", video=False)
        call = await alice.call("david.jones@example.com", video=False)
        incoming = await asyncio.wait_for(david.incoming_calls.get(), 10)
        await call.wait_connected()
        await call.hold()
        await call.resume()
        await incoming.hangup()
        await asyncio.wait_for(call.ended.wait(), 5)
        assert alice.unsigned == [] and david.unsigned == []
        assert alice.server_signatures >= 6 and david.server_signatures >= 5
