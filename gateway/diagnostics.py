"""Diagnostic logging: a start/stop switch, markers, and a pcap of the SIP the gateway handled.

While running, :class:`DiagnosticLog` writes two files side by side:

- ``<prefix>-<UTC start time>.pcap``: every SIP message sent or received, as the plain text
  the gateway parsed or built (so TLS legs are readable), one IP+UDP packet per message with
  the real addresses and ports. Wireshark's SIP dissector decodes it directly. Markers go in
  as syslog datagrams (127.0.0.1:514 -> 127.0.0.1:514), so they show in the packet list.
- ``<same name>.log``: a text log of the start, the markers, one line per message, the stop.

Stream transports (TCP/TLS) are written as UDP too: a message per datagram keeps the capture
simple and the SIP dissector needs no stream reassembly; the real transport is in each
message's Via and in the text log.

The pcap file is written by hand with ``struct``: the format is a 24-byte header plus a
16-byte header per record, and no maintained pure-Python writer is worth a dependency
for that (scapy is large; dpkt and pypcapfile add nothing we need).

Times (``now``) are Unix time (``time.time()``), since they become pcap timestamps.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO

from gateway.metrics import Direction
from sip.transport import Transport

__all__ = [
    "LINKTYPE_RAW",
    "PCAP_MAGIC",
    "DiagnosticLog",
    "Direction",
    "ip_udp_packet",
    "pcap_header",
    "pcap_record",
]

logger = logging.getLogger(__name__)

PCAP_MAGIC = 0xA1B2C3D4
"""libpcap magic for microsecond timestamps."""
PCAP_VERSION = (2, 4)
LINKTYPE_RAW = 101
"""Packets start with the IP header (IPv4 or IPv6, told apart by the version nibble)."""
SNAPLEN = 65535

MARKER_PORT = 514
"""Markers are written as syslog (RFC 5424 transport: UDP 514) datagrams on loopback."""
# PRI = facility 16 (local0) * 8 + severity 5 (notice), RFC 5424 §6.2.1
MARKER_PRI = 16 * 8 + 5

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")

_IPV4_MAX_PAYLOAD = 65535 - 20 - 8
_IPV6_MAX_PAYLOAD = 65535 - 8

Endpoint = tuple[str, int]
"""``(ip, port)`` as a socket reports it."""


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        # A name, not an address: keep the packet (the text log has the name).
        return ipaddress.IPv4Address("0.0.0.0")


def ip_udp_packet(src: Endpoint, dst: Endpoint, payload: bytes, ident: int = 0) -> bytes:
    """An IPv4 (or IPv6, if either address is) + UDP packet carrying ``payload``.

    Lengths and checksums are correct; a payload too big for one datagram is truncated.
    """
    src_ip, dst_ip = _address(src[0]), _address(dst[0])
    if src_ip.version != dst_ip.version:
        src_ip, dst_ip = (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip
                          for ip in (src_ip, dst_ip))
    limit = _IPV4_MAX_PAYLOAD if src_ip.version == 4 else _IPV6_MAX_PAYLOAD
    payload = payload[:limit]
    udp_length = _UDP.size + len(payload)
    sport, dport = src[1] & 0xFFFF, dst[1] & 0xFFFF
    udp = _UDP.pack(sport, dport, udp_length, 0) + payload
    if src_ip.version == 4:
        pseudo = src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, 17, udp_length)
    else:
        pseudo = src_ip.packed + dst_ip.packed + struct.pack("!I3xB", udp_length, 17)
    # RFC 768: a computed checksum of 0 is sent as all ones (0 means "no checksum").
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    if src_ip.version == 4:
        header = _IPV4.pack(0x45, 0, 20 + udp_length, ident & 0xFFFF, 0x4000, 64, 17, 0,
                            src_ip.packed, dst_ip.packed)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    else:
        header = _IPV6.pack(0x60000000, udp_length, 17, 64, src_ip.packed, dst_ip.packed)
    return header + udp


def pcap_header(linktype: int = LINKTYPE_RAW, snaplen: int = SNAPLEN) -> bytes:
    """The libpcap global header (little-endian, microsecond timestamps)."""
    return _PCAP_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen, linktype)


def pcap_record(now: float, packet: bytes) -> bytes:
    """One record: header (time, captured and original length) then the packet."""
    micros = round(now * 1_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    return _PCAP_RECORD.pack(seconds, micros, len(packet), len(packet)) + packet


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _endpoint_text(endpoint: Endpoint) -> str:
    host = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
    return f"{host}:{endpoint[1]}"


def _first_line(data: bytes) -> str:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")[:200]
    return line.decode("utf-8", "replace")


class DiagnosticLog:
    """The diagnostic logging switch. Not thread-safe: call it from the event loop."""

    def __init__(self, directory: Path, *, prefix: str = "diagnostic") -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self._pcap: BinaryIO | None = None
        self._log: TextIO | None = None
        self._path: Path | None = None
        self._messages = 0
        self._ident = itertools.count(1)

    @property
    def running(self) -> bool:
        return self._pcap is not None

    @property
    def path(self) -> Path | None:
        """The current (or last) capture's pcap file."""
        return self._path

    @property
    def messages(self) -> int:
        """SIP messages recorded in the current (or last) capture."""
        return self._messages

    def start(self, now: float) -> Path:
        """Open a new capture; returns its pcap path (the text log is ``.log`` beside it)."""
        if self.running:
            raise RuntimeError("diagnostic logging is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        base = f"{self.prefix}-{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}"
        path = self.directory / f"{base}.pcap"
        for n in itertools.count(1):
            if not path.exists() and not path.with_suffix(".log").exists():
                break
            path = self.directory / f"{base}-{n}.pcap"
        # "x": never overwrite a capture someone kept.
        self._pcap = path.open("xb")
        self._log = path.with_suffix(".log").open("x", encoding="utf-8")
        self._path = path
        self._messages = 0
        self._pcap.write(pcap_header())
        self._write_log(now, "START diagnostic logging")
        logger.info("diagnostic logging started: %s", path)
        return path

    def marker(self, text: str, now: float) -> None:
        """Put a marker in the text log and the pcap (as a syslog datagram)."""
        if self._pcap is None:
            raise RuntimeError("diagnostic logging is not running")
        text = " ".join(text.split())  # one line, whatever was typed
        self._write_log(now, f"MARKER {text}")
        syslog = f"<{MARKER_PRI}>1 {_stamp(now)} - gateway - - - MARKER {text}".encode()
        loopback = ("127.0.0.1", MARKER_PORT)
        self._pcap.write(pcap_record(now, ip_udp_packet(loopback, loopback, syslog,
                                                        next(self._ident))))
        self._flush()

    def record(self, direction: Direction, transport: Transport, src: Endpoint,
               dst: Endpoint, data: bytes, now: float) -> None:
        """One SIP message the gateway sent or received; ignored while not running."""
        if self._pcap is None:
            return
        self._messages += 1
        self._pcap.write(pcap_record(now, ip_udp_packet(src, dst, data, next(self._ident))))
        self._write_log(now, f"{Direction(direction).name} {Transport(transport).value} "
                             f"{_endpoint_text(src)} -> {_endpoint_text(dst)} {len(data)} bytes: "
                             f"{_first_line(data)}")

    def stop(self, now: float) -> Path:
        """Close the capture; returns the pcap path."""
        if self._pcap is None or self._log is None or self._path is None:
            raise RuntimeError("diagnostic logging is not running")
        self._write_log(now, f"STOP diagnostic logging ({self._messages} SIP messages)")
        pcap, log = self._pcap, self._log
        self._pcap = self._log = None
        try:
            pcap.close()
        finally:
            log.close()
        logger.info("diagnostic logging stopped: %s (%d SIP messages)", self._path,
                    self._messages)
        return self._path

    def _write_log(self, now: float, line: str) -> None:
        assert self._log is not None
        self._log.write(f"{_stamp(now)} {line}\n")

    def _flush(self) -> None:
        if self._pcap is not None and self._log is not None:
            self._pcap.flush()
            self._log.flush()
