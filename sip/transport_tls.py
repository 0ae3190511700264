"""A SIP TLS listener: accepts by hand, admits under the caps, runs each handshake.

TLS sockets are accepted by hand and handed to connect_accepted_socket(ssl=...): the
handshake then fails with its reason (logged here) on asyncio and uvloop alike.
start_tls() over an accepted transport loses the ClientHello on uvloop, and
create_server(ssl=...) hides handshake failures inside the loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from sip.tls import describe_tls_error
from sip.transport_connections import ConnectionTable, StreamFactory
from sip.transport_stream import StreamConnection
from sip.transport_types import Transport, TransportAddress, address_family

__all__ = ["TlsListener"]

# The transport layer logs under one name, which deployments and tests set levels on.
logger = logging.getLogger("sip.transport")

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class TlsListener:
    """One listening TLS socket of a transport manager."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        table: ConnectionTable,
        new_stream: StreamFactory,
        spawn: Spawn,
    ) -> None:
        self.sock = sock
        name = sock.getsockname()
        self.address = TransportAddress(Transport.TLS, str(name[0]), int(name[1]))
        """The bound address."""
        self.closed = False
        self._context = context
        self._table = table
        self._new_stream = new_stream
        self._spawn = spawn

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        table: ConnectionTable,
        new_stream: StreamFactory,
        spawn: Spawn,
    ) -> TlsListener:
        """Bind and listen on ``host:port`` (0: any free port) and start accepting."""
        sock = socket.socket(address_family(host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(256)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = cls(sock, context, table=table, new_stream=new_stream, spawn=spawn)
        spawn(listener._accept())
        logger.info("listening on %s", listener.address)
        return listener

    def close(self) -> None:
        """Stop accepting (handshakes in progress are the manager's tasks to cancel)."""
        self.closed = True
        self.sock.close()

    async def _accept(self) -> None:
        sock = self.sock
        loop = asyncio.get_running_loop()
        while not self.closed:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as error:
                if self.closed or sock.fileno() < 0:
                    return
                logger.warning("TLS listener %s: accept failed: %s", sock.getsockname(), error)
                await asyncio.sleep(0.1)  # EMFILE and the like: back off, keep listening
                continue
            host = str(peer[0])
            if not self._table.admit(host, f"{host}:{peer[1]}", Transport.TLS):
                conn.close()
                continue
            stream = self._new_stream(Transport.TLS, outbound=False, server_hostname=None)
            task = self._spawn(self._handshake(stream, conn, peer))
            self._table.handshakes[stream.id] = (host, task)
            self._table.inbound.setdefault(host, {})[stream.id] = None

    async def _handshake(
        self,
        stream: StreamConnection,
        conn: socket.socket,
        peer: tuple[Any, ...],
    ) -> None:
        table = self._table
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: stream,
                conn,
                ssl=self._context,
                ssl_handshake_timeout=table.settings.tls_handshake_timeout,
            )
        except OSError as error:  # ssl.SSLError, TimeoutError, ConnectionError included
            table.counters.tls_failed += 1
            logger.warning(
                "TLS handshake with %s:%s failed: %s", peer[0], peer[1], describe_tls_error(error)
            )
            table.forget_inbound(stream.id, str(peer[0]))
            conn.close()
            # python/cpython#109534 (fixed in 3.12.2, not in 3.11): the stdlib loop's
            # handshake waiter keeps this exception, whose traceback frames hold the
            # SSLProtocol and its 256 KiB buffers in a cycle that only a full collection
            # frees; between collections a handshake flood piles them up and the heap's
            # high-water mark never comes back (measured +10 MB per 1,000 failures).
            # Dropping the traceback breaks the cycle: reference counting frees it now.
            error.__traceback__ = None
            error.__context__ = None
        except asyncio.CancelledError:
            # Evicted (or the manager closes) while still shaking hands.
            table.forget_inbound(stream.id, str(peer[0]))
            conn.close()
            raise
        finally:
            table.handshakes.pop(stream.id, None)
