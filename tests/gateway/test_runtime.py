"""The B2BUA runtime over real loopback sockets and real (mutual) TLS.

The Microsoft side is played by :class:`FrontEnd`, a UA on ``sip.stack`` that speaks TLS
with the lab "fe" certificate from 127.0.1.1 and offers the multipart Lync SDP of
tests/data/sdp; the video side by the lab endpoint (``lab.endpoint``) behind the neighbor
zone. Each test gets its own ports (listeners, outbound range, media pool).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certs.pki import LabPKI
from gateway.config import loads
from gateway.runtime import Gateway, RuntimeOptions
from lab.endpoint import Endpoint, EndpointConfig, ListenSpec
from media.sdp import SessionDescription, parse_sdp
from sip.dialog import Dialog
from sip.message import Request, Response
from sip.stack import ClientRequest, Hop, SipStack
from sip.timers import TimerSettings
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.uri import URI
from sip.useragent import UserAgent, response_for
from tests.gateway.lab_routing import LAB_SEARCH_RULES, LAB_TRANSFORMS
from tests.peers.procs import random_free_port, random_free_udp_range

DATA = Path(__file__).resolve().parent.parent / "data" / "sdp"
GATEWAY_HOST = "127.0.2.1"
FE_HOST = "127.0.1.1"
GATEWAY_NAME = "lyncexp.video.example.com"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)
WAIT = 10.0


# -- ports -------------------------------------------------------------------------------


# -- SDP of the Microsoft side -------------------------------------------------------------


def lync_offer(*, encryption: str = "required") -> tuple[str, bytes]:
    """The Lync 2013 multipart A/V offer, its addresses moved to 127.0.1.1."""
    header, _, body = (DATA / "lync2013_av_offer.mime").read_text().partition("\n\n")
    content_type = header.partition(":")[2].strip()
    body = re.sub(r"\b(10\.0\.0\.21|198\.51\.100\.7)\b", FE_HOST, body)
    if encryption != "required":
        body = body.replace("a=encryption:required", f"a=encryption:{encryption}")
        if encryption == "rejected":
            body = re.sub(r"a=crypto(scale)?:[^\n]*\n", "", body).replace("RTP/SAVP", "RTP/AVP")
    return content_type, body.replace("\n", "\r\n").encode()


def lync_answer(offer: SessionDescription, direction: str | None = None) -> bytes:
    """What a Lync client answers to a gateway offer: SRTP (with MKI), ICE, our codecs."""
    lines = ["v=0", f"o=- 0 {random.randrange(1, 1000)} IN IP4 {FE_HOST}", "s=session",
             f"c=IN IP4 {FE_HOST}", "t=0 0"]
    for index, media in enumerate(offer.media):
        wanted = [c for c in media.codecs()
                  if c.name.upper() in ("PCMU", "PCMA", "G722", "X-H264UC", "TELEPHONE-EVENT")]
        if not media.port or not wanted:
            lines.append(f"m={media.kind} 0 {media.proto} {' '.join(media.formats)}")
            continue
        port = 41000 + 2 * index
        lines.append(f"m={media.kind} {port} RTP/SAVP "
                     + " ".join(str(c.payload_type) for c in wanted))
        lines += ["a=ice-ufrag:Fe01", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
                  f"a=candidate:1 1 UDP 2130706431 {FE_HOST} {port} typ host",
                  f"a=candidate:1 2 UDP 2130705918 {FE_HOST} {port + 1} typ host"]
        key = base64.b64encode(os.urandom(30)).decode()
        tag = (media.get_all("crypto") or ["1 x"])[0].split()[0]
        lines.append(f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
        lines.append(f"a=rtcp:{port + 1}")
        mirrored = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
        chosen = direction or mirrored.get(media.direction)
        if chosen:
            lines.append(f"a={chosen}")
        for codec in wanted:
            lines += [f"a={a}" for a in codec.attributes()]
        lines.append("a=encryption:required")
    return ("\r\n".join(lines) + "\r\n").encode()


# -- the Microsoft side ---------------------------------------------------------------------


@dataclass(eq=False)
class MsCall:
    """A call as the FE saw it."""

    dialog: Dialog
    invite: Request
    hop: Hop
    final: Response | None = None
    local_sdp: bytes = b""
    remote: SessionDescription | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    bye: Request | None = None


class FrontEnd(UserAgent):
    """The Lync FE (and its client) on the Microsoft side: TLS only, certificate "fe"."""

    def __init__(self, stack: SipStack) -> None:
        super().__init__(stack, user="alice.parkes", domain="example.com",
                         display_name="Alice Parkes")
        self.calls: dict[Any, MsCall] = {}
        self.incoming: asyncio.Queue[MsCall] = asyncio.Queue()
        self.received: list[Request] = []
        self.answer = True
        self.send_acks = True
        self.gateway: Hop | None = None

    @classmethod
    async def start(cls, pki: LabPKI, host: str = FE_HOST) -> FrontEnd:
        settings = TransportSettings(outbound_ports=None, source_host=host)
        stack = SipStack(timers=FAST, transport_settings=settings,
                         tls_client=pki.client_context("fe"))
        await stack.listen(Transport.TLS, host, 0, ssl=pki.server_context("fe"))
        return cls(stack)

    @property
    def port(self) -> int:
        listener = self.stack.listener(Transport.TLS)
        assert listener is not None
        return listener.port

    def handle_new_request(self, transaction: ServerTransaction, request: Request) -> None:
        self.received.append(request)
        if request.method != "INVITE":
            super().handle_new_request(transaction, request)
            return
        if not self.answer:
            return
        offer = parse_sdp(request.body)
        body = lync_answer(offer)
        ok = response_for(request, 200, to_tag="fe" + os.urandom(3).hex(),
                          contact=self.contact(Transport.TLS), body=body,
                          content_type="application/sdp")
        dialog = Dialog.create_uas(request, ok)
        hop = transaction.source
        self.dialogs.add(dialog, hop)
        call = MsCall(dialog, request, hop, ok, body, offer)
        self.calls[dialog.id] = call
        self.stack.send_response(transaction, ok)
        self.incoming.put_nowait(call)

    def handle_dialog_request(self, dialog: Dialog, transaction: ServerTransaction,
                              request: Request) -> None:
        self.received.append(request)
        call = self.calls.get(dialog.id)
        if request.method == "BYE":
            self.stack.respond(transaction, 200)
            if call is not None:
                call.bye = request
                call.ended.set()
            self.dialogs.remove(dialog.id)
            return
        if request.method == "INVITE" and call is not None:
            offer = parse_sdp(request.body)
            body = lync_answer(offer)
            call.remote = offer
            self.stack.send_response(transaction, response_for(
                request, 200, contact=self.contact(Transport.TLS), body=body,
                content_type="application/sdp"))
            return
        super().handle_dialog_request(dialog, transaction, request)

    def _on_stray_response(self, response: Response) -> None:
        if self.send_acks:  # else: a UA that never ACKs, not even retransmitted 2xx
            super()._on_stray_response(response)

    def dialog_hop(self, dialog: Dialog) -> Hop:
        # In-dialog requests and ACKs always go to the gateway over TLS.
        assert self.gateway is not None
        return Hop(Transport.TLS, self.gateway.host, self.gateway.port,
                   server_hostname=GATEWAY_NAME)

    def start_call(self, user: str, *, body: bytes | None = None, content_type: str | None = None,
                   headers: tuple[tuple[str, str], ...] = ()) -> ClientRequest:
        assert self.gateway is not None
        if body is None:
            content_type, body = lync_offer()
        uri = URI.parse(f"sip:{user};transport=tls")
        request = self.new_request("INVITE", uri, self.gateway, body=body,
                                   content_type=content_type)
        for name, value in headers:
            request.headers.set(name, value)
        return self.stack.start_request(request, self.gateway)

    async def call(self, user: str, **kwargs: Any) -> tuple[MsCall | None, Response]:
        """INVITE through the gateway; on 2xx the dialog is made and (unless told not to)
        ACKed."""
        pending = self.start_call(user, **kwargs)
        response = await asyncio.wait_for(pending.response(), WAIT)
        if not 200 <= response.status < 300:
            return None, response
        dialog = Dialog.create_uac(pending.request, response)
        assert self.gateway is not None
        self.dialogs.add(dialog, self.gateway)
        call = MsCall(dialog, pending.request, self.gateway, response, pending.request.body,
                      parse_sdp(response.body))
        self.calls[dialog.id] = call
        if self.send_acks:
            self.send_ack(dialog, pending.transaction)
        return call, response

    async def hangup(self, call: MsCall) -> Response:
        request, hop = self.dialog_request(call.dialog, "BYE")
        call.dialog.terminate()
        return await asyncio.wait_for(self.stack.send_request(request, hop), WAIT)

    async def reinvite(self, call: MsCall, direction: str) -> Response:
        """Re-offer the original offer with ``direction`` on every stream (hold/resume)."""
        content_type, body = lync_offer()
        sdp = body.replace(b"a=encryption:required", f"a={direction}\r\na=encryption:required"
                           .encode())
        request, hop = self.dialog_request(call.dialog, "INVITE", body=sdp,
                                           content_type=content_type)
        pending = self.stack.start_request(request, hop)
        response = await asyncio.wait_for(pending.response(), WAIT)
        if 200 <= response.status < 300:
            self.send_ack(call.dialog, pending.transaction)
        return response


# -- the lab ----------------------------------------------------------------------------------


def lab_toml(pki: LabPKI, *, endpoint_port: int, fe_port: int, max_calls: int = 10,
             media_ports: tuple[int, int] | None = None, encryption: str = "required",
             turn: tuple[str, int] | None = None, extra: str = "", zone_extra: str = "") -> str:
    ms_port = random_free_port(GATEWAY_HOST, socket.SOCK_STREAM)
    video_port = random_free_port(GATEWAY_HOST, socket.SOCK_STREAM, socket.SOCK_DGRAM)
    media = media_ports or random_free_udp_range(GATEWAY_HOST, 60)
    outbound = random.randrange(20000, 60000, 100)
    turn_line = ""
    if turn is not None:
        turn_line = (f'offer_turn = true\nturn_servers = [{{ address = "{turn[0]}", '
                     f'port = {turn[1]}, username = "GatewayB2BUA", password = "secret" }}]')
    return f"""
