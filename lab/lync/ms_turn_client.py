"""A Lync client's MS-TURN allocation on the A/V Edge ([MS-TURN] client side, over UDP, or
over TCP as a client does where UDP is blocked: framed, or pseudo-TLS first on 443).

Why here and hand-written: aioice's TURN client speaks only RFC 5766/8656, and a real Lync /
Skype for Business client (and pidgin-sipe through libnice's OC2007R2 mode) allocates on
the A/V Edge with MS-TURN, using the credentials the FE's MRAS service handed out. The wire
format is ``turn.ms_turn``'s (the server's codec); this module holds the client's side of the
exchange and presents the allocation to aioice the way aioice's own ``TurnTransport`` does
(``sendto`` / ``get_extra_info("sockname" | "related_address")`` / ``close``), so an aioice
``StunProtocol`` (the client's ICE) runs on it unchanged.

What the client sends, as [MS-TURN] 3.2 and libnice's MS modes do:

- Allocate with MAGIC-COOKIE and MS-VERSION; the 401 brings REALM and NONCE; the Allocate
  again with USERNAME, REALM, NONCE, MESSAGE-INTEGRITY (long-term key over the raw MRAS
  username and password, i.e. their base64 decoded);
- the success carries the relayed address (MAPPED-ADDRESS), the reflexive one
  (XOR-MAPPED-ADDRESS 0x8020), LIFETIME and MS-SEQUENCE-NUMBER (the connection id);
- to a peer: Send requests (never answered) with DESTINATION-ADDRESS, DATA,
  MS-SEQUENCE-NUMBER, USERNAME, REALM, MESSAGE-INTEGRITY; once ICE has chosen the peer, Set
  Active Destination, after which data to and from it travels unencapsulated;
- from peers: Data indications (0x0115), or raw datagrams from the active destination;
- refresh: Allocate again before the lifetime ends; release: Allocate with LIFETIME 0.

The exchange itself is sans-IO (``MsTurnSession``: bytes in, bytes out); ``MsTurnProtocol``
is the asyncio adapter (one UDP socket, retransmissions, the refresh timer), and
``MsTurnStreamProtocol`` the same over one TCP connection: every message in an [MS-TURN]
2.1.4 frame (0x02 control, 0x03 data for the active destination), after the pseudo-TLS
handshake ([MS-TURN] 2.1.3) when asked. An allocation made over TCP relays TCP (the A/V
Edge's TCP relayed address): what is sent to a peer is that peer's byte stream, so a caller
doing ICE-TCP frames each packet itself (RFC 4571), as libnice does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turn import ms_turn
from turn.errors import DecodeError
from turn.ms_turn import MsAttr, MsMessage, MsType

__all__ = [
    "MsTurnError",
    "MsTurnProtocol",
    "MsTurnSession",
    "MsTurnStreamProtocol",
    "MsTurnTransport",
    "create_ms_turn_endpoint",
    "create_ms_turn_stream_endpoint",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]

MS_VERSION = 1
"""MS-VERSION we send: 1, as [MS-ICE] clients (and libnice's OC2007R2 mode) send it."""
RETRANSMISSIONS = (0.5, 1.0, 2.0, 4.0)
"""Seconds between an unanswered request's copies (RFC 3489 style doubling), then give up."""
STREAM_WAIT = (7.5,)
"""Over TCP a request is sent once (the stream is reliable) and waited for this long."""


class MsTurnError(ConnectionError):
    """The A/V Edge refused (or never answered) an allocation request."""


@dataclass(frozen=True, slots=True)
class Allocated:
    """What a successful Allocate told us."""

    relayed: Address
    mapped: Address
    lifetime: int


class MsTurnSession:
    """The client side of one MS-TURN allocation, sans-IO: it builds requests and reads
    answers; the caller sends and receives (and keeps time)."""

    def __init__(self, username: bytes, password: bytes, *, lifetime: int | None = None) -> None:
        self.username = username
        """Raw username (an MRAS username base64-decoded, or a static account's text)."""
        self.password = password
        self.lifetime = lifetime
        """LIFETIME to ask for (None: the server's default)."""
        self.realm: bytes | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        self.connection_id: bytes | None = None
        self.sequence = 0
        """The last MS-SEQUENCE-NUMBER the server has from us (it must grow)."""
        self.allocated: Allocated | None = None
        self.active_destination: Address | None = None

    # -- requests ---------------------------------------------------------------------------

    def allocate(self, lifetime: int | None = None) -> tuple[bytes, bytes]:
        """(transaction id, Allocate request): unauthenticated until a 401 taught us the
        realm and nonce; a refresh (or, with ``lifetime`` 0, the release) once allocated."""
        tid = os.urandom(ms_turn.TRANSACTION_ID_LENGTH)
        attrs: list[tuple[int, bytes]] = [(MsAttr.MS_VERSION, ms_turn.pack_u32(MS_VERSION))]
        asked = lifetime if lifetime is not None else self.lifetime
        if asked is not None:
            attrs.append((MsAttr.LIFETIME, ms_turn.pack_u32(asked)))
        if self.key is None or self.realm is None or self.nonce is None:
            return tid, ms_turn.encode(MsType.ALLOCATE_REQUEST, tid, attrs)
        attrs += [(MsAttr.USERNAME, self.username), (MsAttr.REALM, self.realm),
                  (MsAttr.NONCE, self.nonce)]
        if self.connection_id is not None:
            attrs.append((MsAttr.MS_SEQUENCE_NUMBER, self._next_sequence()))
        return tid, ms_turn.encode(MsType.ALLOCATE_REQUEST, tid, attrs, key=self.key)

    def send(self, data: bytes, peer: Address) -> bytes:
        """A Send request carrying ``data`` to ``peer`` (or ``data`` itself when ``peer`` is
        the active destination)."""
        if peer == self.active_destination:
            return data
        return self._signed(MsType.SEND_REQUEST, os.urandom(ms_turn.TRANSACTION_ID_LENGTH), [
            (MsAttr.DESTINATION_ADDRESS, ms_turn.pack_address(peer)), (MsAttr.DATA, data)])

    def set_active_destination(self, peer: Address) -> tuple[bytes, bytes]:
        """(transaction id, Set Active Destination request) naming ``peer``."""
        tid = os.urandom(ms_turn.TRANSACTION_ID_LENGTH)
        return tid, self._signed(MsType.SET_ACTIVE_DESTINATION_REQUEST, tid, [
            (MsAttr.DESTINATION_ADDRESS, ms_turn.pack_address(peer))])

    def _signed(self, msg_type: int, tid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
        # Send / Set Active Destination: USERNAME, REALM, MESSAGE-INTEGRITY, no NONCE.
        if self.key is None or self.realm is None or self.connection_id is None:
            raise MsTurnError("no MS-TURN allocation yet")
        return ms_turn.encode(msg_type, tid, [
            (MsAttr.MS_VERSION, ms_turn.pack_u32(MS_VERSION)), *attrs,
            (MsAttr.USERNAME, self.username), (MsAttr.REALM, self.realm),
            (MsAttr.MS_SEQUENCE_NUMBER, self._next_sequence())], key=self.key)

    def _next_sequence(self) -> bytes:
        assert self.connection_id is not None
        self.sequence += 1
        return ms_turn.pack_sequence(self.connection_id, self.sequence)

    # -- answers ----------------------------------------------------------------------------

    def allocate_answer(self, msg: MsMessage) -> bool:
        """Read the answer to our Allocate: True when it succeeded, False when it asks for
        credentials again (401 / 438: send ``allocate()`` again); MsTurnError otherwise."""
        if msg.msg_type == MsType.ALLOCATE_ERROR:
            value = msg.get(MsAttr.ERROR_CODE)
            code, reason = ms_turn.unpack_error_code(value) if value else (0, "no ERROR-CODE")
            realm, nonce = msg.get(MsAttr.REALM), msg.get(MsAttr.NONCE)
            retry = code == 438 or (code == 401 and self.nonce is None)
            if retry and realm is not None and nonce is not None:
                self.realm, self.nonce = realm, nonce
                self.key = ms_turn.long_term_key(self.username, realm, self.password)
                return False
            raise MsTurnError(f"A/V Edge refused the allocation: {code} {reason}")
        if msg.msg_type != MsType.ALLOCATE_RESPONSE:
            raise MsTurnError(f"unexpected MS-TURN message 0x{msg.msg_type:04x}")
        if self.key is None or not msg.check_integrity(self.key):
            raise MsTurnError("Allocate response without a valid MESSAGE-INTEGRITY")
        relayed, mapped = msg.get(MsAttr.MAPPED_ADDRESS), msg.get(MsAttr.XOR_MAPPED_ADDRESS)
        lifetime, sequence = msg.get(MsAttr.LIFETIME), msg.get(MsAttr.MS_SEQUENCE_NUMBER)
        if relayed is None or mapped is None or lifetime is None or sequence is None:
            raise MsTurnError("Allocate response lacks MAPPED-ADDRESS, XOR-MAPPED-ADDRESS, "
                              "LIFETIME or MS-SEQUENCE-NUMBER")
        connection_id, _ = ms_turn.unpack_sequence(sequence)
        if self.connection_id not in (None, connection_id):
            raise MsTurnError("Allocate response names another connection")
        self.connection_id = connection_id
        self.allocated = Allocated(ms_turn.unpack_address(relayed),
                                   ms_turn.unpack_xor_mapped(mapped, msg.transaction_id),
                                   ms_turn.unpack_u32(lifetime))
        return True

    def incoming(self, data: bytes, source: Address, server: Address
                 ) -> tuple[bytes, Address] | MsMessage | None:
        """A datagram on our socket: (payload, peer) for data from a peer, the message for a
        response to route to its transaction, None for what we drop."""
        if source != server:
            return None  # we talk to the A/V Edge only
        if not ms_turn.is_ms_turn(data):
            if self.active_destination is None:
                return None
            return data, self.active_destination
        try:
            msg = ms_turn.parse(data)
        except DecodeError as error:
            logger.info("MS-TURN client: dropped a malformed message: %s", error.message)
            return None
        if msg.msg_type == MsType.DATA_INDICATION:
            remote, payload = msg.get(MsAttr.REMOTE_ADDRESS), msg.get(MsAttr.DATA)
            if remote is None or payload is None:
                return None
            try:
                return payload, ms_turn.unpack_address(remote)
            except DecodeError:
                return None
        return msg


class MsTurnProtocol(asyncio.DatagramProtocol):
    """The asyncio adapter: one UDP socket toward the A/V Edge."""

    def __init__(self, server: Address, session: MsTurnSession,
                 retransmissions: tuple[float, ...] = RETRANSMISSIONS) -> None:
        self.server = server
        self.session = session
        self.retransmissions = retransmissions
        """Seconds between an unanswered request's copies."""
        self.transport: asyncio.DatagramTransport | None = None
        self.receiver: asyncio.DatagramProtocol | None = None
        """The protocol our relayed data goes to (aioice's ``StunProtocol``)."""
        self._pending: dict[bytes, asyncio.Future[MsMessage]] = {}
        self._refresh: asyncio.TimerHandle | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MsTurnError("MS-TURN socket closed"))
        if self.receiver is not None:
            self.receiver.connection_lost(exc)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        result = self.session.incoming(data, (addr[0], addr[1]), self.server)
        if isinstance(result, MsMessage):
            future = self._pending.pop(result.transaction_id, None)
            if future is not None and not future.done():
                future.set_result(result)
        elif result is not None and self.receiver is not None:
            self.receiver.datagram_received(*result)

    async def request(self, tid: bytes, data: bytes) -> MsMessage:
        """Send ``data`` until its answer comes (RETRANSMISSIONS)."""
        assert self.transport is not None
        future: asyncio.Future[MsMessage] = asyncio.get_running_loop().create_future()
        self._pending[tid] = future
        try:
            for wait in self.retransmissions:
                self.transport.sendto(data, self.server)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    continue
            raise MsTurnError(f"A/V Edge {self.server[0]}:{self.server[1]} did not answer")
        finally:
            self._pending.pop(tid, None)

    async def allocate(self, lifetime: int | None = None) -> Allocated:
        """Allocate (or refresh), answering the 401 / 438 challenges."""
        for _ in range(3):
            answer = await self.request(*self.session.allocate(lifetime))
            if self.session.allocate_answer(answer):
                allocated = self.session.allocated
                assert allocated is not None
                self._schedule_refresh(allocated.lifetime)
                return allocated
        raise MsTurnError("A/V Edge kept asking for credentials")

    def _schedule_refresh(self, lifetime: int) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        loop = asyncio.get_running_loop()
        # A minute before it ends (half of it when it is short), as aioice refreshes.
        delay = max(1.0, lifetime - 60 if lifetime > 120 else lifetime / 2)
        self._refresh = loop.call_later(
            delay, lambda: asyncio.ensure_future(self._refresh_now()))

    async def _refresh_now(self) -> None:
        try:
            await self.allocate()
        except (MsTurnError, DecodeError) as error:
            logger.warning("MS-TURN refresh on %s:%d failed: %s", *self.server, error)

    def send(self, data: bytes, peer: Address) -> None:
        if self._closed or self.transport is None or self.transport.is_closing():
            return
        self.transport.sendto(self.session.send(data, peer), self.server)

    async def set_active_destination(self, peer: Address) -> None:
        answer = await self.request(*self.session.set_active_destination(peer))
        if answer.msg_type != MsType.SET_ACTIVE_DESTINATION_RESPONSE:
            value = answer.get(MsAttr.ERROR_CODE)
            code, reason = ms_turn.unpack_error_code(value) if value else (0, "")
            raise MsTurnError(f"Set Active Destination refused: {code} {reason}")
        self.session.active_destination = peer

    async def release(self) -> None:
        """Delete the allocation (Allocate with LIFETIME 0), then close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._refresh is not None:
            self._refresh.cancel()
        try:
            if self.session.allocated is not None:
                answer = await self.request(*self.session.allocate(lifetime=0))
                if answer.msg_type != MsType.ALLOCATE_RESPONSE:
                    logger.warning("MS-TURN release on %s:%d refused", *self.server)
        except MsTurnError as error:
            logger.warning("MS-TURN release on %s:%d: %s", *self.server, error)
        finally:
            if self.transport is not None:
                self.transport.close()


class _Framed:
    """The TCP connection as ``MsTurnProtocol`` sees a socket: ``sendto`` frames each
    message (MS-TURN control 0x02, anything else data 0x03 for the active destination)."""

    def __init__(self, stream: asyncio.Transport) -> None:
        self.stream = stream

    def sendto(self, data: bytes, addr: Address) -> None:
        kind = ms_turn.FRAME_CONTROL if ms_turn.is_ms_turn(data) else ms_turn.FRAME_DATA
        self.stream.write(ms_turn.frame(kind, data))

    def is_closing(self) -> bool:
        return self.stream.is_closing()

    def close(self) -> None:
        self.stream.close()


class MsTurnStreamProtocol(MsTurnProtocol, asyncio.Protocol):
    """``MsTurnProtocol`` over one TCP connection to the A/V Edge (framed, optionally after
    the pseudo-TLS handshake)."""

    def __init__(self, server: Address, session: MsTurnSession, *, pseudo_tls: bool,
                 retransmissions: tuple[float, ...] = STREAM_WAIT) -> None:
        super().__init__(server, session, retransmissions)
        self.pseudo_tls = pseudo_tls
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tls = b""
        self._framer = ms_turn.MsStreamFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = transport
        assert isinstance(stream, asyncio.Transport)
        self.transport = _Framed(stream)  # type: ignore[assignment]
        if self.pseudo_tls:
            stream.write(ms_turn.pseudo_tls_client_hello(os.urandom(32)))
        else:
            self.handshake.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            if not self.handshake.done():
                self._tls += data
                length = ms_turn.pseudo_tls_record_length(self._tls)
                if length is None or len(self._tls) < length:
                    return
                if self._tls[5:6] != b"\x02":  # ServerHello (+ ServerHelloDone)
                    raise DecodeError("pseudo-TLS: no ServerHello")
                data, self._tls = self._tls[length:], b""
                self.handshake.set_result(None)
            self._framer.feed(data)
            while (frame := self._framer.next_frame()) is not None:
                self.datagram_received(frame[1], self.server)
        except DecodeError as error:
            logger.warning("MS-TURN over TCP to %s:%d: %s", *self.server, error.message)
            if not self.handshake.done():
                self.handshake.set_exception(MsTurnError(error.message))
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(MsTurnError("A/V Edge closed the connection"))
        super().connection_lost(exc)


class MsTurnTransport:
    """Looks like a datagram transport to aioice, as its ``TurnTransport`` does, over an
    MS-TURN allocation."""

    def __init__(self, protocol: MsTurnProtocol, allocated: Allocated) -> None:
        self.protocol = protocol
        self.allocated = allocated
        self._close_task: asyncio.Task[None] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.allocated.relayed
        if name == "related_address":
            return self.allocated.mapped
        return default

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._close_task is None:
            self.protocol.send(data, (addr[0], addr[1]))

    def is_closing(self) -> bool:
        return self._close_task is not None

    async def set_active_destination(self, peer: Address) -> None:
        await self.protocol.set_active_destination(peer)

    def close(self) -> None:
        """Release the allocation in the background (``closed`` awaits it)."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self.protocol.release())

    async def closed(self) -> None:
        self.close()
        assert self._close_task is not None
        await self._close_task


async def create_ms_turn_endpoint(
    protocol_factory: Callable[[], asyncio.DatagramProtocol], *, server: Address,
    username: bytes, password: bytes, local_host: str, lifetime: int | None = None,
    retransmissions: tuple[float, ...] = RETRANSMISSIONS,
) -> tuple[MsTurnTransport, asyncio.DatagramProtocol]:
    """Allocate on ``server`` from ``local_host``; the returned protocol (made by
    ``protocol_factory``) then sends and receives through the relay."""
    loop = asyncio.get_running_loop()
    _, turn = await loop.create_datagram_endpoint(
        lambda: MsTurnProtocol(server, MsTurnSession(username, password, lifetime=lifetime),
                               retransmissions),
        local_addr=(local_host, 0))
    try:
        allocated = await turn.allocate()
    except BaseException:
        if turn.transport is not None:
            turn.transport.close()
        raise
    return _wire(turn, allocated, protocol_factory)


async def create_ms_turn_stream_endpoint(
    protocol_factory: Callable[[], asyncio.DatagramProtocol], *, server: Address,
    username: bytes, password: bytes, local_host: str, pseudo_tls: bool = False,
    lifetime: int | None = None, timeout: float = 10.0,
) -> tuple[MsTurnTransport, asyncio.DatagramProtocol]:
    """Allocate over TCP (``pseudo_tls``: the handshake MS clients open 443 with first); the
    relayed address is a TCP one. The returned protocol gets each piece of a peer's byte
    stream as a datagram from that peer."""
    loop = asyncio.get_running_loop()
    session = MsTurnSession(username, password, lifetime=lifetime)
    stream, turn = await asyncio.wait_for(loop.create_connection(
        lambda: MsTurnStreamProtocol(server, session, pseudo_tls=pseudo_tls),
        server[0], server[1], local_addr=(local_host, 0)), timeout)
    try:
        await asyncio.wait_for(turn.handshake, timeout)
        allocated = await turn.allocate()
    except BaseException:
        stream.close()
        raise
    return _wire(turn, allocated, protocol_factory)


def _wire(turn: MsTurnProtocol, allocated: Allocated,
          protocol_factory: Callable[[], asyncio.DatagramProtocol],
          ) -> tuple[MsTurnTransport, asyncio.DatagramProtocol]:
    transport = MsTurnTransport(turn, allocated)
    protocol = protocol_factory()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    turn.receiver = protocol
    return transport, protocol
