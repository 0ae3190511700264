"""The management HTTP server: ``/status`` (JSON), ``/metrics`` (Prometheus), ``/healthz``.

A deliberately small HTTP/1.1 server on ``asyncio.start_server`` (stdlib only): GET and HEAD,
one request per connection (``Connection: close``), which is all a browser, ``curl`` or a
Prometheus scraper needs. Parsing is a pure function (:func:`parse_request_head`) and routing
another (:meth:`ManagementServer.respond`); the asyncio part only moves bytes. Malformed
requests get a 4xx and the connection is closed: nothing a client sends can take the
listener down.

Bound to 127.0.0.1:9090 by default (``[system] management``): the status page shows call
details, so it is for the host's operators, not the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType

from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewayMetrics
from gateway.status import StatusSource

__all__ = [
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "ManagementServer",
    "ManagementSettings",
    "parse_request_head",
]

logger = logging.getLogger(__name__)

MAX_LINE = 4096
"""Longest request or header line accepted (431 beyond)."""
MAX_HEAD = 16384
"""Most bytes of request line + headers accepted (431 beyond)."""
MAX_HEADERS = 100
READ_TIMEOUT = 10.0
"""Seconds a client has to send its request head (408 after)."""
WRITE_TIMEOUT = 10.0
"""Seconds a client has to take the response before the connection is dropped."""

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
ALLOWED_METHODS = ("GET", "HEAD")

# RFC 9110 §5.6.2: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
#   "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
#   HTTP-version = "HTTP/" DIGIT "." DIGIT
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (\S+) HTTP/(\d)\.(\d)")
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS (no whitespace before ":")
_FIELD_LINE = re.compile(rf"({_TOKEN}):[ \t]*(.*?)[ \t]*")
# field-value: visible characters, SP/HTAB, obs-text; never CTLs.
_BAD_FIELD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ManagementSettings:
    """Where the management server listens."""

    host: str = "127.0.0.1"
    """Bind address (an IP literal)."""
    port: int = 9090
    """TCP port; 0 picks a free one (tests)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"management port out of range: {self.port}")

    @classmethod
    def parse(cls, text: str) -> ManagementSettings:
        """``"127.0.0.1:9090"``, ``"[::1]:9090"`` or ``":9090"`` (host defaults to loopback)."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"management address must be HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"an IPv6 management address needs brackets: {text!r}")
        return cls(host or "127.0.0.1", int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class HttpError(Exception):
    """A request we answer with an error status (then close the connection)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head."""

    method: str
    target: str
    """The request-target as sent (``/status?x=1``)."""
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]
    """Field names lower-cased, in order."""

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of a field, or None."""
        lowered = name.lower()
        return next((v for n, v in self.headers if n == lowered), None)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response (the body is always small enough to hold in memory)."""

    status: HTTPStatus
    body: bytes = b""
    content_type: str = TEXT_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = field(default=())
    """Extra header fields."""

    @classmethod
    def text(cls, status: HTTPStatus, text: str,
             headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        return cls(status, text.encode() + b"\n", TEXT_CONTENT_TYPE, headers)

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status.value} {self.status.phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def parse_request_head(lines: list[bytes]) -> HttpRequest:
    """Parse a request line and header lines (each without its line ending).

    Raises :class:`HttpError` (400 / 505) for anything malformed; never anything else.
    """
    if not lines:
        raise HttpError(HTTPStatus.BAD_REQUEST, "empty request")
    # latin-1 maps every byte, so decoding cannot fail; the regexes reject what is not ASCII.
    match = _REQUEST_LINE.fullmatch(lines[0].decode("latin-1"))
    if match is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, major, minor = match.groups()
    if major != "1":
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{major}.{minor}")
    if not target.startswith("/") or not target.isascii():
        raise HttpError(HTTPStatus.BAD_REQUEST, "request target must be an origin-form path")
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        text = raw.decode("latin-1")
        if text[:1] in (" ", "\t"):
            # RFC 9112 §5.2: a server MUST reject obs-fold (or replace it); we reject.
            raise HttpError(HTTPStatus.BAD_REQUEST, "obsolete line folding")
        field_match = _FIELD_LINE.fullmatch(text)
        if field_match is None or _BAD_FIELD_VALUE.search(field_match.group(2)):
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header field")
        headers.append((field_match.group(1).lower(), field_match.group(2)))
    request = HttpRequest(method, target, (1, int(minor)), tuple(headers))
    # RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host gets 400.
    if request.version >= (1, 1) and sum(1 for n, _ in headers if n == "host") != 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, "HTTP/1.1 request needs one Host header")
    return request


class ManagementServer:
    """Serves a :class:`StatusSource` and a :class:`GatewayMetrics` over HTTP.

    Use as ``async with ManagementServer(source, metrics, settings) as server:``, or call
    :meth:`start` and :meth:`close`. ``clock`` gives the ``now`` passed to
    ``source.status(now)``; it defaults to the running loop's clock. A client gets
    ``read_timeout`` seconds to send its request head.
    """

    def __init__(self, source: StatusSource, metrics: GatewayMetrics,
                 settings: ManagementSettings | None = None, *,
                 clock: Callable[[], float] | None = None,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.source = source
        self.metrics = metrics
        self.settings = settings or ManagementSettings()
        self._clock = clock
        self.read_timeout = read_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("management server already started")
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        self._server = await asyncio.start_server(
            self._on_connection, self.settings.host, self.settings.port,
            limit=MAX_LINE + 2, reuse_address=True)
        logger.info("management HTTP on %s", self.address_text)

    async def close(self) -> None:
        """Stop listening and drop connections still in progress."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> ManagementServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("management server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address_text(self) -> str:
        return str(ManagementSettings(self.settings.host, self.port))

    # -- routing (pure but for the source and metrics it reads) -----------------------------

    def respond(self, request: HttpRequest) -> HttpResponse:
        """The response to a well-formed request."""
        routes: dict[str, Callable[[], HttpResponse]] = {
            "/status": self._status,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
        }
        route = routes.get(request.path)
        if route is None:
            return HttpResponse.text(HTTPStatus.NOT_FOUND,
                                     f"not found; try {', '.join(sorted(routes))}")
        if request.method not in ALLOWED_METHODS:
            return HttpResponse.text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD",
                                     (("Allow", ", ".join(ALLOWED_METHODS)),))
        try:
            return route()
        except Exception:
            # A bug in a status provider must cost one 500, not the server.
            logger.exception("management %s failed", request.path)
            return HttpResponse.text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def _now(self) -> float:
        assert self._clock is not None, "start() sets the clock"
        return self._clock()

    def _status(self) -> HttpResponse:
        snapshot = self.source.status(self._now())
        body = json.dumps(snapshot.to_json(), indent=2, allow_nan=False).encode() + b"\n"
        return HttpResponse(HTTPStatus.OK, body, JSON_CONTENT_TYPE)

    def _metrics(self) -> HttpResponse:
        return HttpResponse(HTTPStatus.OK, self.metrics.render(), METRICS_CONTENT_TYPE)

    def _healthz(self) -> HttpResponse:
        if self.source.status(self._now()).healthy:
            return HttpResponse.text(HTTPStatus.OK, "ok")
        return HttpResponse.text(HTTPStatus.SERVICE_UNAVAILABLE, "draining")

    # -- connections -----------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except (TimeoutError, ConnectionError):
            pass  # the client went away or would not read: nothing to tell it
        except Exception:
            logger.exception("management connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            lines = await asyncio.wait_for(self._read_head(reader), self.read_timeout)
            if lines is None:
                return  # closed before sending anything
            request = parse_request_head(lines)
            head_only = request.method == "HEAD"
            response = self.respond(request)
        except HttpError as exc:
            logger.debug("management: %s from %s", exc.message,
                         writer.get_extra_info("peername"))
            response = HttpResponse.text(exc.status, exc.message)
        except TimeoutError:
            response = HttpResponse.text(HTTPStatus.REQUEST_TIMEOUT, "request head too slow")
        writer.write(response.encode(head_only=head_only))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
        """Request line and header lines, without line endings; None on a silent close."""
        lines: list[bytes] = []
        total = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if not lines and not exc.partial.strip():
                    return None
                raise HttpError(HTTPStatus.BAD_REQUEST, "request head cut short") from None
            except asyncio.LimitOverrunError:
                raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request line or header too long") from None
            total += len(line)
            if total > MAX_HEAD or len(lines) > MAX_HEADERS:
                raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head too large")
            # RFC 9112 §2.2: bare LF is accepted as a line terminator.
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if not line:
                if not lines:
                    continue  # RFC 9112 §2.2: ignore empty lines before the request line
                return lines
            lines.append(line)
