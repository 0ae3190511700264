"""The management HTTP server's machine endpoints over real sockets on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.management import ManagementServer, ManagementSettings, iso_times
from gateway.metrics import CallResult, GatewayMetrics
from gateway.status import GatewayStatus
from tests.gateway.test_status import sample_status

# -- settings ----------------------------------------------------------------------------


def test_settings_parse() -> None:
    assert ManagementSettings.parse("127.0.0.1:9090") == ManagementSettings("127.0.0.1", 9090)
    assert ManagementSettings.parse("[::1]:9191") == ManagementSettings("::1", 9191)
    assert ManagementSettings.parse(":9092") == ManagementSettings("127.0.0.1", 9092)
    assert str(ManagementSettings("::1", 9191)) == "[::1]:9191"
    assert ManagementSettings() == ManagementSettings("127.0.0.1", 9090)
    for bad in ("9090", "127.0.0.1:", "127.0.0.1:http", "::1:9090", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            ManagementSettings.parse(bad)


WALL = 1_800_000_000.0
"""The wall clock when the runtime's clock says 5000 (2027-01-15T08:00:00Z)."""


def test_iso_times_converts_every_time_and_keeps_ages() -> None:
    data = iso_times(sample_status(5000.0).to_json(), WALL - 5000.0)
    assert data["generated_at"] == "2027-01-15T08:00:00.000Z"
    assert data["system"]["started_at"] == "2027-01-15T07:00:00.000Z"
    assert data["system"]["uptime"] == 3600
    assert data["calls"][0]["started_at"] == "2027-01-15T07:59:47.500Z"
    media = data["calls"][0]["legs"][0]["media"]
    assert media[0]["last_packet_at"] == "2027-01-15T07:59:59.980Z"
    assert media[1]["last_packet_at"] is None  # nothing yet stays null


# -- over real sockets -------------------------------------------------------------------


@dataclass
class Runtime:
    """A stand-in for the gateway runtime: the server's input, not the thing under test."""

    draining: bool = False
    fail: bool = False
    calls: int = 0
    last_now: float | None = None

    def status(self, now: float) -> GatewayStatus:
        self.calls += 1
        self.last_now = now
        if self.fail:
            raise RuntimeError("runtime bug")
        return sample_status(now, draining=self.draining)


@dataclass
class Served:
    server: ManagementServer
    runtime: Runtime
    metrics: GatewayMetrics

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    runtime = Runtime()
    metrics = GatewayMetrics()
    server = ManagementServer(runtime, metrics, ManagementSettings("127.0.0.1", 0),
                              clock=lambda: 5000.0, wall_clock=lambda: WALL, read_timeout=0.5)
    async with server:
        yield Served(server, runtime, metrics)


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(fetch, url, method)


