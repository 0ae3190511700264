"""The batched UDP path for bound channels: the native hub (``fastpath_native/_fastpath.c``)
or its pure-Python twin here, the same interface and the same rules.

A hub polls the UDP listeners and UDP relay sockets of a server (``fileno()`` is what the
event loop watches; ``poll(now)`` drains every ready socket). It forwards only what the core
published for a relay (``TurnCore.forwarding``): ChannelData from the allocation's client on a
published channel goes out of the relay to the channel's peer, a datagram from a published
peer goes back to the client as ChannelData, each while ``now`` is before the entry's expiry.
Everything else goes to the socket's ``on_datagram(data, (host, port))`` unchanged, where
the core decides as before. The twin is the oracle of the tests and the path where the
native one is not built (``TURN_FASTPATH=python``); it is no faster than the transports.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Address = tuple[str, int]
Datagram = Callable[[bytes, Address], object]
Unsent = Callable[[int, bytes, Address], object]
Entry = tuple[int, str, int, float]
"""(channel, peer host, peer port, expires): the core's forwarding table row."""

MAX_ENTRIES = 64
ENV = "TURN_FASTPATH"
"""``native`` / ``python`` / ``off``; unset: native where built, else the transports."""

_HEADER = struct.Struct("!HH")
_BATCH = 32
_ROUNDS = 8
_BUF_SIZE = 65536


