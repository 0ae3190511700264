"""Malformed input on a live SIP listener (the simulated endpoint, a real process) over
plain UDP and TCP sockets: each bad request is answered 400 (413 when too large) with a
reason that names the problem, unanswerable garbage is dropped, and the listener keeps
serving: the next request, and then SIPp uac calls, still succeed.

RFC 3261 §16.3/§21.4.1 (400 for a malformed request), §21.4.11 (413), §18.3 (a stream
message without a valid Content-Length cannot be framed: the connection is closed).
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.procs import GatewayProcess, start_gateway
from tests.peers.sipp import EXIT_ALL_OK, SippConfig, SippTransport, run_sipp

pytestmark = pytest.mark.peer

AOR_USER = "3001"
AOR = f"{AOR_USER}@video.example.com"
REPLY_TIMEOUT = 5.0
# The listener's default limit (TransportSettings.max_message_size).
MAX_MESSAGE = 65536


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("malformed")
    process = start_gateway(
        [
            "endpoint",
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            "--aor",
            AOR,
        ],
        expect=["udp", "tcp"],
        cwd=work,
    )
    try:
        yield process
    finally:
        process.stop()


# ---------------------------------------------------------------------------------------
# building requests and reading replies with plain sockets


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    """Last value of each header, lower-case names."""


def request(
    transport: str,
    local: tuple[str, int],
    remote: tuple[str, int],
    *,
    start: str | None = None,
    via: str | None = "",
    call_id: str | None = "",
    content_length: str | None = "0",
    body: bytes = b"",
) -> tuple[bytes, str]:
    """An OPTIONS request (bytes, Call-ID); each knob breaks one part of it.

    `via`/`call_id` "" means a well-formed value, None leaves the header out.
    """
    host, port = remote
    cid = call_id if call_id else f"{secrets.token_hex(8)}@{local[0]}"
    if via == "":
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        via = f"SIP/2.0/{transport.upper()} {local[0]}:{local[1]};branch={branch};rport"
    lines = [start or f"OPTIONS sip:{AOR_USER}@{host}:{port} SIP/2.0"]
    if via is not None:
        lines.append(f"Via: {via}")
    lines += [
        "Max-Forwards: 70",
        f"From: <sip:tester@{local[0]}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{AOR}>",
    ]
    if call_id is not None:
        lines.append(f"Call-ID: {cid}")
    lines.append("CSeq: 1 OPTIONS")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, cid


def parse_reply(data: bytes) -> Reply:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    match = re.fullmatch(r"SIP/2\.0 (\d{3}) (.*)", lines[0])
    assert match is not None, f"not a SIP response: {data[:200]!r}"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(match.group(1)), match.group(2), headers)


class UdpPeer:
    def __init__(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(REPLY_TIMEOUT)
        self.local: tuple[str, int] = self.sock.getsockname()

    def exchange(self, data: bytes) -> Reply:
        self.sock.sendto(data, self.remote)
        return self.receive()

    def receive(self) -> Reply:
        data, source = self.sock.recvfrom(65535)
        assert source == self.remote, f"reply from {source}, not the listener {self.remote}"
        return parse_reply(data)

    def close(self) -> None:
        self.sock.close()


class TcpPeer:
    def __init__(self, remote: tuple[str, int]) -> None:
        self.sock = socket.create_connection(remote, timeout=REPLY_TIMEOUT)
        self.local: tuple[str, int] = self.sock.getsockname()
        self.buffer = b""

    def exchange(self, data: bytes) -> Reply:
        self.sock.sendall(data)
        return self.receive()

    def receive(self) -> Reply:
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buffer[:head_end].decode("utf-8", "replace")
                length = re.search(r"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                total = head_end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buffer) >= total:
                    message, self.buffer = self.buffer[:total], self.buffer[total:]
                    return parse_reply(message)
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed with no complete reply (got {self.buffer[:200]!r})"
            self.buffer += chunk

    def closed_by_peer(self) -> bool:
        """Wait for the listener to close the connection; False if it sends data instead."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
                if b"\r\n\r\n" in self.buffer:
                    return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


