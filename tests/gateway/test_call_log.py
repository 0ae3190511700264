"""gateway.call_log: which messages make a call, the bounds, the per-call pcap (sans-IO)."""

from __future__ import annotations

import struct

import pytest

from gateway.call_log import CallLog, CallLogSettings
from gateway.status import LegSide
from sip.message import parse_message

MS, VIDEO = LegSide.MICROSOFT, LegSide.VIDEO
FE, GW_MS, GW_VIDEO, CUCM = ("127.0.1.1", 5061), ("127.0.2.1", 65072), ("127.0.2.1", 5061), \
    ("127.0.3.1", 5061)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.1.1\r\ns=-\r\nc=IN IP4 127.0.1.1\r\nt=0 0\r\n" \
      b"m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"


def message(first: str, call_id: str, cseq: str = "1 INVITE", *, to_tag: str = "",
            body: bytes = b"") -> bytes:
    lines = [first, "Via: SIP/2.0/TLS 127.0.0.9:5061;branch=z9hG4bK-1",
             'From: "Alice" <sip:alice@example.com>;tag=a1',
             f"To: <sip:3001@video.example.com>{';tag=' + to_tag if to_tag else ''}",
             f"Call-ID: {call_id}", f"CSeq: {cseq}", "Max-Forwards: 70"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def feed(log: CallLog, side: LegSide, sent: bool, data: bytes, now: float) -> None:
    local, remote = (GW_MS, FE) if side is MS else (GW_VIDEO, CUCM)
    log.sip(side, sent, parse_message(data), "TLS", local, remote, data, now)


def one_call(log: CallLog, n: int, now: float) -> None:
    inbound, outbound = f"in-{n}", f"out-{n}"
    feed(log, MS, False, message("INVITE sip:3001@video.example.com SIP/2.0", inbound,
                                 body=SDP), now)
    feed(log, VIDEO, True, message("INVITE sip:3001@127.0.3.1 SIP/2.0", outbound,
                                   body=SDP), now + 0.01)
    feed(log, VIDEO, False, message("SIP/2.0 200 OK", outbound, to_tag="b", body=SDP),
         now + 0.02)
    feed(log, MS, True, message("SIP/2.0 200 OK", inbound, to_tag="g", body=SDP), now + 0.03)


def test_a_call_is_its_two_legs_and_nothing_else() -> None:
    log = CallLog(resolve=lambda leg: ("in-1", None) if leg == "out-1" else None)
    feed(log, VIDEO, True, message("OPTIONS sip:127.0.3.1 SIP/2.0", "ping", "1 OPTIONS"), 1.0)
    one_call(log, 1, 10.0)
    feed(log, VIDEO, False, message("SIP/2.0 200 OK", "ping", "1 OPTIONS", to_tag="x"), 11.0)
    assert list(log.records) == ["in-1"]
    record = log.records["in-1"]
    assert [(m.side, m.sent, m.label) for m in record.messages] == [
        (MS, False, "INVITE"), (VIDEO, True, "INVITE"), (VIDEO, False, "200 OK"),
        (MS, True, "200 OK")]
    assert record.leg_ids == {"in-1", "out-1"}
    assert record.from_.startswith('"Alice" <sip:alice@example.com>')
    sdp = record.sdp(record.messages[0])
    assert sdp is not None and "m=audio 5004" in sdp
    assert record.sdp(record.messages[2]) is not None


def test_messages_per_call_and_calls_are_bounded_oldest_first() -> None:
    active = {"in-3"}
    log = CallLog(CallLogSettings(calls=2, messages=3),
                  resolve=lambda leg: (leg.replace("out", "in"), None))
    log.is_active = lambda call_id: call_id in active
    for n in range(1, 4):
        one_call(log, n, float(n))
    assert list(log.records) == ["in-2", "in-3"]  # in-1 dropped first
    record = log.records["in-3"]
    assert [m.label for m in record.messages] == ["INVITE", "200 OK", "200 OK"]
    assert record.messages_dropped == 1
    # An active call outlives a newer ended one when something has to go.
    active = {"in-2"}
    one_call(log, 4, 4.0)
    assert list(log.records) == ["in-2", "in-4"]
    assert "out-1" not in log._by_leg and "out-3" not in log._by_leg


def test_refusal_is_the_final_answer_to_the_first_invite() -> None:
    log = CallLog()
    feed(log, VIDEO, False, message("INVITE sip:9999@video.example.com SIP/2.0", "r1"), 1.0)
    feed(log, VIDEO, True, message("SIP/2.0 100 Trying", "r1"), 1.0)
    feed(log, VIDEO, True, message("SIP/2.0 404 Not Found", "r1", to_tag="t"), 1.1)
    final = log.records["r1"].final_answer()
    assert final is not None and final.label == "404 Not Found"


def test_pcap_holds_the_call_in_time_order() -> None:
    log = CallLog(resolve=lambda leg: ("in-1", None))
    one_call(log, 1, 1_700_000_000.0)
    data = log.pcap("in-1")
    assert data is not None and log.pcap("nope") is None
    magic, = struct.unpack_from("<I", data)
    assert magic == 0xA1B2C3D4
    offset, stamps, payloads = 24, [], []
    while offset < len(data):
        seconds, micros, length, _ = struct.unpack_from("<IIII", data, offset)
        stamps.append(seconds + micros / 1e6)
        payloads.append(data[offset + 16 + 28:offset + 16 + length])  # after IPv4 + UDP
        offset += 16 + length
    assert stamps == sorted(stamps) and len(stamps) == 4
    assert payloads[0].startswith(b"INVITE sip:3001@video.example.com")


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        CallLogSettings(calls=0)
    with pytest.raises(ValueError):
        CallLogSettings(messages=0)


def test_the_bounds_are_system_settings() -> None:
    from gateway.config import ConfigError, loads

    config = loads("[system]\nmanagement_recent_calls = 5\nmanagement_call_messages = 7\n")
    assert (config.system.management_recent_calls, config.system.management_call_messages,
            config.system.management_call_packets) == (5, 7, 300)
    with pytest.raises(ConfigError, match="management_call_messages"):
        loads("[system]\nmanagement_call_messages = 0\n")


def test_a_leg_claimed_later_joins_its_call_in_order() -> None:
    """A transfer's new leg belongs to the call only once the transfer is done."""
    claimed: set[str] = set()
    log = CallLog(resolve=lambda leg: ("in-1", None) if leg in claimed or leg == "out-1"
                  else None)
    one_call(log, 1, 1.0)
    feed(log, VIDEO, True, message("INVITE sip:3002@127.0.3.1 SIP/2.0", "xfer"), 2.0)
    feed(log, VIDEO, False, message("SIP/2.0 200 OK", "xfer", to_tag="c", body=SDP), 2.1)
    feed(log, MS, True, message("INVITE sip:alice@127.0.1.1 SIP/2.0", "in-1", "2 INVITE",
                                to_tag="a1"), 2.2)
    assert [m.leg_call_id for m in log.records["in-1"].messages].count("xfer") == 0
    claimed.add("xfer")
    feed(log, VIDEO, True, message("ACK sip:3002@127.0.3.1 SIP/2.0", "xfer", "1 ACK",
                                   to_tag="c"), 2.3)
    record = log.records["in-1"]
    assert [(m.leg_call_id, m.label) for m in record.messages][-4:] == [
        ("xfer", "INVITE"), ("xfer", "200 OK"), ("in-1", "INVITE"), ("xfer", "ACK")]
    assert "xfer" in record.leg_ids and not log._pending


async def test_the_media_tap_records_then_leaves_the_packet_path() -> None:
    """Real legs on loopback: the first packets go in the pcap (received and sent), then the
    tap unhooks itself, so a long call costs the relay nothing once the capture is full."""
    import asyncio
    import socket
    from types import SimpleNamespace

    from media.ice_leg import IceLeg, IceSettings
    from media.rtp_leg import RtpLeg

    log = CallLog(CallLogSettings(packets=3))
    feed(log, MS, False, message("INVITE sip:3001@video.example.com SIP/2.0", "c1"), 1.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1] & ~1
    video = RtpLeg("127.0.0.1", port)
    try:
        await video.open()
    except OSError:
        pytest.skip("the probed port pair was taken meanwhile")
    ice = IceLeg("127.0.0.1", port + 2, IceSettings(), ufrag="abcd", pwd="p" * 22)
    received: list[bytes] = []
    relay = received.append

    def on_media(data: bytes, component: int) -> None:
        relay(data)

    video.on_media = on_media
    ice.on_media = on_media
    log.tap("c1", SimpleNamespace(streams=[SimpleNamespace(kind="audio", ice=ice,
                                                           video=video)]))  # type: ignore[arg-type]
    assert video.on_media is not on_media and "send" in vars(video)
    endpoint = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        endpoint.bind(("127.0.0.1", 0))
        # the endpoint's SDP address is known (strict latching takes media only from there)
        video.set_remote(endpoint.getsockname(), None)
        for n in range(6):
            endpoint.sendto(bytes([0x80, 0, 0, n]) + bytes(8), ("127.0.0.1", port))
        async with asyncio.timeout(10):
            while len(received) < 6:
                await asyncio.sleep(0.01)
        record = log.records["c1"]
        assert len(record.packets) == 3
        assert record.packets[0].src == endpoint.getsockname()
        assert video.on_media is on_media  # unhooked: capture full, first packet noted
        assert video.send(b"\x80" + bytes(11), 1) and video.send(b"\x80" + bytes(11), 1)
        assert "send" not in vars(video)  # the leg's own method again
        notes = [n.text for n in record.notes]
        assert any("first packet from the video side" in n for n in notes)
        assert any("first packet to the video side" in n for n in notes)
    finally:
        endpoint.close()
        await video.aclose()
        await ice.close()


async def test_the_media_timeline_notes_an_ice_pair_upgrade() -> None:
    """The gateway's leg completes on its relay while its host path is slow, media flows,
    then the host check wins (PriorityAgent: "nominated over"): the timeline notes the first
    pair and then the upgrade, with its time. Real legs and the project's TURN server on
    loopback (the scenario of tests/media/test_ice_nomination.py)."""
    import asyncio
    import time
    from types import SimpleNamespace

    from tests.media.peers import until
    from tests.media.test_ice_nomination import WAIT, gateway_and_alice, hold_host_path

    log = CallLog()
    feed(log, MS, False, message("INVITE sip:3001@video.example.com SIP/2.0", "c1"), 1.0)
    async with gateway_and_alice() as (leg, alice):
        leg.on_media = lambda data, component: None
        log.tap("c1", SimpleNamespace(streams=[SimpleNamespace(
            kind="audio", ice=leg, video=SimpleNamespace(on_media=None))]))  # type: ignore[arg-type]
        record = log.records["c1"]
        release = hold_host_path(leg)
        gateway_checks = asyncio.ensure_future(
            leg.connect(alice.local_username, alice.local_password, alice.sdp_candidates))
        await alice.run(leg.ufrag, leg.pwd, leg.local_candidates, WAIT)
        await gateway_checks
        assert leg.selected_type == "relay"
        # Alice's media reaches the gateway's relay: the timeline notes the relay pair.
        assert alice.send_media(b"\x80" + bytes(11), 1)
        await until(lambda: len(record.notes) >= 2, "the first packet noted", WAIT)
        assert record.notes[0].text.startswith("ICE pair relay ")
        assert not any("upgraded" in n.text for n in record.notes)
        before = time.time()
        assert release() > 0, "no host check reached the gateway"
        await until(lambda: leg.selected_type == "host", "the gateway on its host", WAIT)
        upgrades = [n for n in record.notes if "upgraded" in n.text]
        assert len(upgrades) == 1, [n.text for n in record.notes]
        assert upgrades[0].text.startswith("audio: ICE pair upgraded to host 127.0.2.1:")
        assert "nominated over relay " in upgrades[0].text
        assert before <= upgrades[0].at <= time.time()
