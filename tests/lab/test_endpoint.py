"""The simulated endpoint against itself on loopback: calls over UDP, TCP and TLS (mutual and
server-only), CANCEL, hold by re-INVITE, BYE from either side, OPTIONS, 420, 483, SDP
answers (RFC 3264), RTP counting, and the `gateway endpoint` CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from certs.pki import LabPKI
from lab.endpoint import CallFailed, CallState, Endpoint, EndpointConfig, ListenSpec
from lab.endpoint import sdp as endpoint_sdp
from media.sdp import parse_sdp
from sip.message import Response
from sip.stack import Hop
from sip.timers import TimerSettings
from sip.transport import Transport
from sip.uri import URI, Params

CALLER_HOST = "127.0.3.41"
CALLEE_HOST = "127.0.3.42"
CERT_NAME = "endpoint.video.example.com"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)


def config(user: str, host: str, certs: Path, **overrides: object) -> EndpointConfig:
    base = EndpointConfig(
        aor=f"{user}@video.example.com",
        listen=(
            ListenSpec(Transport.UDP, host, 0),
            ListenSpec(Transport.TCP, host, 0),
            ListenSpec(Transport.TLS, host, 0),
        ),
        certs=certs,
        tls_server_name=CERT_NAME,
        timers=FAST,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


Factory = Callable[..., "asyncio.Future[Endpoint]"]


@pytest.fixture
async def endpoints(pki: LabPKI) -> AsyncIterator[Callable[..., object]]:
    started: list[Endpoint] = []

    async def make(user: str, host: str, **overrides: object) -> Endpoint:
        endpoint = await Endpoint.start(config(user, host, pki.directory, **overrides))
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        await endpoint.close()


async def pair(make: Callable[..., object], **callee: object) -> tuple[Endpoint, Endpoint]:
    caller = await make("3001", CALLER_HOST)  # type: ignore[misc]
    called = await make("3002", CALLEE_HOST, **callee)  # type: ignore[misc]
    return caller, called


def uri_of(endpoint: Endpoint, transport: Transport) -> URI:
    listener = endpoint.stack.listener(transport)
    assert listener is not None
    params = (
        Params() if transport is Transport.UDP else Params.of(transport=transport.value.lower())
    )
    return URI("sip", user=endpoint.user, host=listener.host, port=listener.port, params=params)


async def incoming(endpoint: Endpoint, call_id: str) -> object:
    calls = [c for c in endpoint.calls.values() if c.call_id == call_id]
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP, Transport.TLS])
async def test_call_over_each_transport(endpoints, transport: Transport) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await pair(endpoints)
    ringing: list[int] = []
    async with asyncio.timeout(10):
        call = await caller.invite(
            uri_of(callee, transport), on_provisional=lambda r: ringing.append(r.status)
        )
        answered = await incoming(callee, call.call_id)
        await answered.confirmed.wait()  # type: ignore[attr-defined]
        assert ringing == [180]
        assert call.state is CallState.CONFIRMED and call.transport is transport
        assert call.setup_ms is not None and call.setup_ms >= 0
        # The answer mirrors the offer: audio + video, plain RTP, codecs in common.
        answer = call.remote_sdp
        assert answer is not None
        assert [m.kind for m in answer.media] == ["audio", "video"]
        assert all(m.port > 0 and m.proto == "RTP/AVP" for m in answer.media)
        assert {c.name for c in answer.media[0].codecs()} == {
            "G722",
            "PCMU",
            "PCMA",
            "telephone-event",
        }
        assert [c.name for c in answer.media[1].codecs()] == ["H264"]
        if transport is Transport.TLS:
            (connection,) = [c for c in callee.stack.transports.connections() if not c.outbound]
            assert CERT_NAME in connection.peer_names  # mutual TLS: the caller showed its cert
        response = await caller.hangup(call)
        assert response is not None and response.status == 200
        await answered.ended.wait()  # type: ignore[attr-defined]
    assert answered.result == "completed (BYE from peer)"  # type: ignore[attr-defined]
    assert call.result == "completed"
    assert not caller.calls and not callee.calls and not callee.dialogs


async def test_tls_server_only_when_the_caller_has_no_certificate(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, client_cert=False)
    callee = await endpoints("3002", CALLEE_HOST)
    async with asyncio.timeout(10):
        call = await caller.invite(uri_of(callee, Transport.TLS))
        (connection,) = [c for c in callee.stack.transports.connections() if not c.outbound]
        assert connection.peer_names == ()
        assert (await caller.hangup(call)).status == 200  # type: ignore[union-attr]


async def test_tls_required_client_cert_refuses_a_caller_without_one(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, client_cert=False)
    callee = await endpoints("3002", CALLEE_HOST, require_client_cert=True)
    async with asyncio.timeout(10):
        with pytest.raises(CallFailed) as caught:
            await caller.invite(uri_of(callee, Transport.TLS))
    assert caught.value.status is None
    assert not callee.calls


async def test_bye_from_the_callee(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await pair(endpoints)
    for transport in (Transport.UDP, Transport.TLS):
        async with asyncio.timeout(10):
            call = await caller.invite(uri_of(callee, transport))
            answered = await incoming(callee, call.call_id)
            await answered.confirmed.wait()  # type: ignore[attr-defined]
            response = await callee.hangup(answered)  # type: ignore[arg-type]
            assert response is not None and response.status == 200
            await call.ended.wait()
        assert call.result == "completed (BYE from peer)"
    # Over TLS the BYE went back on the connection the caller opened: no new connection.
    assert all(not c.outbound for c in callee.stack.transports.connections())


async def test_cancel_before_answer_gets_487(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await pair(endpoints, auto_answer=False)
    ringing = asyncio.Event()
    outgoing = await caller.start_invite(
        uri_of(callee, Transport.TCP), on_provisional=lambda r: ringing.set()
    )
    async with asyncio.timeout(10):
        await ringing.wait()
        answered = await incoming(callee, outgoing.call.call_id)
        outgoing.request.cancel()
        with pytest.raises(CallFailed) as caught:
            await caller.complete_invite(outgoing)
        await answered.ended.wait()  # type: ignore[attr-defined]
    assert caught.value.status == 487
    assert answered.result == "cancelled"  # type: ignore[attr-defined]
    assert outgoing.call.state is CallState.ENDED
    assert not callee.calls and not callee.dialogs


async def test_reinvite_hold_is_mirrored(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await pair(endpoints)
    async with asyncio.timeout(10):
        call = await caller.invite(uri_of(callee, Transport.UDP))
        answered = await incoming(callee, call.call_id)
        await answered.confirmed.wait()  # type: ignore[attr-defined]
        ports_before = [m.port for m in answered.local_sdp.media]  # type: ignore[attr-defined]
        for ours, theirs in (
            ("sendonly", "recvonly"),
            ("inactive", "inactive"),
            ("sendrecv", "sendrecv"),
        ):
            response = await caller.reinvite(call, ours)
            assert response.status == 200
            assert answered.directions == (theirs, theirs)  # type: ignore[attr-defined]
            assert call.remote_sdp is not None
            assert [m.direction for m in call.remote_sdp.media] == [theirs, theirs]
            await answered.confirmed.wait()  # type: ignore[attr-defined]
        # Same ports, new o= version for each new description.
        assert [m.port for m in answered.local_sdp.media] == ports_before  # type: ignore[attr-defined]
        assert answered.local_sdp.origin.session_version == "3"  # type: ignore[attr-defined]
        assert (await caller.hangup(call)).status == 200  # type: ignore[union-attr]


async def test_options_420_483_and_481(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await pair(endpoints)
    hop = Hop.of(callee.stack.listener(Transport.UDP))  # type: ignore[arg-type]
    uri = uri_of(callee, Transport.UDP)

    async def send(method: str, **headers: str) -> Response:
        request = caller.new_request(method, uri, hop)
        for name, value in headers.items():
            request.headers.set(name.replace("_", "-"), value)
        return await caller.stack.send_request(request, hop)

    async with asyncio.timeout(10):
        ok = await send("OPTIONS")
        assert ok.status == 200 and "BYE" in (ok.headers.get("Allow") or "")
        refused = await send("INVITE", Require="100rel")
        assert refused.status == 420 and refused.headers.get("Unsupported") == "100rel"
        assert (await send("INVITE", Max_Forwards="0")).status == 483
        assert (await send("BYE", To="<sip:3002@video.example.com>;tag=gone")).status == 481
    assert not callee.calls


async def test_multipart_offer_is_refused_like_a_standard_endpoint(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller, callee = await pair(endpoints)
    hop = Hop.of(callee.stack.listener(Transport.UDP))  # type: ignore[arg-type]
    request = caller.new_request(
        "INVITE",
        uri_of(callee, Transport.UDP),
        hop,
        body=b"--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b--\r\n",
        content_type="multipart/alternative;boundary=b",
    )
    async with asyncio.timeout(10):
        response = await caller.stack.send_request(request, hop)
    assert (response.status, response.reason) == (400, "Unable to decode SDP")


async def test_rtp_to_the_answered_port_is_counted(endpoints) -> None:  # type: ignore[no-untyped-def]
    # A caller that sends no media of its own, so the only packet is the one sent here.
    caller = await endpoints("3001", CALLER_HOST, send_media=False)
    callee = await endpoints("3002", CALLEE_HOST)
    async with asyncio.timeout(10):
        call = await caller.invite(uri_of(callee, Transport.UDP))
        answered = await incoming(callee, call.call_id)
        audio = call.remote_sdp.media[0]  # type: ignore[union-attr]
        port = answered.media[0]  # type: ignore[attr-defined]
        assert port.port == audio.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"\x80\x00\x00\x01" + bytes(168), (CALLEE_HOST, audio.port))
        await port.received.wait()
        assert answered.rtp_packets == 1  # type: ignore[attr-defined]
        await caller.hangup(call)
    assert port.closed  # media ports are released with the call


def test_answer_refuses_what_it_cannot_take_with_port_zero() -> None:
    """RFC 3264 §6: one m= per offered m=, refused ones with port 0."""
    offer = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
        "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
        "m=audio 4002 RTP/AVP 18 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n"
        "m=video 4004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
        "m=application 4006 UDP/BFCP *\r\n"
        "m=video 4008 RTP/AVP 34\r\n"
    )
    outcomes = [endpoint_sdp.negotiate(m, offer) for m in offer.media]
    assert [o.accepted for o in outcomes] == [False, True, True, False, False]
    answer = endpoint_sdp.answer(
        offer, outcomes, [None, 5002, 5004, None, None], "127.0.0.8", session_id=7, version=0
    )
    again = parse_sdp(bytes(answer))
    assert [(m.kind, m.port) for m in again.media] == [
        ("audio", 0),
        ("audio", 5002),
        ("video", 5004),
        ("application", 0),
        ("video", 0),
    ]
    assert again.media[1].formats == ("0", "101")  # G.729 dropped, offer's order kept
    assert again.media[1].direction == "recvonly"  # hold mirrored
    assert again.media[2].codecs()[0].fmtp == "packetization-mode=1"
    assert again.media[3].formats == ("*",)


def test_telephone_event_alone_is_refused() -> None:
    offer = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nt=0 0\r\n"
        "m=audio 4002 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    assert not endpoint_sdp.negotiate(offer.media[0], offer).accepted


def test_listen_spec_parsing() -> None:
    assert ListenSpec.parse("tls:[::1]:5061") == ListenSpec(Transport.TLS, "::1", 5061)
    assert str(ListenSpec.parse("UDP:127.0.0.1:0")) == "udp:127.0.0.1:0"
    for bad in ("udp:127.0.0.1", "sctp:127.0.0.1:5060", "tcp::5060", "tcp:h:99999"):
        with pytest.raises(ValueError):
            ListenSpec.parse(bad)
    with pytest.raises(ValueError, match="--certs"):
        EndpointConfig(aor="3001@video.example.com", listen=(ListenSpec.parse("tls:h:1"),))


# -- the CLI ---------------------------------------------------------------------------------


async def read_until(stream: asyncio.StreamReader, marker: bytes) -> list[bytes]:
    lines = []
    while True:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}: {b''.join(lines)!r}")
        lines.append(line)
        if marker in line:
            return lines


async def gateway(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_cli_answers_and_calls(pki: LabPKI) -> None:
    server = await gateway(
        "endpoint",
        "--listen",
        f"udp:{CALLEE_HOST}:0",
        "--listen",
        f"tls:{CALLEE_HOST}:0",
        "--certs",
        str(pki.directory),
        "--aor",
        "3002@video.example.com",
    )
    try:
        assert server.stderr is not None
        async with asyncio.timeout(20):
            lines = await read_until(server.stderr, b"endpoint ready")
        listening = [
            line.decode().rsplit("listening on ", 1)[1].strip()
            for line in lines
            if b"listening on" in line
        ]
        ports = {spec.split(":")[0]: spec.rsplit(":", 1)[1] for spec in listening}
        assert set(ports) == {"udp", "tls"}
        for target in (
            f"sip:3002@{CALLEE_HOST}:{ports['udp']}",
            f"sip:3002@{CALLEE_HOST}:{ports['tls']};transport=tls",
        ):
            client = await gateway(
                "endpoint",
                "--listen",
                f"udp:{CALLER_HOST}:0",
                "--certs",
                str(pki.directory),
                "--tls-name",
                CERT_NAME,
                "--call",
                target,
                "--duration",
                "0.1",
            )
            async with asyncio.timeout(20):
                out, err = await client.communicate()
            assert client.returncode == 0, err.decode()
            assert b"completed" in out
    finally:
        server.terminate()
        async with asyncio.timeout(10):
            await server.wait()
    assert server.returncode == 0


async def test_cli_call_failure_exits_non_zero() -> None:
    with socket.socket() as probe:
        probe.bind((CALLER_HOST, 0))
        port = probe.getsockname()[1]
    client = await gateway(
        "endpoint",
        "--listen",
        f"udp:{CALLER_HOST}:0",
        "--t1",
        "0.01",
        "--call",
        f"sip:3002@{CALLEE_HOST}:{port};transport=tcp",
    )
    async with asyncio.timeout(20):
        _, err = await client.communicate()
    assert client.returncode == 1
    assert b"call failed" in err


async def test_cli_rejects_bad_arguments() -> None:
    client = await gateway("endpoint", "--listen", "udp:nowhere", "--call", "sip:x@127.0.0.1")
    async with asyncio.timeout(20):
        _, err = await client.communicate()
    assert client.returncode == 2
    assert b"has no port" in err
