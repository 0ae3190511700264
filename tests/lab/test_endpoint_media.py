"""The endpoint's real media on loopback: RTP both ways after the call connects (PCMU,
G.722, H.264), SDES-SRTP (RFC 4568), delayed offer (offer in the 2xx, answer in the ACK),
symmetric RTP and latching against a relay, hold stopping our media, video added by
re-INVITE, and the RTP packets themselves (RFC 3550 headers, sequence and timestamps)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from lab.api import CallHandle
from lab.endpoint import Endpoint, EndpointConfig, ListenSpec
from lab.endpoint.rtp import MediaKind, RtpError, RtpSource, parse_header
from media.sdp import parse_sdp
from sip.dialog import Dialog
from sip.timers import TimerSettings
from sip.transport import Transport
from sip.uri import URI

CALLER_HOST = "127.0.3.51"
CALLEE_HOST = "127.0.3.52"
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2)


def config(user: str, host: str, **overrides: Any) -> EndpointConfig:
    base = EndpointConfig(
        aor=f"{user}@video.example.com",
        listen=(ListenSpec(Transport.UDP, host, 0), ListenSpec(Transport.TCP, host, 0)),
        timers=FAST,
    )
    return replace(base, **overrides)


@pytest.fixture
async def endpoints() -> AsyncIterator[Callable[..., Any]]:
    started: list[Endpoint] = []

    async def make(user: str, host: str, **overrides: Any) -> Endpoint:
        endpoint = await Endpoint.start(config(user, host, **overrides))
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        await endpoint.close()


def target(endpoint: Endpoint, transport: Transport = Transport.UDP) -> str:
    listener = endpoint.stack.listener(transport)
    assert listener is not None
    suffix = "" if transport is Transport.UDP else f";transport={transport.value.lower()}"
    return f"sip:{endpoint.user}@{listener.host}:{listener.port}{suffix}"


async def connected(caller: Endpoint, callee: Endpoint, **kwargs: Any) -> tuple[Any, Any]:
    call = await caller.call(target(callee, kwargs.pop("transport", Transport.UDP)), **kwargs)
    answered = await callee.next_call(timeout=5)
    await call.wait_connected(timeout=5)
    return call, answered


# -- the packets ------------------------------------------------------------------------------


def test_rtp_source_numbers_and_times_packets() -> None:
    audio = RtpSource(MediaKind.AUDIO, 9, "G722", ssrc=0x01020304)
    first, second = parse_header(audio.next_packet()), parse_header(audio.next_packet())
    assert (first.payload_type, first.ssrc, first.marker) == (9, 0x01020304, True)
    assert second.sequence == (first.sequence + 1) & 0xFFFF
    assert second.timestamp == (first.timestamp + 160) & 0xFFFFFFFF  # RFC 3551 §4.5.2
    assert not second.marker
    assert audio.interval == pytest.approx(0.020)
    video = RtpSource(MediaKind.VIDEO, 97, "H264", keyframe_every=2)
    idr, slice_ = video.next_packet(), video.next_packet()
    assert parse_header(idr).marker and parse_header(slice_).marker  # one packet per frame
    assert (idr[12] & 0x1F, slice_[12] & 0x1F) == (5, 1)  # IDR, then a non-IDR slice
    assert parse_header(slice_).timestamp - parse_header(idr).timestamp == 3000  # 90 kHz/30
    pcmu = RtpSource(MediaKind.AUDIO, 0, "PCMU").next_packet()
    assert len(pcmu) == 12 + 160 and pcmu[12:] == b"\xff" * 160


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80\x00", b"\x40" + bytes(15), b"\x80\xc8" + bytes(26), b"\x8f\x00" + bytes(20)],
)
def test_parse_header_refuses_what_is_not_rtp(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_header(data)


# -- calls --------------------------------------------------------------------------------------


async def test_call_carries_rtp_both_ways_audio_and_video(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST)
    callee = await endpoints("3002", CALLEE_HOST)
    call, answered = await connected(caller, callee)
    handles: tuple[CallHandle, CallHandle] = (call, answered)  # the lab API, checked by mypy
    assert all(handle.call_id == call.call_id for handle in handles)
    report = await call.wait_media(both_ways=True, min_packets=20, timeout=5)
    back = await answered.wait_media(both_ways=True, min_packets=20, timeout=5)
    assert set(report.streams) == {"audio", "video"} == set(back.streams)
    assert call.state == "media" and answered.state == "media"
    # G.722 was preferred; H.264 uses the offered dynamic payload type.
    ports = call.call.media
    assert ports[0].rtp_source.codec == "g722" and ports[0].rtp_source.payload_type == 9
    assert ports[1].rtp_source.payload_type == 97
    await call.hangup()
    assert call.state == "ended"
    await asyncio.wait_for(answered.call.ended.wait(), 5)
    assert answered.state == "ended"


async def test_pcmu_only_caller_gets_pcmu(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, audio_codecs=("PCMU",), video=False)
    callee = await endpoints("3002", CALLEE_HOST)
    call, answered = await connected(caller, callee)
    await answered.wait_media(min_packets=10, timeout=5)
    assert answered.call.media[0].rtp_source.codec == "pcmu"
    assert answered.call.media[0].rtp_source.payload_type == 0
    assert len(answered.call.media) == 1
    await call.hangup()


async def test_sdes_srtp_call(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, srtp=True)
    callee = await endpoints("3002", CALLEE_HOST, srtp=True)
    call, answered = await connected(caller, callee)
    offer = call.call.local_sdp
    assert [m.proto for m in offer.media] == ["RTP/SAVP", "RTP/SAVP"]
    assert all(m.get_all("crypto") for m in answered.call.local_sdp.media)
    await call.wait_media(min_packets=15, timeout=5)
    await answered.wait_media(min_packets=15, timeout=5)
    ports = call.call.media + answered.call.media
    assert all(port.encrypted for port in ports)
    assert sum(port.rejected for port in ports) == 0
    await call.hangup()


async def test_srtp_packets_with_a_wrong_key_are_not_counted(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, srtp=True, send_media=False, video=False)
    callee = await endpoints("3002", CALLEE_HOST, srtp=True, video=False)
    call, answered = await connected(caller, callee)
    port = answered.call.media[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
        for _ in range(5):
            forger.sendto(RtpSource(MediaKind.AUDIO, 9, "G722").next_packet() + bytes(10),
                          (CALLEE_HOST, port.port))
        while port.rejected < 5:
            port.changed.clear()
            await asyncio.wait_for(port.changed.wait(), 5)
    assert port.packets == 0
    await call.hangup()


async def test_plain_caller_to_srtp_callee_stays_plain(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST)
    callee = await endpoints("3002", CALLEE_HOST, srtp=True)
    call, answered = await connected(caller, callee)
    assert [m.proto for m in answered.call.local_sdp.media] == ["RTP/AVP", "RTP/AVP"]
    await call.wait_media(min_packets=10, timeout=5)
    assert not any(port.encrypted for port in call.call.media)
    await call.hangup()


async def test_srtp_offer_to_a_plain_endpoint_is_refused_488(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, srtp=True)
    callee = await endpoints("3002", CALLEE_HOST)
    call = await caller.call(target(callee))
    with pytest.raises(Exception, match="488"):
        await call.wait_connected(timeout=5)
    assert call.state == "ended"


async def test_delayed_offer_offer_in_2xx_answer_in_ack(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, delayed_offer=True)
    callee = await endpoints("3002", CALLEE_HOST)
    seen: list[bytes] = []
    original = caller.stack.start_request

    def spy(request: Any, hop: Any, **kwargs: Any) -> Any:
        if request.method == "INVITE":
            seen.append(request.body)
        return original(request, hop, **kwargs)

    caller.stack.start_request = spy  # type: ignore[method-assign]
    call, answered = await connected(caller, callee)
    assert seen == [b""]  # the INVITE had no SDP
    await asyncio.wait_for(answered.call.confirmed.wait(), 5)
    # The callee offered in its 2xx and got our answer in the ACK.
    assert answered.call.remote_sdp is not None
    assert answered.call.remote_sdp.origin.session_id == str(call.call.session_id)
    await call.wait_media(min_packets=15, timeout=5)
    await answered.wait_media(min_packets=15, timeout=5)
    await call.hangup()


async def test_hold_stops_our_media_and_resume_restarts_it(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST, video=False)
    callee = await endpoints("3002", CALLEE_HOST)
    call, answered = await connected(caller, callee)
    await answered.wait_media(min_packets=5, timeout=5)
    await call.hold()
    assert answered.call.directions == ("recvonly",)
    # We still send (sendonly) but the callee, now recvonly, stops sending to us.
    assert call.call.media[0].sending and not answered.call.media[0].sending
    await call.resume()
    assert answered.call.media[0].sending
    before = call.media().packets_received
    await call.wait_media(min_packets=before + 5, timeout=5)
    await call.hangup()


async def test_add_video_by_reinvite(endpoints) -> None:  # type: ignore[no-untyped-def]
    caller = await endpoints("3001", CALLER_HOST)
    callee = await endpoints("3002", CALLEE_HOST)
    call = await caller.call(target(callee), video=False)
    answered = await callee.next_call(timeout=5)
    await call.wait_connected(timeout=5)
    assert len(call.call.local_sdp.media) == 1
    await call.add_video()
    assert [m.kind for m in answered.call.local_sdp.media] == ["audio", "video"]
    report = await call.wait_media(min_packets=30, timeout=5)
    while "video" not in report.streams:
        report = await call.wait_media(min_packets=report.packets_received + 1, timeout=5)
    assert "video" in answered.media().streams or answered.call.media[1].sent
    await call.hangup()


async def test_symmetric_rtp_and_latching_to_a_relay(endpoints) -> None:  # type: ignore[no-untyped-def]
    """What the gateway's latching needs: our RTP comes from the port in our SDP; and a
    relay that sends from another port than its SDP names gets our media at that port."""
    callee = await endpoints("3002", CALLEE_HOST, video=False)
    loop = asyncio.get_running_loop()
    advertised = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    actual = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    advertised.bind(("127.0.3.53", 0))
    actual.bind(("127.0.3.53", 0))
    actual.setblocking(False)
    advertised.setblocking(False)
    try:
        relay_sdp = (
            "v=0\r\no=- 5 1 IN IP4 127.0.3.53\r\ns=-\r\nc=IN IP4 127.0.3.53\r\nt=0 0\r\n"
            f"m=audio {advertised.getsockname()[1]} RTP/AVP 0\r\n"
        ).encode()
        relay = await Endpoint.start(config("9999", "127.0.3.53", send_media=False))
        try:
            uri = URI.parse(target(callee))
            hop = relay.hop_for(uri)
            request = relay.new_request(
                "INVITE", uri, hop, body=relay_sdp, content_type="application/sdp"
            )
            pending = relay.stack.start_request(request, hop)
            ok = await asyncio.wait_for(pending.final, 5)
            assert ok.status == 200
            dialog = relay.dialogs.add(Dialog.create_uac(request, ok), hop)
            relay.send_ack(dialog, pending.transaction)
            endpoint_port = parse_sdp(ok.body).media[0].port
            # Before the relay sends anything, the callee sends to the SDP address.
            data, source = await asyncio.wait_for(loop.sock_recvfrom(advertised, 2048), 5)
            assert source == (CALLEE_HOST, endpoint_port)  # symmetric: from its SDP port
            assert parse_header(data).payload_type == 0
            # The relay now sends from another port: the callee latches onto it.
            packet = RtpSource(MediaKind.AUDIO, 0, "PCMU").next_packet()
            await loop.sock_sendto(actual, packet, (CALLEE_HOST, endpoint_port))
            data, source = await asyncio.wait_for(loop.sock_recvfrom(actual, 2048), 5)
            assert source == (CALLEE_HOST, endpoint_port)
            answered = await callee.next_call(timeout=1)
            assert answered.call.media[0].latched
        finally:
            await relay.close()
    finally:
        advertised.close()
        actual.close()
