"""Diagnostic logging: the pcap read back by tshark (a real peer) and by hand, the text log."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.diagnostics import (
    LINKTYPE_RAW,
    PCAP_MAGIC,
    DiagnosticLog,
    Direction,
    ip_udp_packet,
)
from sip.message import Request, make_response, parse_message
from sip.transport import Transport

DATA = Path(__file__).parent.parent / "data" / "sip"
T0 = 1_700_000_000.25  # Unix time of the test's first event

FE = ("127.0.1.1", 40123)
GW_MS = ("127.0.2.1", 65072)
GW_OUT = ("127.0.2.1", 25001)
CUCM = ("127.0.3.1", 5061)


def lync_invite() -> Request:
    message = parse_message((DATA / "lync_invite.sip").read_bytes())
    assert isinstance(message, Request)
    return message


def video_invite() -> Request:
    """The INVITE the B2BUA sends on: here the same headers with no body (delayed offer)."""
    invite = lync_invite()
    headers = invite.headers.copy()
    headers.remove("Content-Type")
    return Request(invite.method, invite.uri, headers, b"")


def call_flow() -> list[tuple[Direction, Transport, tuple[str, int], tuple[str, int], bytes]]:
    """A B2BUA call as the gateway sees it: Lync FE -> gateway -> CUCM and back."""
    invite = lync_invite()
    outbound = video_invite()
    return [
        (Direction.RECEIVED, Transport.TLS, FE, GW_MS, invite.encode()),
        (Direction.SENT, Transport.TLS, GW_MS, FE, make_response(invite, 100).encode()),
        (Direction.SENT, Transport.TCP, GW_OUT, CUCM, outbound.encode()),
        (Direction.RECEIVED, Transport.TCP, CUCM, GW_OUT,
         make_response(outbound, 180, to_tag="c1").encode()),
        (Direction.SENT, Transport.TLS, GW_MS, FE,
         make_response(invite, 180, to_tag="g1").encode()),
        (Direction.RECEIVED, Transport.TCP, CUCM, GW_OUT,
         make_response(outbound, 486, to_tag="c1").encode()),
        (Direction.SENT, Transport.TLS, GW_MS, FE,
         make_response(invite, 486, to_tag="g1").encode()),
    ]


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    log = DiagnosticLog(tmp_path / "diag")
    log.start(T0)
    for i, (direction, transport, src, dst, data) in enumerate(call_flow()):
        log.record(direction, transport, src, dst, data, T0 + 0.1 * (i + 1))
        if i == 2:
            log.marker("alice calls 3001\n(second line)", T0 + 0.35)
    path = log.stop(T0 + 1)
    assert log.messages == 7
    return path


# -- reading the pcap back by hand -------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    raw: bytes


def internet_checksum_ok(data: bytes) -> bool:
    """RFC 1071: summing the data with its checksum in place gives all ones."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def read_pcap(path: Path) -> list[Packet]:
    data = path.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, zone, sigfigs) == (PCAP_MAGIC, 2, 4, 0, 0)
    assert (snaplen, linktype) == (65535, LINKTYPE_RAW)
    offset, packets = 24, []
    while offset < len(data):
        seconds, micros, incl, orig = struct.unpack_from("<IIII", data, offset)
        assert incl == orig and micros < 1_000_000
        raw = data[offset + 16:offset + 16 + incl]
        assert len(raw) == incl
        offset += 16 + incl
        packets.append(parse_ip_udp(seconds + micros / 1e6, raw))
    return packets


def parse_ip_udp(time: float, raw: bytes) -> Packet:
    version = raw[0] >> 4
    if version == 4:
        ihl = (raw[0] & 0x0F) * 4
        total, proto = struct.unpack_from("!H", raw, 2)[0], raw[9]
        assert (ihl, total, proto) == (20, len(raw), 17)
        assert internet_checksum_ok(raw[:20])
        src_ip, dst_ip = raw[12:16], raw[16:20]
        pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, len(raw) - 20)
        udp = raw[20:]
    else:
        assert version == 6
        payload_length, next_header = struct.unpack_from("!HB", raw, 4)
        assert (payload_length, next_header) == (len(raw) - 40, 17)
        src_ip, dst_ip = raw[8:24], raw[24:40]
        pseudo = src_ip + dst_ip + struct.pack("!I3xB", payload_length, 17)
        udp = raw[40:]
    sport, dport, length, checksum = struct.unpack_from("!HHHH", udp)
    assert length == len(udp) and checksum != 0
    assert internet_checksum_ok(pseudo + udp)
    return Packet(time, (str(ipaddress.ip_address(src_ip)), sport),
                  (str(ipaddress.ip_address(dst_ip)), dport), udp[8:], raw)


def test_pcap_reads_back_by_hand(capture: Path) -> None:
    packets = read_pcap(capture)
    flow = call_flow()
    sip_packets = [p for p in packets if p.dst[1] != 514]
    markers = [p for p in packets if p.dst[1] == 514]
    assert len(sip_packets) == len(flow)
    for i, (packet, (_, _, src, dst, data)) in enumerate(zip(sip_packets, flow, strict=True)):
        assert (packet.src, packet.dst, packet.payload) == (src, dst, data)
        assert packet.time == pytest.approx(T0 + 0.1 * (i + 1), abs=1e-6)
    (marker,) = markers
    assert marker.payload.startswith(b"<133>1 2023-11-14T22:13:20.600000Z - gateway")
    assert marker.payload.endswith(b"MARKER alice calls 3001 (second line)")
    # The marker sits in time order between the third and fourth SIP message.
    assert [p.time for p in packets] == sorted(p.time for p in packets)


