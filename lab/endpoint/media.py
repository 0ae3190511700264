"""The endpoint's media ports: one UDP socket per m= line that receives, counts and sends RTP.

Symmetric RTP: a port sends from the very socket it receives on, so a B2BUA that latches
(sends to wherever media came from) reaches us at the port our SDP names. With ``latch``
on, the port also follows the peer: once authentic RTP arrives from an address other than
the one in the peer's SDP, it sends there (a relay behind NAT or a gateway that sends from
another port still gets our media back).

SDES-SRTP (RFC 4568) uses ``media.srtp``: packets that fail authentication are counted as
rejected, never as received.
"""

from __future__ import annotations

import asyncio
import logging

from lab.endpoint.rtp import RtpError, RtpSource, parse_header
from media.srtp import LegKeys, SrtpError, SrtpTransform

__all__ = ["MediaPort"]

logger = logging.getLogger(__name__)

Address = tuple[str, int]


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, port: MediaPort) -> None:
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._port.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is not listening yet: not fatal.
        logger.debug("media port %d: %s", self._port.port, exc)


class MediaPort:
    """One bound UDP port for an m= line; counts what arrives, sends when told to."""

    def __init__(self, kind: str = "audio") -> None:
        self.kind = kind
        """"audio" or "video"."""
        self.port = 0
        """The bound port."""
        self.packets = 0
        """RTP packets received (after SRTP unprotect when keyed)."""
        self.octets = 0
        """Bytes of those packets."""
        self.rejected = 0
        """Datagrams dropped: not RTP, or failing SRTP authentication."""
        self.refused: dict[str, int] = {}
        """``rejected`` by reason ("SRTP: authentication failure", "not RTP: ...")."""
        self.refused_from: Address | None = None
        """Where the last rejected datagram came from."""
        self.sent = 0
        """RTP packets sent."""
        self.last_source: Address | None = None
        """Where the last accepted packet came from."""
        self.remote: Address | None = None
        """Where we send (the peer's SDP address, or the latched source)."""
        self.latch = True
        """Follow the source of received RTP (see the module docstring)."""
        self.latched = False
        """True once ``remote`` was taken from received media."""
        self.received = asyncio.Event()
        """Set when a packet is accepted (clear it to wait for the next one)."""
        self.changed = asyncio.Event()
        """Set when a packet is accepted, rejected or sent (clear it to wait for the next)."""
        self._transport: asyncio.DatagramTransport | None = None
        self._srtp: SrtpTransform | None = None
        self._source: RtpSource | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0

    @classmethod
    async def open(cls, host: str, port: int = 0, *, kind: str = "audio") -> MediaPort:
        """Bind ``host:port`` (0: any free port)."""
        media = cls(kind)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(media), local_addr=(host, port)
        )
        media._transport = transport
        media.port = int(transport.get_extra_info("sockname")[1])
        return media

    # -- configuration -----------------------------------------------------------------

    def set_keys(self, keys: LegKeys | None) -> None:
        """Run SRTP with ``keys`` (None: plain RTP). New keys mean new SRTP sessions."""
        if keys is None:
            self._srtp = None
        elif self._srtp is None or self._srtp.keys != keys:
            self._srtp = SrtpTransform(keys)

    @property
    def encrypted(self) -> bool:
        return self._srtp is not None

    def set_remote(self, remote: Address | None) -> None:
        """The peer's SDP address; a latched address is kept while it still applies."""
        if not self.latched:
            self.remote = remote

    def start_sending(self, source: RtpSource) -> None:
        """Send ``source``'s packets at its pace until :meth:`stop_sending` or close."""
        if self._source is source and self._timer is not None:
            return
        self.stop_sending()
        self._source = source
        loop = asyncio.get_running_loop()
        self._next_at = loop.time()
        self._tick()

    def stop_sending(self) -> None:
        """Stop sending (hold, or a refused stream)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def rtp_source(self) -> RtpSource | None:
        """The stream we send (kept across re-INVITEs, so sequence numbers run on)."""
        return self._source

    @property
    def sending(self) -> bool:
        return self._timer is not None

    # -- I/O ---------------------------------------------------------------------------

    def on_datagram(self, data: bytes, source: Address) -> None:
        """One datagram from the socket."""
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect(data, rtcp=False)
            except SrtpError as error:
                self._refuse(f"SRTP: {error}", source)
                logger.debug("media port %d: SRTP from %s refused: %s", self.port, source, error)
                return
        try:
            parse_header(data)
        except RtpError as error:
            self._refuse(f"not RTP: {error}", source)
            return
        self.packets += 1
        self.octets += len(data)
        self.last_source = source
        if self.latch and self.remote != source:
            logger.debug("media port %d: latched to %s (was %s)", self.port, source, self.remote)
            self.remote = source
            self.latched = True
        self.received.set()
        self.changed.set()

    def _refuse(self, reason: str, source: Address) -> None:
        self.rejected += 1
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.refused_from = source
        self.changed.set()

    def _tick(self) -> None:
        self._timer = None
        source, transport = self._source, self._transport
        if source is None or transport is None:
            return
        if self.remote is not None:
            packet = source.next_packet()
            if self._srtp is not None:
                packet = self._srtp.protect(packet, rtcp=False)
            transport.sendto(packet, self.remote)
            self.sent += 1
            self.changed.set()
        loop = asyncio.get_running_loop()
        # Pace on an absolute schedule so that timer jitter does not accumulate.
        self._next_at = max(self._next_at + source.interval, loop.time())
        self._timer = loop.call_at(self._next_at, self._tick)

    def close(self) -> None:
        """Stop sending and release the port."""
        self.stop_sending()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def closed(self) -> bool:
        return self._transport is None
