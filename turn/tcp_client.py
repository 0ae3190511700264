"""A client's TCP connection to the server: STUN and ChannelData control, an RFC 6062 data
pipe once bound, or MS-TURN's framing (after its pseudo-TLS handshake, if any)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, cast

from . import ms_turn
from .allocation import FiveTuple, Transport
from .errors import DecodeError
from .framing import StreamFramer
from .ms_turn import FRAME_CONTROL, MsStreamFramer

if TYPE_CHECKING:
    from .server import TurnServer
    from .tcp_peers import PeerConnection

# The asyncio adapter logs under one name, as before it was split.
logger = logging.getLogger("turn.server")


class TcpClient(asyncio.Protocol):
    """A client TCP connection: STUN/ChannelData control, or an RFC 6062 data pipe."""

    def __init__(self, server: TurnServer) -> None:
        self.server = server
        self.core = server.core
        self.framer = StreamFramer()
        self.ms_framer: MsStreamFramer | None = None
        """Set when the connection speaks MS-TURN's framing ([MS-TURN] 2.1.4)."""
        self.fresh = True
        self.tls_buffer = b""
        self.loop = server._require_loop()
        self.transport: asyncio.Transport
        self.ft: FiveTuple | None = None
        self.pipe: PeerConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.ft = FiveTuple(Transport.TCP, (peer[0], peer[1]), (local[0], local[1]))
        self.server._clients[self.ft] = self
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.write(data, to_peer=True)
            return
        assert self.ft is not None
        if self.fresh and data:
            data = self._first_bytes(data)
            if not data:
                return
        if self.ms_framer is not None:
            self._ms_data_received(self.ms_framer, data)
            return
        try:
            self.framer.feed(data)
            while self.pipe is None:
                frame = self.framer.next_frame()
                if frame is None:
                    break
                if frame[0] >= 0x40:
                    result = self.core.channel_data_from_client(self.ft, frame, self.loop.time())
                    if result is not None:
                        relay = self.server._relay_udp.get(result[0].id)
                        if relay is not None:
                            relay.sendto(result[2], result[1])
                else:
                    self.server.control(frame, self.ft)
            if self.pipe is not None:
                rest = self.framer.take_remaining()
                if rest:
                    self.pipe.write(rest, to_peer=True)
        except DecodeError as exc:
            logger.info("closing TCP client %s: %s", self.ft.client, exc.message)
            self.transport.close()
        except Exception:
            logger.exception("error on TCP client %s", self.ft.client)
            self.transport.close()

    def _first_bytes(self, data: bytes) -> bytes:
        """Pick the connection's dialect from its first bytes; returns what is left to frame.

        0x02 / 0x03 start an MS-TURN frame; 0x16 a pseudo-TLS handshake ([MS-TURN] 2.1.3)
        after which MS-TURN frames follow; an RFC 8656 stream starts with a STUN type byte
        of 0x00 / 0x01 or a channel number 0x40-0x7F.
        """
        if data[0] == 0x16 or self.tls_buffer:
            self.tls_buffer += data
            try:
                length = ms_turn.pseudo_tls_record_length(self.tls_buffer)
                if length is None or len(self.tls_buffer) < length:
                    return b""
                ms_turn.check_pseudo_tls_client_hello(self.tls_buffer[:length])
            except DecodeError as exc:
                logger.info("closing TCP client %s: %s", self.ft and self.ft.client, exc.message)
                self.transport.close()
                return b""
            rest = self.tls_buffer[length:]
            self.tls_buffer = b""
            self.transport.write(ms_turn.pseudo_tls_server_hello(os.urandom(32), os.urandom(32)))
            self.ms_framer = MsStreamFramer()
            self.fresh = False
            return rest
        self.fresh = False
        if data[0] in (0x02, 0x03):
            self.ms_framer = MsStreamFramer()
        return data

    def _ms_data_received(self, framer: MsStreamFramer, data: bytes) -> None:
        assert self.ft is not None
        try:
            framer.feed(data)
            while not self.transport.is_closing():
                frame = framer.next_frame()
                if frame is None:
                    break
                kind, payload = frame
                if kind == FRAME_CONTROL:
                    self.server.control(payload, self.ft)
                else:
                    self.server.client_data(payload, self.ft)
        except DecodeError as exc:
            logger.info("closing MS-TURN TCP client %s: %s", self.ft.client, exc.message)
            self.transport.close()
        except Exception:
            logger.exception("error on MS-TURN TCP client %s", self.ft.client)
            self.transport.close()

    def pipe_to(self, peer: PeerConnection) -> None:
        self.pipe = peer

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe is not None and not self.pipe.transport.is_closing():
            self.pipe.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ft is None:
            return
        self.server._clients.pop(self.ft, None)
        if self.server._loop is not None and not self.server._loop.is_closed():
            self.server._run(self.core.connection_lost(self.ft, self.server._loop.time()))
