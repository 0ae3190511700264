"""The TURN server's UDP sockets on a fast-path hub (``turn.fastpath``) instead of asyncio
transports: the listeners and the UDP relays of UDP clients are polled by the hub, which
relays the bound channels the core published on its own (batched, no Python frame per packet)
and hands every other datagram to the same per-packet handlers the transports call.

Sending from Python (STUN answers, Data indications, Send indications to peers) goes through
``DatagramSender``: the socket's own sendto, and a small queue drained when the socket is
writable again where its buffer is full (what a transport would do).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .allocation import Address, Allocation, Counters
from .core import ForwardingEntry, TurnCore
from .fastpath import Hub, HubRelay, HubSocket, make_hub

logger = logging.getLogger(__name__)

MAX_QUEUED = 4096
"""Datagrams held per socket while its buffer is full; past that they are dropped (UDP)."""


class DatagramOut(Protocol):
    """What the server sends with: an asyncio DatagramTransport or a ``DatagramSender``."""

    def sendto(self, data: bytes, addr: Any = None) -> None: ...
    def close(self) -> None: ...


class DatagramSender:
    """Sends on a hub-polled socket; owns the socket and its hub registration."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.registration: HubSocket | None = None
        self._queue: deque[tuple[bytes, Any]] = deque()
        self.dropped = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._queue:
            self.queue(data, addr)
            return
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.queue(data, addr)
        except OSError as exc:  # an ICMP error from an earlier datagram, a size
            logger.debug("UDP send to %s failed: %s", addr, exc)

    def queue(self, data: bytes, addr: Any) -> None:
        if self.sock.fileno() < 0:
            return
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        if not self._queue:
            self.loop.add_writer(self.fd, self._drain)
        self._queue.append((data, addr))

    def _drain(self) -> None:
        while self._queue:
            data, addr = self._queue[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("UDP send to %s failed: %s", addr, exc)
            self._queue.popleft()
        self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.registration is not None:
            self.registration.close()
        if self._queue:
            self._queue.clear()
            self.loop.remove_writer(self.fd)
        self.sock.close()


class FastUdp:
    """One hub for a server: its fd on the loop, its sockets, the published tables."""

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self.listeners: dict[Address, HubSocket] = {}
        self.relays: dict[int, HubRelay] = {}
        self.senders: dict[int, DatagramSender] = {}
        loop.add_reader(hub.fileno(), hub.poll)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop) -> FastUdp | None:
        """A hub as ``TURN_FASTPATH`` asks (default: native where built), or None."""
        senders: dict[int, DatagramSender] = {}

        def unsent(fd: int, data: bytes, addr: Address) -> None:
            sender = senders.get(fd)
            if sender is not None:
                sender.queue(data, addr)

        hub = make_hub(unsent)
        if hub is None:
            return None
        fast = cls(hub, loop)
        fast.senders = senders
        return fast

    def listen(
        self, sock: socket.socket, local: Address, on_datagram: Callable[[bytes, Any], None]
    ) -> DatagramSender:
        sender = DatagramSender(sock, self.loop)
        sender.registration = self.hub.listener(sock, on_datagram)
        self.listeners[local] = sender.registration
        self.senders[sender.fd] = sender
        return sender

    def has_listener(self, local: Address) -> bool:
        return local in self.listeners

    def relay(
        self,
        alloc: Allocation,
        sock: socket.socket,
        on_datagram: Callable[[bytes, Any], None],
    ) -> DatagramSender:
        """The relay of an allocation whose client is on one of the hub's listeners."""
        ft = alloc.five_tuple
        sender = DatagramSender(sock, self.loop)
        relay = self.hub.relay(sock, self.listeners[ft.server], ft.client, on_datagram)
        sender.registration = relay
        self.relays[alloc.id] = relay
        self.senders[sender.fd] = sender
        return sender

    def forget(self, sender: DatagramOut, alloc_id: int | None = None) -> None:
        if isinstance(sender, DatagramSender):
            self.senders.pop(sender.fd, None)
        if alloc_id is not None:
            self.relays.pop(alloc_id, None)

    def publish(self, core: TurnCore) -> None:
        """Republish the tables the core changed since the last call."""
        for alloc, entries in core.take_forwarding():
            self.publish_one(core, alloc, entries)

    def publish_one(
        self,
        core: TurnCore,
        alloc: Allocation,
        entries: tuple[ForwardingEntry, ...] | None = None,
    ) -> None:
        relay = self.relays.get(alloc.id)
        if relay is None or relay.closed:
            return
        if entries is None:
            entries = core.forwarding(alloc)
        relay.publish([(e.channel, e.peer[0], e.peer[1], e.expires) for e in entries])

    def add_counters(self, counters: Counters) -> None:
        """The hub's relayed packets and bytes since the last call, into the core's."""
        to_peer, to_peer_bytes, to_client, to_client_bytes = self.hub.take_counters()
        counters.packets_to_peer += to_peer
        counters.bytes_to_peer += to_peer_bytes
        counters.packets_to_client += to_client
        counters.bytes_to_client += to_client_bytes

    def close(self) -> None:
        self.loop.remove_reader(self.hub.fileno())