class HubSocket(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class HubRelay(HubSocket, Protocol):
    def publish(self, entries: Sequence[Entry]) -> None: ...


class Hub(Protocol):
    def poll(self, now: float | None = None) -> int: ...
    def listener(self, sock: socket.socket, on_datagram: Datagram) -> HubSocket: ...
    def relay(
        self, sock: socket.socket, listener: Any, client: Address, on_datagram: Datagram
    ) -> HubRelay: ...
    def fileno(self) -> int: ...
    def take_counters(self) -> tuple[int, int, int, int]: ...
    def stats(self) -> dict[str, int]: ...


def native_hub_type() -> Callable[..., Hub] | None:
    """The native Hub class, or None where the extension was not built."""
    try:
        from .fastpath_native import _fastpath  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _fastpath.Hub  # type: ignore[no-any-return]


def make_hub(on_unsent: Unsent | None = None) -> Hub | None:
    """The hub ``TURN_FASTPATH`` asks for; by default the native one, or None (transports)."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "native", "python", "off"):
        raise RuntimeError(f"{ENV}={choice!r}: native, python or off")
    if choice == "off":
        return None
    if choice == "python":
        return PyHub(on_unsent)
    native = native_hub_type()
    if native is None:
        if choice == "native":
            raise RuntimeError(f"{ENV}=native but turn/fastpath_native is not built")
        return None
    return native(on_unsent)


class _Sock:
    kind = ""

    def __init__(self, hub: PyHub, sock: socket.socket, on_datagram: Datagram) -> None:
        self.hub: PyHub | None = hub
        self.sock = sock
        self.fd = sock.fileno()
        self.on_datagram = on_datagram

    @property
    def closed(self) -> bool:
        return self.hub is None

    def close(self) -> None:
        hub, self.hub = self.hub, None
        if hub is not None:
            hub._unregister(self)


class PyListener(_Sock):
    kind = "listener"

    def __init__(self, hub: PyHub, sock: socket.socket, on_datagram: Datagram) -> None:
        super().__init__(hub, sock, on_datagram)
        self.relays: dict[Address, PyRelay] = {}


class PyRelay(_Sock):
    kind = "relay"

    def __init__(
        self,
        hub: PyHub,
        sock: socket.socket,
        listener: PyListener,
        client: Address,
        on_datagram: Datagram,
    ) -> None:
        super().__init__(hub, sock, on_datagram)
        self.listener = listener
        self.client = _canonical(client)
        self.by_channel: dict[int, tuple[Address, float]] = {}
        self.by_peer: dict[Address, tuple[int, float]] = {}

    def publish(self, entries: Sequence[Entry]) -> None:
        by_channel: dict[int, tuple[Address, float]] = {}
        by_peer: dict[Address, tuple[int, float]] = {}
        for channel, host, port, expires in list(entries)[:MAX_ENTRIES]:
            if not 0x4000 <= channel <= 0x7FFF:
                raise ValueError(f"channel 0x{channel:x} out of range")
            peer = _canonical((host, port))
            by_channel[channel] = (peer, expires)
            by_peer[peer] = (channel, expires)
        self.by_channel, self.by_peer = by_channel, by_peer

    def close(self) -> None:
        if self.listener.relays.get(self.client) is self:
            del self.listener.relays[self.client]
        super().close()


class PyHub:
    """The pure-Python twin of the native Hub: same calls, same datagrams out."""

    def __init__(self, on_unsent: Unsent | None = None) -> None:
        self.on_unsent = on_unsent
        self._epoll = select.epoll()
        self._members: dict[int, _Sock] = {}
        self._out: list[tuple[socket.socket, bytes, Address]] = []
        self._counters = [0, 0, 0, 0]
        self._stats = dict(fast=0, slow=0, batches=0, unsent=0, send_errors=0)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def listener(self, sock: socket.socket, on_datagram: Datagram) -> PyListener:
        listener = PyListener(self, sock, on_datagram)
        self._register(listener)
        return listener

    def relay(
        self, sock: socket.socket, listener: Any, client: Address, on_datagram: Datagram
    ) -> PyRelay:
        if not isinstance(listener, PyListener) or listener.hub is not self:
            raise ValueError("not a listener of this hub")
        relay = PyRelay(self, sock, listener, client, on_datagram)
        self._register(relay)
        listener.relays[relay.client] = relay
        return relay

    def take_counters(self) -> tuple[int, int, int, int]:
        c = self._counters
        taken = (c[0], c[1], c[2], c[3])
        self._counters = [0, 0, 0, 0]
        return taken

    def stats(self) -> dict[str, int]:
        return {**self._stats, "sockets": len(self._members)}

    def _register(self, s: _Sock) -> None:
        self._epoll.register(s.fd, select.EPOLLIN)
        self._members[s.fd] = s

    def _unregister(self, s: _Sock) -> None:
        if self._members.get(s.fd) is s:
            del self._members[s.fd]
            try:
                self._epoll.unregister(s.fd)
            except OSError:
                pass

    def poll(self, now: float | None = None) -> int:
        if now is None:
            now = time.monotonic()
        ready = [self._members[fd] for fd, _ in self._epoll.poll(0) if fd in self._members]
        return sum(self._pump(s, now) for s in ready)

    def _pump(self, s: _Sock, now: float) -> int:
        total = 0
        for _ in range(_ROUNDS):
            if s.hub is None:
                return total
            batch: list[tuple[bytes, Address]] = []
            while len(batch) < _BATCH:
                try:
                    data, addr = s.sock.recvfrom(_BUF_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionRefusedError:
                    continue
                batch.append((data, _canonical(addr)))
            if not batch:
                return total
            total += len(batch)
            self._stats["batches"] += 1
            for data, addr in batch:
                if s.hub is None:
                    break
                if isinstance(s, PyListener):
                    done = self._from_client(s, data, addr, now)
                else:
                    assert isinstance(s, PyRelay)
                    done = self._from_peer(s, data, addr, now)
                if done:
                    self._stats["fast"] += 1
                    continue
                self._stats["slow"] += 1
                self._flush()  # keep order; a callback may republish or close
                try:
                    s.on_datagram(data, addr)
                except Exception:  # a socket survives its callback (as the native hub)
                    logger.exception("fast path: error handling a datagram from %s", addr)
            self._flush()
            if len(batch) < _BATCH:
                return total
        return total

    def _from_client(self, listener: PyListener, data: bytes, addr: Address, now: float) -> bool:
        if len(data) < 4 or not 0x40 <= data[0] < 0x80:
            return False
        relay = listener.relays.get(addr)
        if relay is None:
            return False
        channel, length = _HEADER.unpack_from(data)
        if len(data) < 4 + length:
            return False
        entry = relay.by_channel.get(channel)
        if entry is None or now >= entry[1]:
            return False
        self._out.append((relay.sock, data[4 : 4 + length], entry[0]))
        self._counters[0] += 1
        self._counters[1] += length
        return True

    def _from_peer(self, relay: PyRelay, data: bytes, addr: Address, now: float) -> bool:
        if relay.listener.hub is None or len(data) > 0xFFFF:
            return False
        entry = relay.by_peer.get(addr)
        if entry is None or now >= entry[1]:
            return False
        frame = _HEADER.pack(entry[0], len(data)) + data
        self._out.append((relay.listener.sock, frame, relay.client))
        self._counters[2] += 1
        self._counters[3] += len(data)
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        for i, (sock, data, to) in enumerate(out):
            try:
                sock.sendto(data, to)
            except (BlockingIOError, InterruptedError):
                # the rest leaving by this socket goes to on_unsent, as sendmmsg's rest does
                for later_sock, later, later_to in out[i:]:
                    if later_sock is sock:
                        self._stats["unsent"] += 1
                        if self.on_unsent is not None:
                            self.on_unsent(sock.fileno(), later, later_to)
                self._out = [o for o in out[i + 1 :] if o[0] is not sock]
                self._flush()
                return
            except OSError:  # an ICMP error, a size: that datagram is dropped
                self._stats["send_errors"] += 1


def _canonical(addr: Any) -> Address:
    """(host, port) with the host as inet_ntop writes it (the native hub compares bytes)."""
    host, port = addr[0], addr[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, host)), int(port)