async def raw(served: Served, data: bytes, *, close_write: bool = False) -> bytes:
    """Send raw bytes and read the whole answer (until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode()


async def test_status_json(served: Served) -> None:
    code, headers, body = await get(served.base + "/status")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    data = json.loads(body)
    expected = iso_times(json.loads(json.dumps(sample_status(5000.0).to_json())), WALL - 5000.0)
    # the task count is the serving loop's own at the time of the snapshot
    assert isinstance(data["tasks"], int) and data["tasks"] >= 1
    expected["tasks"] = data["tasks"]
    assert data == expected
    assert data["generated_at"] == "2027-01-15T08:00:00.000Z"
    assert served.runtime.last_now == 5000.0  # the server's clock is what the source sees
    assert data["zones"][1]["status"] == "Failed: 408 Request Timeout to OPTIONS"


async def test_metrics_text(served: Served) -> None:
    served.metrics.call_started()
    served.metrics.call_ended(CallResult.FAILED)
    code, headers, body = await get(served.base + "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    values = {(s.name, tuple(s.labels.items())): s.value
              for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert values[("gateway_calls_total", (("result", "failed"),))] == 1
    assert values[("gateway_active_calls", ())] == 0


async def test_healthz_follows_draining(served: Served) -> None:
    code, _, body = await get(served.base + "/healthz")
    assert (code, body) == (200, b"ok\n")
    served.runtime.draining = True
    code, _, body = await get(served.base + "/healthz")
    assert (code, body) == (503, b"draining\n")


async def test_unknown_path_and_method(served: Served) -> None:
    code, _, body = await get(served.base + "/nope")
    assert code == 404 and b"/status" in body
    code, headers, _ = await get(served.base + "/status", method="POST")
    assert code == 405
    assert headers["Allow"] == "GET, HEAD"
    code, _, _ = await get(served.base + "/metrics", method="DELETE")
    assert code == 405
    assert served.runtime.calls == 0


async def test_head_has_headers_but_no_body(served: Served) -> None:
    answer = await raw(served, b"HEAD /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_line(answer) == "HTTP/1.1 200 OK"
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    assert length > 100 and body == b""


@pytest.mark.parametrize("data", [
    b"garbage\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # TLS hello
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"b" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 40000 + b"\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"G(T /status HTTP/1.1\r\nHost: x\r\n\r\n",
])
async def test_malformed_requests_get_4xx_and_server_lives(served: Served, data: bytes) -> None:
    answer = await raw(served, data)
    assert re.match(r"HTTP/1\.[01] 4\d\d ", status_line(answer)), answer[:200]
    code, _, _ = await get(served.base + "/healthz")
    assert code == 200


async def test_silent_and_cut_short_connections_are_closed_quietly(served: Served) -> None:
    assert await raw(served, b"", close_write=True) == b""
    # cut short: no crash
    await raw(served, b"GET /status HTTP/1.1\r\nHost: x\r\n", close_write=True)
    code, _, _ = await get(served.base + "/healthz")
    assert code == 200


async def test_a_call_id_too_long_is_400(served: Served) -> None:
    code, _, _ = await get(served.base + "/api/call/" + "x" * 300)
    assert code == 400


async def test_failing_source_gives_500_and_server_lives(served: Served) -> None:
    served.runtime.fail = True
    code, _, body = await get(served.base + "/status")
    assert (code, body) == (500, b"internal error\n")
    served.runtime.fail = False
    code, _, _ = await get(served.base + "/status")
    assert code == 200


async def test_many_concurrent_clients(served: Served) -> None:
    results = await asyncio.gather(*(get(served.base + "/metrics") for _ in range(20)))
    assert [code for code, _, _ in results] == [200] * 20


async def test_close_drops_open_connections_and_frees_the_port() -> None:
    server = ManagementServer(Runtime(), GatewayMetrics(),
                              ManagementSettings("127.0.0.1", 0))
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /status HTTP/1.1\r\n")  # and never finish
    await writer.drain()
    await asyncio.wait_for(server.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    # The same port can be bound again at once (SO_REUSEADDR), e.g. after a restart.
    again = ManagementServer(Runtime(), GatewayMetrics(),
                             ManagementSettings("127.0.0.1", port))
    async with again:
        assert again.port == port


async def test_ipv6_loopback() -> None:
    server = ManagementServer(Runtime(), GatewayMetrics(),
                              ManagementSettings("::1", 0))
    try:
        await server.start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert server.address_text == f"[::1]:{server.port}"
        code, _, body = await get(f"http://[::1]:{server.port}/healthz")
        assert (code, body) == (200, b"ok\n")
    finally:
        await server.close()


async def test_start_twice_is_an_error(served: Served) -> None:
    with pytest.raises(RuntimeError):
        await served.server.start()


async def test_machine_endpoints_close_the_connection(served: Served) -> None:
    """Scripts that read until the server closes keep working (one request per connection)."""
    for path in ("/status", "/metrics", "/healthz"):
        answer = await asyncio.wait_for(
            raw(served, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()), 10)
        assert status_line(answer) == "HTTP/1.1 200 OK"
        assert b"Connection: close" in answer
