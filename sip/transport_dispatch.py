"""What a SIP transport does with the bytes of one received message.

It parses them and hands the message up with its source and connection, after stamping a
request's top Via with where it really came from (RFC 3261 §18.2.1, RFC 3581). What cannot
be parsed is answered here (400 naming the problem, 413 when too large) and never reaches
the stack; a listener keeps serving whatever arrives.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from sip.errors import ParseError, ProtocolError
from sip.framing import Oversized
from sip.message import Request, Response, error_response, parse_message
from sip.transport_settings import TransportCounters
from sip.transport_stream import StreamConnection
from sip.transport_types import ConnectionInfo, ReceivedMessage, TransportAddress, format_address

__all__ = [
    "Dispatcher",
    "MessageHandler",
    "OversizedHandler",
    "stamp_received",
]

# The transport layer logs under one name, which deployments and tests set levels on.
logger = logging.getLogger("sip.transport")

MessageHandler = Callable[[ReceivedMessage], None]
OversizedHandler = Callable[[Response, ConnectionInfo, int], None]


class Dispatcher:
    """Parses received messages and hands them up, or answers them itself.

    Messages go to ``on_message`` when given, else to ``queue``.
    """

    def __init__(
        self,
        max_message_size: int,
        counters: TransportCounters,
        *,
        on_message: MessageHandler | None,
        queue: asyncio.Queue[ReceivedMessage],
    ) -> None:
        self.max_message_size = max_message_size
        self._counters = counters
        self._on_message = on_message
        self._queue = queue

    def deliver(
        self,
        data: bytes,
        source: TransportAddress,
        info: ConnectionInfo,
        reply: Callable[[bytes], None],
    ) -> None:
        """Parse one message from ``source`` and hand it up; ``reply`` answers it."""
        try:
            message = parse_message(data, max_size=self.max_message_size)
        except ProtocolError as error:
            self.answer_malformed(data, error, source, reply)
            return
        except Exception:
            # A parser bug must not take the listener down; the contract says ParseError only.
            logger.exception("parser failed on a message from %s", source)
            return
        if isinstance(message, Request):
            try:
                stamp_received(message, source.host, source.port)
            except ProtocolError as error:
                self.answer_malformed(data, error, source, reply)
                return
        received = ReceivedMessage(message, source, info, data)
        if self._on_message is None:
            self._queue.put_nowait(received)
            return
        try:
            self._on_message(received)
        except Exception:
            logger.exception("message handler failed for a message from %s", source)

    def answer_malformed(
        self,
        data: bytes,
        error: ProtocolError,
        source: object,
        reply: Callable[[bytes], None],
    ) -> None:
        """Answer a request that cannot be handled (a response is only dropped)."""
        try:
            answer = error_response(data, error)
        except Exception:
            logger.exception("could not build an error response for %s", source)
            answer = None
        if answer is None:
            logger.warning("dropped malformed message from %s: %s", source, error.message)
            return
        logger.warning(
            "malformed request from %s answered %d: %s", source, error.status_hint, error.message
        )
        try:
            reply(answer)
        except (OSError, ConnectionError) as send_error:
            logger.info("could not answer %s: %s", source, send_error)

    def oversized(
        self,
        stream: StreamConnection,
        item: Oversized,
        info: ConnectionInfo | None,
        on_response: OversizedHandler | None,
    ) -> None:
        """A message over the size limit on ``stream`` (``info``: its entry, if open):
        a request is answered 413, a response goes to ``on_response``; the connection
        is kept."""
        self._counters.oversized += 1
        peer = format_address(stream.peername)
        error = ParseError(
            f"message larger than {self.max_message_size} bytes ({item.size} declared)",
            413,
        )
        if item.head.startswith(b"SIP/"):
            self._oversized_response(stream, item, info, on_response)
            return
        answer = error_response(item.head, error)
        if answer is None:
            logger.warning(
                "connection %d from %s: an oversized message passed over (%s); connection kept",
                stream.id,
                peer,
                error.message,
            )
            return
        logger.warning(
            "connection %d from %s: request answered 413 (%s); connection kept",
            stream.id,
            peer,
            error.message,
        )
        try:
            stream.write(answer)
        except ConnectionError as send_error:
            logger.info("could not answer %s: %s", peer, send_error)

    def _oversized_response(
        self,
        stream: StreamConnection,
        item: Oversized,
        info: ConnectionInfo | None,
        on_response: OversizedHandler | None,
    ) -> None:
        # A response cannot be answered: its headers (parsed without the body) go to
        # ``on_response``, which ends its client transaction at once (a proxy then
        # answers upstream) instead of leaving it to Timer B/F.
        peer = format_address(stream.peername)
        logger.warning(
            "connection %d from %s: a response of %d bytes (limit %d) passed over; connection kept",
            stream.id,
            peer,
            item.size,
            self.max_message_size,
        )
        if info is None or on_response is None:
            return
        try:
            response = parse_message(_bodiless(item.head))
        except ProtocolError as error:
            logger.info("oversized response from %s not parsed: %s", peer, error.message)
            return
        if isinstance(response, Response):
            try:
                on_response(response, info, item.size)
            except Exception:
                logger.exception("oversized-response handler failed for %s", peer)


def stamp_received(request: Request, host: str, port: int) -> None:
    """RFC 3261 §18.2.1 and RFC 3581 §4: the server transport records where a request
    really came from on its top Via (received when sent-by differs, rport when asked for),
    so that responses and proxies behind NAT reach the sender."""
    via = request.top_via
    params: dict[str, str | None] = {}
    if via.host.strip("[]") != host:
        params["received"] = host
    if via.has_rport:
        params["rport"] = str(port)
        params.setdefault("received", host)
    if params:
        request.headers.pop_first("Via")
        request.headers.prepend("Via", str(via.with_params(**params)))


_BODY_HEADER = re.compile(
    rb"\r?\n(?:content-length|l|content-type|c|content-encoding|e)[ \t]*:(?:[^\r\n]|\r?\n[ \t])*",
    re.IGNORECASE,
)


def _bodiless(head: bytes) -> bytes:
    """A message's header section without its body headers, with Content-Length 0."""
    line_end = head.index(b"\n")
    if head[line_end - 1 : line_end] == b"\r":
        line_end -= 1
    headers = _BODY_HEADER.sub(b"", head[line_end:].rstrip(b"\r\n"))
    return head[:line_end] + headers + b"\r\nContent-Length: 0\r\n\r\n"