[system]
host_name = "exp01"
domain = "video.example.com"
cluster_fqdn = "{GATEWAY_NAME}"
certs = "{pki.directory}"
management = "127.0.0.1:9090"
outbound_ports = "{outbound}-{outbound + 99}"
drain_timeout = 5.0

[b2bua]
listen = "tls:{GATEWAY_HOST}:{ms_port}"
ms_destination = "tls:{FE_HOST}:{fe_port}"
encryption = "{encryption}"
max_calls = {max_calls}
media_ports = "{media[0]}-{media[1]}"
trusted_hosts = [{{ name = "fe01", address = "{FE_HOST}", type = "microsoft" }}]
{turn_line}

[video]
listen = ["udp:{GATEWAY_HOST}:{video_port}", "tcp:{GATEWAY_HOST}:{video_port}"]

[[zones]]
name = "CUCM Neighbor"
peers = ["127.0.3.1"]
port = {endpoint_port}
transport = "tcp"
monitor_interval = 0.5
{zone_extra}

{LAB_SEARCH_RULES}
{LAB_TRANSFORMS}{extra}
"""


@dataclass
class Lab:
    gateway: Gateway
    fe: FrontEnd
    endpoint: Endpoint
    endpoint_factory: Callable[..., Any]

    @property
    def video_hop(self) -> Hop:
        video = [a for a in self.gateway.config.video.listen if a.transport is Transport.TCP][0]
        return Hop(Transport.TCP, video.host, video.port)

    def status(self) -> dict[str, Any]:
        snapshot = self.gateway.status(asyncio.get_running_loop().time())
        return json.loads(json.dumps(snapshot.to_json()))


async def start_endpoint(pki: LabPKI, **overrides: Any) -> Endpoint:
    settings: dict[str, Any] = dict(aor="3001@video.example.com",
                                    listen=(ListenSpec(Transport.TCP, "127.0.3.1", 0),),
                                    certs=pki.directory, timers=FAST)
    settings.update(overrides)
    config = EndpointConfig(**settings)
    return await Endpoint.start(config)


def endpoint_port(endpoint: Endpoint) -> int:
    listener = endpoint.stack.listener(Transport.TCP)
    assert listener is not None
    return listener.port


@pytest.fixture
async def make_lab(pki: LabPKI) -> AsyncIterator[Callable[..., Any]]:
    made: list[Any] = []

    async def make(*, endpoint: dict[str, Any] | None = None, options: dict[str, Any] | None
                   = None, fe_host: str = FE_HOST, zone_port: int | None = None,
                   **config: Any) -> Lab:
        ep = await start_endpoint(pki, **(endpoint or {}))
        made.append(ep)
        fe = await FrontEnd.start(pki, fe_host)
        made.append(fe.stack)
        port = zone_port if zone_port is not None else endpoint_port(ep)
        text = lab_toml(pki, endpoint_port=port, fe_port=fe.port, **config)
        settings = dict(timers=FAST, pki=pki, management_port=0, ms_server_name="fe.example.com")
        settings.update(options or {})
        gateway = Gateway(loads(text), RuntimeOptions(**settings))
        await gateway.start()
        made.append(gateway)
        listen = gateway.config.b2bua.listen
        fe.gateway = Hop(Transport.TLS, listen.host, listen.port, server_hostname=GATEWAY_NAME)
        return Lab(gateway, fe, ep, lambda **kw: start_endpoint(pki, **kw))

    yield make
    for thing in reversed(made):
        await thing.close()


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait for a condition that a background task makes true (polled each loop turn)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


def only_call(endpoint: Endpoint) -> Any:
    assert len(endpoint.calls) == 1, endpoint.calls
    return next(iter(endpoint.calls.values()))


# -- tests -------------------------------------------------------------------------------------


async def test_microsoft_calls_video_with_multipart_sdp_and_hangs_up(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    # Microsoft gets a Microsoft SDP: SRTP, ICE credentials and host candidates at the gateway.
    answer = call.remote
    assert answer is not None
    audio = answer.media[0]
    assert audio.proto == "RTP/SAVP" and audio.get("ice-ufrag") and audio.get_all("crypto")
    assert any(GATEWAY_HOST in c for c in audio.get_all("candidate"))
    assert audio.get("encryption") == "required"
    # The endpoint got one plain SDP (it answers 400 to multipart), no Microsoft attributes.
    video_call = only_call(lab.endpoint)
    await asyncio.wait_for(video_call.confirmed.wait(), WAIT)
    offer = video_call.remote_sdp
    assert offer is not None
    text = str(offer)
    assert "multipart" not in text and "ice-ufrag" not in text and "x-ssrc-range" not in text
    assert "candidate" not in text and "crypto" not in text
    assert [m.kind for m in offer.media] == ["audio", "video"]
    assert {c.name for c in offer.media[1].codecs()} == {"H264"}
    assert offer.connection is not None and offer.connection.address == GATEWAY_HOST
    await wait_for(lambda: lab.gateway.calls and next(iter(lab.gateway.calls.values()))
                   .state.value == "connected", "call connected")
    status = lab.status()
    assert status["capacity"] == {"active": 1, "max": 10}
    (view,) = status["calls"]
    assert [leg["side"] for leg in view["legs"]] == ["microsoft", "video"]
    assert view["state"] == "connected"
    assert status["port_pool"]["in_use"] >= 8

    bye = await lab.fe.hangup(call)
    assert bye.status == 200
    await asyncio.wait_for(video_call.ended.wait(), WAIT)
    assert video_call.result == "completed (BYE from peer)"
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call gone, ports back")
    metrics = lab.gateway.metrics.render().decode()
    assert 'gateway_calls_total{result="completed"} 1.0' in metrics
    assert 'gateway_sip_messages_total{direction="received",method_or_status="INVITE"} 1.0' \
        in metrics


async def test_video_calls_microsoft_and_hangs_up(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    video_call = await asyncio.wait_for(lab.endpoint.invite(
        URI.parse("sip:alice.parkes@example.com"), lab.video_hop), WAIT)
    ms_call = await asyncio.wait_for(lab.fe.incoming.get(), WAIT)
    # Microsoft got the dialect: SRTP offer with ICE, X-H264UC; the FE's own Call-ID differs.
    offer = ms_call.remote
    assert offer is not None
    assert offer.media[0].proto == "RTP/SAVP" and offer.media[0].get("ice-pwd")
    assert any(c.name == "X-H264UC" for c in offer.media[1].codecs())
    assert ms_call.invite.call_id != video_call.call_id
    assert ms_call.invite.from_.uri.user == "3001"
    # The endpoint got a plain answer at the gateway's video address.
    answer = video_call.remote_sdp
    assert answer is not None and "crypto" not in str(answer) and "candidate" not in str(answer)
    assert answer.connection is not None and answer.connection.address == GATEWAY_HOST
    await asyncio.wait_for(lab.endpoint.hangup(video_call), WAIT)
    await asyncio.wait_for(ms_call.ended.wait(), WAIT)
    assert ms_call.bye is not None
    assert "BYE from the video side" in (ms_call.bye.headers.get("Reason") or "")
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "call gone")


async def test_hold_and_resume_from_each_side(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    call, _ = await lab.fe.call("3001@video.example.com")
    assert call is not None
    video_call = only_call(lab.endpoint)
    await asyncio.wait_for(video_call.confirmed.wait(), WAIT)
    await wait_for(lambda: next(iter(lab.gateway.calls.values())).state.value == "connected",
                   "connected")
    # Microsoft holds: the endpoint is asked sendonly and answers recvonly.
    held = await lab.fe.reinvite(call, "sendonly")
    assert held.status == 200
    assert video_call.remote_sdp is not None
    assert {m.direction for m in video_call.remote_sdp.media} == {"sendonly"}
    assert {m.direction for m in parse_sdp(held.body).media} == {"recvonly"}
    resumed = await lab.fe.reinvite(call, "sendrecv")
    assert resumed.status == 200
    assert {m.direction for m in video_call.remote_sdp.media} == {"sendrecv"}
    # The endpoint holds: Microsoft is asked sendonly.
    response = await asyncio.wait_for(lab.endpoint.reinvite(video_call, "sendonly"), WAIT)
    assert response.status == 200
    ms_call = next(iter(lab.fe.calls.values()))
    assert ms_call.remote is not None
    assert {m.direction for m in ms_call.remote.media if m.port} == {"sendonly"}
    assert {m.direction for m in parse_sdp(response.body).media if m.port} == {"recvonly"}
    response = await asyncio.wait_for(lab.endpoint.reinvite(video_call, "sendrecv"), WAIT)
    assert response.status == 200
    assert {m.direction for m in ms_call.remote.media if m.port} == {"sendrecv"}
    await asyncio.wait_for(lab.endpoint.hangup(video_call), WAIT)
    await asyncio.wait_for(call.ended.wait(), WAIT)


async def test_cancel_gives_487_on_both_legs(make_lab: Any) -> None:
    lab: Lab = await make_lab(endpoint={"auto_answer": False})
    ringing = asyncio.Event()
    pending = lab.fe.start_call("3001@video.example.com")
    pending.on_provisional = lambda r: ringing.set() if r.status == 180 else None
    await asyncio.wait_for(ringing.wait(), WAIT)
    video_call = only_call(lab.endpoint)
    pending.cancel()
    response = await asyncio.wait_for(pending.response(), WAIT)
    assert response.status == 487
    await asyncio.wait_for(video_call.ended.wait(), WAIT)
    assert video_call.result == "cancelled"
    await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                   "nothing left")
    assert 'gateway_calls_total{result="cancelled"} 1.0' in lab.gateway.metrics.render().decode()


async def test_untrusted_microsoft_host_gets_403_and_is_not_routed(make_lab: Any) -> None:
    lab: Lab = await make_lab(fe_host="127.0.1.9")
    _, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 403
    assert "127.0.1.9 is not a trusted host" in response.reason
    assert not lab.endpoint.calls and not lab.endpoint.finished
    assert lab.gateway.pool.ports_in_use == 0
    assert 'reason="untrusted_host"} 1.0' in lab.gateway.metrics.render().decode()


async def test_call_over_max_calls_gets_503_with_retry_after(make_lab: Any) -> None:
    lab: Lab = await make_lab(max_calls=2)
    for _ in range(2):
        call, response = await lab.fe.call("3001@video.example.com")
        assert response.status == 200
    in_use = lab.gateway.pool.ports_in_use
    _, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 503
    assert response.headers.get("Retry-After") == "60"
    assert "call limit of 2" in response.reason
    assert len(lab.endpoint.calls) == 2
    assert lab.gateway.pool.ports_in_use == in_use
    assert 'reason="max_calls"} 1.0' in lab.gateway.metrics.render().decode()


async def test_port_pool_exhausted_gets_503_and_keeps_nothing(make_lab: Any) -> None:
    lab: Lab = await make_lab(media_ports=random_free_udp_range(GATEWAY_HOST, 8))
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    _, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 503
    assert "Media port pool exhausted" in response.reason
    assert len(lab.gateway.calls) == 1 and lab.gateway.pool.ports_in_use == 8
    assert len(lab.endpoint.calls) == 1
    await lab.fe.hangup(call)
    await wait_for(lambda: lab.gateway.pool.ports_in_use == 0, "ports back")


async def test_no_rule_404_and_max_forwards_0_483(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    _, response = await lab.fe.call("9999@nowhere.example.org")
    assert response.status == 404
    assert "9999@nowhere.example.org" in response.reason
    _, response = await lab.fe.call("3001@video.example.com",
                                    headers=(("Max-Forwards", "0"),))
    assert response.status == 483
    assert not lab.endpoint.calls and lab.gateway.pool.ports_in_use == 0


async def test_encryption_mismatch_gets_488_with_the_reason(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    content_type, body = lync_offer(encryption="rejected")
    _, response = await lab.fe.call("3001@video.example.com", body=body,
                                    content_type=content_type)
    assert response.status == 488
    assert response.reason == "Encryption Levels not compatible"
    assert not lab.endpoint.calls and lab.gateway.pool.ports_in_use == 0
    assert 'reason="encryption_mismatch"} 1.0' in lab.gateway.metrics.render().decode()


async def test_zone_and_microsoft_side_status_follow_options(make_lab: Any) -> None:
    lab: Lab = await make_lab()

    def zone(name: str) -> dict[str, Any]:
        return next(z for z in lab.status()["zones"] if z["name"] == name)

    await wait_for(lambda: zone("CUCM Neighbor")["status"] == "Active", "zone Active")
    await wait_for(lambda: lab.status()["microsoft_side"]["status"] == "Alive", "FE alive")
    assert 'gateway_zone_up{zone="CUCM Neighbor"} 1.0' in lab.gateway.metrics.render().decode()
    await lab.endpoint.close()  # the neighbor stops answering
    await wait_for(lambda: not zone("CUCM Neighbor")["alive"], "zone failed")
    failed = zone("CUCM Neighbor")
    assert "127.0.3.1" in failed["status"] and failed["peers"][0]["alive"] is False
    assert 'gateway_zone_up{zone="CUCM Neighbor"} 0.0' in lab.gateway.metrics.render().decode()
    assert lab.status()["microsoft_side"]["alive"]


async def test_diagnostic_capture_records_the_call_signalling(make_lab: Any,
                                                              tmp_path: Path) -> None:
    lab: Lab = await make_lab(options={"diagnostics_dir": tmp_path})
    lab.gateway.diagnostics.start(1_700_000_000.0)
    call, _ = await lab.fe.call("3001@video.example.com")
    assert call is not None
    await lab.fe.hangup(call)
    await wait_for(lambda: not lab.gateway.calls, "call over")
    pcap = lab.gateway.diagnostics.stop(1_700_000_001.0)
    log = pcap.with_suffix(".log").read_text()
    # Both legs, both directions: INVITE in from Microsoft, INVITE out to the video side...
    assert re.search(r"RECEIVED TLS .* INVITE sip:3001@video.example.com", log)
    assert re.search(r"SENT TCP .* INVITE sip:3001@video.example.com", log)
    assert "SENT TLS" in log and "RECEIVED TCP" in log and "BYE" in log
    assert lab.gateway.diagnostics.messages >= 8
    assert pcap.stat().st_size > 24 + 16 * lab.gateway.diagnostics.messages