Peer = UdpPeer | TcpPeer


@pytest.fixture(params=["udp", "tcp"])
def peer(request: pytest.FixtureRequest, endpoint: GatewayProcess) -> Iterator[Peer]:
    remote = endpoint.address(request.param)
    client: Peer = UdpPeer(remote) if request.param == "udp" else TcpPeer(remote)
    try:
        yield client
    finally:
        client.close()
    assert endpoint.peer.poll() is None, "the endpoint died:\n" + endpoint.peer.stderr()[-3000:]


def _transport(peer: Peer) -> str:
    return "udp" if isinstance(peer, UdpPeer) else "tcp"


def _remote(peer: Peer, endpoint: GatewayProcess) -> tuple[str, int]:
    return endpoint.address(_transport(peer))


def assert_still_serving(peer: Peer, endpoint: GatewayProcess) -> None:
    """A well-formed OPTIONS on the same socket is answered 200 with its own Call-ID."""
    data, cid = request(_transport(peer), peer.local, _remote(peer, endpoint))
    reply = peer.exchange(data)
    assert reply.status == 200, reply
    assert reply.headers.get("call-id") == cid, reply


def assert_new_connection_served(remote: tuple[str, int], endpoint: GatewayProcess) -> None:
    """After a connection was dropped, a new one to ``remote`` is served (OPTIONS 200)."""
    fresh = TcpPeer(remote)
    try:
        assert_still_serving(fresh, endpoint)
    finally:
        fresh.close()


# ---------------------------------------------------------------------------------------
# each malformed request


def test_well_formed_options_is_answered(peer: Peer, endpoint: GatewayProcess) -> None:
    assert_still_serving(peer, endpoint)


