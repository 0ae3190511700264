"""The endpoint's media ports: real UDP sockets that receive and count RTP (no sending yet)."""

from __future__ import annotations

import asyncio
import logging

__all__ = ["MediaPort"]

logger = logging.getLogger(__name__)


class _Counter(asyncio.DatagramProtocol):
    def __init__(self, port: MediaPort) -> None:
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._port.packets += 1
        self._port.octets += len(data)
        self._port.last_source = (str(addr[0]), int(addr[1]))
        self._port.received.set()

    def error_received(self, exc: Exception) -> None:
        logger.debug("media port %d: %s", self._port.port, exc)


class MediaPort:
    """One bound UDP port for an m= line; counts what arrives."""

    def __init__(self) -> None:
        self.port = 0
        """The bound port."""
        self.packets = 0
        """Datagrams received."""
        self.octets = 0
        """Bytes received."""
        self.last_source: tuple[str, int] | None = None
        """Where the last datagram came from (what a latching sender would send back to)."""
        self.received = asyncio.Event()
        """Set when a datagram arrives (clear it to wait for the next one)."""
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, host: str, port: int = 0) -> MediaPort:
        """Bind ``host:port`` (0: any free port)."""
        media = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Counter(media), local_addr=(host, port)
        )
        media._transport = transport
        media.port = int(transport.get_extra_info("sockname")[1])
        return media

    def close(self) -> None:
        """Release the port."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def closed(self) -> bool:
        return self._transport is None
