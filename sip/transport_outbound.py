"""Outbound SIP stream connections: reuse one that is open, or open one from the port range.

Concurrent sends to the same peer share one connection attempt. A new TCP/TLS connection
binds its source port from the configured range (Gateway Expressway default
25000-29999), skipping busy ports and 4-tuples still in TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl

from sip.port_range import PortCursor
from sip.tls import describe_tls_error
from sip.transport_connections import ConnectionTable, StreamFactory
from sip.transport_settings import TransportSettings
from sip.transport_stream import StreamConnection
from sip.transport_types import ConnectionInfo, Transport, TransportAddress, TransportError

__all__ = ["Dialer", "describe_os_error"]

# The transport layer logs under one name, which deployments and tests set levels on.
logger = logging.getLogger("sip.transport")


class Dialer:
    """Finds or opens the stream connection a send goes on."""

    def __init__(
        self, settings: TransportSettings, table: ConnectionTable, new_stream: StreamFactory
    ) -> None:
        self.settings = settings
        self.closed = False
        """Set when the manager closes: no new connections."""
        self._table = table
        self._new_stream = new_stream
        self._ports = (
            PortCursor(settings.outbound_ports) if settings.outbound_ports is not None else None
        )
        self._connecting: dict[tuple[TransportAddress, str | None], asyncio.Future[int]] = {}

    async def stream_for(
        self,
        target: TransportAddress,
        server_hostname: str | None,
        connection_id: int | None,
        context: ssl.SSLContext | None,
    ) -> tuple[StreamConnection, ConnectionInfo]:
        """``connection_id`` when still open, else an open connection to ``target``, else
        a new one (TLS checks the server certificate against ``server_hostname``, default
        ``target.host``, with ``context``)."""
        if connection_id is not None:
            entry = self._table.streams.get(connection_id)
            if entry is not None and not entry[0].closed:
                return entry
        found = self._table.reusable(target, server_hostname)
        if found is not None:
            return found
        key = (target, server_hostname)
        pending = self._connecting.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._connecting[key] = pending
            try:
                new_id = await self._connect(target, server_hostname, context)
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except BaseException as error:
                pending.set_exception(error)
                pending.exception()  # mark retrieved: there may be no concurrent sender
                raise
            else:
                pending.set_result(new_id)
            finally:
                del self._connecting[key]
        else:
            new_id = await asyncio.shield(pending)
        entry = self._table.streams.get(new_id)
        if entry is None:
            raise TransportError(f"connection to {target} closed before use")
        return entry

    async def _connect(
        self,
        target: TransportAddress,
        server_hostname: str | None,
        context: ssl.SSLContext | None,
    ) -> int:
        if self.closed:
            raise TransportError("transport manager is closed")
        loop = asyncio.get_running_loop()
        tls = target.transport is Transport.TLS
        if tls:
            if context is None:
                raise TransportError(f"no TLS client context to reach {target}")
            server_hostname = server_hostname or target.host
        sock = await self._connected_socket(target)
        stream = self._new_stream(
            target.transport,
            outbound=True,
            server_hostname=server_hostname if tls else None,
        )
        try:
            await loop.create_connection(
                lambda: stream,
                sock=sock,
                ssl=context if tls else None,
                server_hostname=server_hostname if tls else None,
                ssl_handshake_timeout=self.settings.tls_handshake_timeout if tls else None,
            )
        except OSError as error:  # ssl.SSLError and TimeoutError included
            sock.close()
            reason = describe_tls_error(error) if tls else describe_os_error(error)
            logger.warning("connection to %s failed: %s", target, reason)
            # python/cpython#109534, our side: see TlsListener._handshake (the cause is
            # kept, its traceback, which holds the SSLProtocol and its buffers, is not).
            error.__traceback__ = None
            error.__context__ = None
            raise TransportError(f"cannot connect to {target}: {reason}") from error
        if stream.id not in self._table.streams:
            raise TransportError(f"connection to {target} closed during setup")
        return stream.id

    async def _connected_socket(self, target: TransportAddress) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as error:
            raise TransportError(f"cannot resolve {target}: {error}") from error
        family, _, _, _, address = infos[0]
        local_host = self.settings.source_host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        ports = self._ports.candidates() if self._ports is not None else iter((0,))
        last_error: OSError | None = None
        for port in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((local_host, port))
            except OSError as error:
                sock.close()
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    last_error = error
                    continue  # busy or reserved: next port of the range
                raise TransportError(f"cannot bind {local_host}:{port}: {error}") from error
            try:
                await asyncio.wait_for(
                    loop.sock_connect(sock, address), self.settings.connect_timeout
                )
            except TimeoutError as error:
                sock.close()
                raise TransportError(f"connecting to {target} timed out") from error
            except OSError as error:
                sock.close()
                if error.errno == errno.EADDRNOTAVAIL and port != 0:
                    # Same 4-tuple still in TIME_WAIT: try another source port.
                    last_error = error
                    continue
                reason = describe_os_error(error)
                logger.warning("connection to %s failed: %s", target, reason)
                raise TransportError(f"cannot connect to {target}: {reason}") from error
            except BaseException:
                sock.close()
                raise
            return sock
        raise TransportError(
            f"no free source port in {self.settings.outbound_ports} to reach {target}"
            f" (last error: {last_error})"
        )


def describe_os_error(error: OSError) -> str:
    """The errno's own words ("Connection refused"), which asyncio's "Connect call failed"
    leaves out; zone status shows them."""
    if error.errno is not None and not isinstance(error, TimeoutError):
        return os.strerror(error.errno)
    return str(error) or type(error).__name__