CASES: dict[str, tuple[dict[str, str | None], str]] = {
    "bad request line": (
        {"start": "OPTIONS sip:3001@127.0.0.1 SIP/2.0 trailing-junk"},
        "request line",
    ),
    "request line without URI": ({"start": "OPTIONS"}, "request line"),
    "Via without host": ({"via": "SIP/2.0/UDP"}, "Via"),
    "Via not a Via": ({"via": "not a via at all"}, "Via"),
    "missing Call-ID": ({"call_id": None}, "Call-ID"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_gets_400_naming_the_problem(
    case: str, peer: Peer, endpoint: GatewayProcess
) -> None:
    knobs, named = CASES[case]
    data, cid = request(_transport(peer), peer.local, _remote(peer, endpoint), **knobs)  # type: ignore[arg-type]
    reply = peer.exchange(data)
    assert reply.status == 400, reply
    assert named.lower() in reply.reason.lower(), reply
    if knobs.get("call_id", "") is not None:
        assert reply.headers.get("call-id") == cid, reply
    # The framed message was bad, not the stream: the same socket keeps working.
    assert_still_serving(peer, endpoint)


def test_udp_body_shorter_than_content_length_gets_400(endpoint: GatewayProcess) -> None:
    peer = UdpPeer(endpoint.address("udp"))
    try:
        data, cid = request("udp", peer.local, peer.remote, content_length="500", body=b"v=0\r\n")
        reply = peer.exchange(data)
        assert reply.status == 400 and "content-length" in reply.reason.lower(), reply
        assert reply.headers.get("call-id") == cid
        data, _ = request("udp", peer.local, peer.remote, content_length="abc")
        reply = peer.exchange(data)
        assert reply.status == 400 and "content-length" in reply.reason.lower(), reply
        assert_still_serving(peer, endpoint)
    finally:
        peer.close()


def test_tcp_unframeable_content_length_gets_400_then_close(endpoint: GatewayProcess) -> None:
    remote = endpoint.address("tcp")
    peer = TcpPeer(remote)
    try:
        data, _ = request("tcp", peer.local, remote, content_length="abc")
        reply = peer.exchange(data)
        assert reply.status == 400 and "content-length" in reply.reason.lower(), reply
        # Where the next message starts is unknown: the listener must drop the connection.
        assert peer.closed_by_peer()
    finally:
        peer.close()
    assert_new_connection_served(remote, endpoint)


def test_tcp_oversize_with_known_length_gets_413_and_keeps_the_connection(
    endpoint: GatewayProcess,
) -> None:
    # RFC 3261 §18.3: the Content-Length says where the next message starts, so the body
    # is passed over and the same connection serves the next request.
    remote = endpoint.address("tcp")
    peer = TcpPeer(remote)
    try:
        declared = MAX_MESSAGE + 10
        data, cid = request("tcp", peer.local, remote, content_length=str(declared))
        peer.sock.sendall(data + b"x" * 1024)
        reply = peer.receive()
        assert reply.status == 413, reply
        assert reply.headers.get("call-id") == cid
        assert "larger" in reply.reason.lower(), reply
        peer.sock.sendall(b"x" * (declared - 1024))  # the rest of the oversized body
        assert_still_serving(peer, endpoint)
    finally:
        peer.close()


def test_tcp_endless_headers_get_413_then_close(endpoint: GatewayProcess) -> None:
    # No blank line within the limit: where the message ends is unknown, so it closes.
    remote = endpoint.address("tcp")
    peer = TcpPeer(remote)
    try:
        data, _ = request("tcp", peer.local, remote)
        head = data[: data.index(b"\r\n\r\n")]
        filler = b"".join(b"\r\nX-Filler: " + b"a" * 1000 for _ in range(70))
        peer.sock.sendall(head + filler)  # no blank line: headers never end
        reply = peer.receive()
        assert reply.status == 413, reply
        assert "longer" in reply.reason.lower(), reply
        assert peer.closed_by_peer()
    finally:
        peer.close()
    assert_new_connection_served(remote, endpoint)


GARBAGE = bytes(range(256)) + b"\r\n\r\n" + secrets.token_bytes(64)


def test_udp_garbage_is_dropped_and_the_next_request_served(endpoint: GatewayProcess) -> None:
    peer = UdpPeer(endpoint.address("udp"))
    try:
        peer.sock.sendto(GARBAGE, peer.remote)
        peer.sock.sendto(b"\x00" * 3, peer.remote)
        # Nothing answers garbage (no Via to reply to): the first reply is the OPTIONS'.
        assert_still_serving(peer, endpoint)
    finally:
        peer.close()


def test_tcp_garbage_closes_only_that_connection(endpoint: GatewayProcess) -> None:
    remote = endpoint.address("tcp")
    bystander = TcpPeer(remote)
    peer = TcpPeer(remote)
    try:
        peer.sock.sendall(GARBAGE)
        assert peer.closed_by_peer() and not peer.buffer, peer.buffer[:200]
        assert_still_serving(bystander, endpoint)
    finally:
        peer.close()
        bystander.close()


# ---------------------------------------------------------------------------------------
# after all that, real calls


@pytest.mark.parametrize("transport", [SippTransport.UDP, SippTransport.TCP])
def test_sipp_calls_succeed_after_malformed_input(
    transport: SippTransport, endpoint: GatewayProcess, tmp_path: Path
) -> None:
    name = transport.name.lower()
    remote = endpoint.address(name)
    # A burst of every bad shape first, on this same listener.
    client: Peer = UdpPeer(remote) if transport is SippTransport.UDP else TcpPeer(remote)
    try:
        for knobs, _ in CASES.values():
            data, _cid = request(name, client.local, remote, **knobs)  # type: ignore[arg-type]
            assert client.exchange(data).status == 400
    finally:
        client.close()
    calls = 10
    result = run_sipp(
        SippConfig(
            "uac",
            transport,
            calls=calls,
            remote=remote,
            rate=20,
            limit=5,
            service=AOR_USER,
            global_timeout=30,
        ),
        tmp_path,
        timeout=40,
    )
    context = result.describe() + "\n--- endpoint ---\n" + endpoint.peer.stderr()[-3000:]
    assert result.stats is not None, context
    assert (result.stats.successful, result.stats.failed) == (calls, 0), context
    assert result.returncode == EXIT_ALL_OK, context
    assert endpoint.peer.poll() is None, context