def test_text_log(capture: Path) -> None:
    lines = capture.with_suffix(".log").read_text().splitlines()
    assert lines[0] == "2023-11-14T22:13:20.250000Z START diagnostic logging"
    assert lines[1] == ("2023-11-14T22:13:20.350000Z RECEIVED TLS 127.0.1.1:40123 -> "
                        f"127.0.2.1:65072 {len(call_flow()[0][4])} bytes: "
                        "INVITE sip:3001@video.example.com;transport=tls SIP/2.0")
    assert "2023-11-14T22:13:20.600000Z MARKER alice calls 3001 (second line)" in lines
    assert any(" SENT TLS 127.0.2.1:65072 -> 127.0.1.1:40123 " in line
               and line.endswith("SIP/2.0 486 Busy Here") for line in lines)
    assert lines[-1] == "2023-11-14T22:13:21.250000Z STOP diagnostic logging (7 SIP messages)"


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_wireshark_decodes_the_sip(capture: Path) -> None:
    result = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-Y", "sip",
         "-T", "fields", "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.Call-ID"],
        capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(method, status) for method, status, _ in rows] == [
        ("INVITE", ""), ("", "100"), ("INVITE", ""), ("", "180"), ("", "180"),
        ("", "486"), ("", "486")]
    assert {call_id for _, _, call_id in rows} == {lync_invite().call_id}
    # The multipart SDP body of the Lync INVITE is dissected too (Wireshark reads the MIME).
    sdp = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-Y", "sdp", "-T", "fields", "-e", "frame.number"],
        capture_output=True, text=True, timeout=60, check=True)
    assert sdp.stdout.split() == ["1"]
    markers = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-Y", "syslog", "-T", "fields", "-e", "syslog.msg"],
        capture_output=True, text=True, timeout=60, check=True)
    assert "MARKER alice calls 3001" in markers.stdout


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_wireshark_over_ipv6_and_checksums(tmp_path: Path) -> None:
    log = DiagnosticLog(tmp_path)
    log.start(T0)
    invite = lync_invite()
    log.record(Direction.RECEIVED, Transport.UDP, ("::1", 5062), ("::1", 5060),
               invite.encode(), T0)
    log.record(Direction.SENT, Transport.UDP, ("::1", 5060), ("::1", 5062),
               make_response(invite, 200, to_tag="x").encode(), T0 + 0.01)
    path = log.stop(T0 + 1)
    result = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "udp.check_checksum:TRUE",
         "-T", "fields", "-e", "ipv6.src", "-e", "udp.checksum.status", "-e", "sip.CSeq"],
        capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows == [["::1", "1", "1 INVITE"], ["::1", "1", "1 INVITE"]]  # 1 = checksum good


# -- the switch --------------------------------------------------------------------------


def test_records_only_while_running(tmp_path: Path) -> None:
    log = DiagnosticLog(tmp_path)
    assert not log.running and log.path is None
    log.record(Direction.SENT, Transport.UDP, FE, GW_MS, b"OPTIONS sip:x SIP/2.0\r\n\r\n", T0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        log.marker("too early", T0)
    with pytest.raises(RuntimeError):
        log.stop(T0)
    first = log.start(T0)
    assert log.running
    with pytest.raises(RuntimeError):
        log.start(T0)
    log.record(Direction.SENT, Transport.UDP, FE, GW_MS, b"OPTIONS sip:x SIP/2.0\r\n\r\n", T0)
    assert log.stop(T0 + 1) == first and not log.running
    log.record(Direction.SENT, Transport.UDP, FE, GW_MS, b"OPTIONS sip:y SIP/2.0\r\n\r\n", T0)
    assert len(read_pcap(first)) == 1
    # A second capture in the same second gets its own files; the first one is kept.
    second = log.start(T0 + 0.5)
    log.stop(T0 + 0.6)
    assert second != first and first.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "diagnostic-20231114T221320Z-1.log", "diagnostic-20231114T221320Z-1.pcap",
        "diagnostic-20231114T221320Z.log", "diagnostic-20231114T221320Z.pcap"]
    assert read_pcap(second) == []


def test_marker_is_flushed_to_disk_at_once(tmp_path: Path) -> None:
    log = DiagnosticLog(tmp_path)
    path = log.start(T0)
    log.marker("before the test call", T0 + 1)
    # Readable while still running, so an operator can look at a live capture.
    assert "MARKER before the test call" in path.with_suffix(".log").read_text()
    assert len(read_pcap(path)) == 1
    log.stop(T0 + 2)


def test_oversized_payload_is_truncated_not_fatal() -> None:
    packet = ip_udp_packet(FE, GW_MS, b"x" * 70_000)
    assert len(packet) == 65535
    parsed = parse_ip_udp(0.0, packet)
    assert parsed.payload == b"x" * (65535 - 28)


def test_names_and_mixed_families_still_give_valid_packets() -> None:
    named = parse_ip_udp(0.0, ip_udp_packet(("fe01.example.com", 5061), GW_MS, b"hi"))
    assert named.src == ("0.0.0.0", 5061)
    mixed = parse_ip_udp(0.0, ip_udp_packet(("::1", 5060), ("127.0.0.1", 5060), b"hi"))
    assert ipaddress.ip_address(mixed.dst[0]) == ipaddress.ip_address("::ffff:127.0.0.1")
