"""The table of a transport manager's stream connections, their reuse and their caps.

Every TCP/TLS connection is here by id and by remote address (an open one to a peer is
reused, inbound ones too, so a response follows its request), with the inbound ones per
source address and the inbound TLS handshakes still running. The caps on connections in
total and per source address are applied here: at a cap the oldest idle inbound
connection is closed to make room, and when none is idle the newcomer is refused.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Protocol

from sip.transport_settings import TransportCounters, TransportSettings
from sip.transport_stream import StreamConnection
from sip.transport_types import ConnectionInfo, Transport, TransportAddress

__all__ = ["ConnectionTable", "StreamFactory", "capped_by_fd_limit"]

# The transport layer logs under one name, which deployments and tests set levels on.
logger = logging.getLogger("sip.transport")


class StreamFactory(Protocol):
    """Makes a stream connection owned by the manager (and enters it in the table)."""

    def __call__(
        self, transport: Transport, *, outbound: bool, server_hostname: str | None
    ) -> StreamConnection: ...


class ConnectionTable:
    """Stream connections by id, by remote address and by inbound source, with the caps."""

    def __init__(self, settings: TransportSettings, counters: TransportCounters) -> None:
        self.settings = settings
        self.counters = counters
        """The manager's counters (refused and evicted are counted here)."""
        self.max_connections = capped_by_fd_limit(settings.max_connections)
        self.streams: dict[int, tuple[StreamConnection, ConnectionInfo]] = {}
        """Open (ready) stream connections."""
        self.by_remote: dict[TransportAddress, list[int]] = {}
        """Open stream connections per remote address, oldest first."""
        self.transports: dict[int, Transport] = {}
        """The transport of each stream made, from its creation until it is forgotten."""
        self.inbound: dict[str, dict[int, None]] = {}
        """Inbound streams (ready or in TLS handshake) per source host, oldest first."""
        self.handshakes: dict[int, tuple[str, asyncio.Task[None]]] = {}
        """Inbound TLS handshakes in progress: source host and task, oldest first."""
        self.closed_info: dict[int, ConnectionInfo] = {}
        """Streams taken out of the tables whose close is not yet reported."""

    @property
    def count(self) -> int:
        """Stream connections held: open ones and inbound TLS handshakes in progress."""
        return len(self.streams) + len(self.handshakes)

    def add(self, stream: StreamConnection, info: ConnectionInfo) -> None:
        """Enter a stream that became ready."""
        assert info.remote is not None
        self.streams[stream.id] = (stream, info)
        self.by_remote.setdefault(info.remote, []).append(stream.id)

    def reusable(
        self, target: TransportAddress, server_hostname: str | None
    ) -> tuple[StreamConnection, ConnectionInfo] | None:
        """The newest open connection to ``target`` (TLS: whose names include
        ``server_hostname`` when given)."""
        wanted = server_hostname.lower() if server_hostname else None
        for connection_id in reversed(self.by_remote.get(target, [])):
            stream, info = self.streams[connection_id]
            if stream.closed or stream.transport is None or stream.transport.is_closing():
                continue
            if wanted is not None and info.transport is Transport.TLS:
                names = {name.lower() for name in info.peer_names}
                if info.server_hostname is not None:
                    names.add(info.server_hostname.lower())
                if wanted not in names:
                    continue
            return stream, info
        return None

    # -- caps --------------------------------------------------------------------------

    def admit(self, host: str, peer: str, transport: Transport) -> bool:
        """Make room for a new inbound connection from ``host``, or say no.

        At a cap the victim is the oldest idle inbound connection (of that source for the
        per-source cap): first one that never carried a SIP message (a handshake still
        running, a connection that sent nothing or only junk), then the one whose last
        message is oldest.
        """
        per_source = self.settings.max_connections_per_source
        if per_source is not None and len(self.inbound.get(host, ())) >= per_source:
            ids = list(self.inbound.get(host, ()))
            if not self._evict(ids, f"{per_source} from {host}", ordered=True):
                return self._refuse(peer, transport, f"{per_source} connections from {host}")
        total = self.max_connections
        if total is not None and self.count >= total:
            candidates = (i for ids in list(self.inbound.values()) for i in ids)
            if not self._evict(candidates, f"{total} in all", ordered=False):
                return self._refuse(peer, transport, f"{total} connections in all")
        return True

    def _evict(self, candidates: Any, cap: str, *, ordered: bool) -> bool:
        # ``ordered``: ids come oldest first (one source's table), so the first that never
        # carried a message is the victim; otherwise every candidate is ranked.
        victim: int | None = None
        best: tuple[int, float, int] | None = None
        for connection_id in candidates:
            if connection_id in self.handshakes:
                rank = (0, 0.0, connection_id)
            else:
                entry = self.streams.get(connection_id)
                if entry is None or entry[0].closed:
                    continue
                stream = entry[0]
                rank = (min(stream.messages, 1), stream.last_message_at, connection_id)
            if best is None or rank < best:
                best, victim = rank, connection_id
                if ordered and rank[0] == 0:
                    break
        if victim is None:
            return False
        self.counters.evicted += 1
        if victim in self.handshakes:
            host, task = self.handshakes.pop(victim)
            logger.info("connection cap (%s): dropping a TLS handshake from %s", cap, host)
            self.forget_inbound(victim, host)
            task.cancel()
            return True
        stream, info = self.streams[victim]
        logger.info(
            "connection cap (%s): closing the oldest idle connection %d from %s",
            cap,
            victim,
            info.remote,
        )
        self.forget(stream)
        stream.abort()
        return True

    def _refuse(self, peer: str, transport: Transport, cap: str) -> bool:
        self.counters.refused += 1
        logger.warning(
            "connection cap reached (%s), none idle: %s connection from %s refused",
            cap,
            transport.value,
            peer,
        )
        return False

    # -- leaving -----------------------------------------------------------------------

    def forget_inbound(self, connection_id: int, host: str) -> None:
        """Take an inbound stream (or a failed handshake) off its source's list."""
        self.transports.pop(connection_id, None)
        ids = self.inbound.get(host)
        if ids is not None:
            ids.pop(connection_id, None)
            if not ids:
                del self.inbound[host]

    def forget(self, stream: StreamConnection) -> None:
        """Take a stream out of every table (when it closes, or when it is evicted: the
        slot is free at once, before asyncio reports the close)."""
        self.transports.pop(stream.id, None)
        entry = self.streams.pop(stream.id, None)
        if entry is None:
            return
        info = entry[1]
        self.closed_info[stream.id] = info
        assert info.remote is not None
        if not stream.outbound:
            self.forget_inbound(stream.id, info.remote.host)
        ids = self.by_remote.get(info.remote)
        if ids is not None:
            if stream.id in ids:
                ids.remove(stream.id)
            if not ids:
                del self.by_remote[info.remote]


def capped_by_fd_limit(wanted: int | None) -> int | None:
    """``wanted`` connections, at most half the open-file limit: past it accept() fails
    with EMFILE for every listener (and media sockets cannot be bound)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    ceiling = max(16, soft // 2)
    if wanted is None or wanted > ceiling:
        logger.info(
            "stream connections capped at %d: half the open-file limit of %d", ceiling, soft
        )
        return ceiling
    return wanted
