"""Shared fixtures: a real TurnServer on loopback with a random free port and relay range."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from turn import stun
from turn.auth import long_term_key
from turn.config import TurnConfig
from turn.server import TurnServer

USER, PASSWORD, REALM = "GatewayB2BUA", "secret", "example.com"


def relay_range(size: int = 200) -> tuple[int, int]:
    """A random relay range, so parallel test runs rarely meet (bind failures retry anyway)."""
    base = random.randrange(20000, 60000 - size)
    return (base, base + size - 1)


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[TurnServer]:
    settings: dict[str, Any] = dict(
        listen="127.0.0.1",
        ports=(0, 0),
        relay_ports=relay_range(),
        realm=REALM,
        users=((USER, PASSWORD),),
        allow_peers=("127.0.0.0/8",),
    )
    settings.update(overrides)
    server = TurnServer(TurnConfig(**settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def server_port(server: TurnServer) -> int:
    return server.addresses[0][2]


class StunClient(asyncio.DatagramProtocol):
    """A bare UDP STUN client: send bytes, await the response with the same transaction id."""

    def __init__(self) -> None:
        self.waiters: dict[bytes, asyncio.Future[stun.StunMessage]] = {}
        self.other: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            msg = stun.parse(data)
        except ValueError:
            self.other.put_nowait(data)
            return
        fut = self.waiters.pop(msg.transaction_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        else:
            self.other.put_nowait(data)

    async def request(
        self,
        method: int,
        attrs: list[tuple[int, bytes]],
        *,
        key: bytes | None = None,
        tid: bytes | None = None,
        timeout: float = 3.0,
    ) -> stun.StunMessage:
        tid = tid or os.urandom(12)
        fut: asyncio.Future[stun.StunMessage] = asyncio.get_running_loop().create_future()
        self.waiters[tid] = fut
        self.transport.sendto(stun.encode(method, stun.Class.REQUEST, tid, attrs, key=key))
        return await asyncio.wait_for(fut, timeout)


@asynccontextmanager
async def stun_client(host: str, port: int) -> AsyncIterator[StunClient]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(StunClient, remote_addr=(host, port))
    try:
        yield protocol
    finally:
        transport.close()


async def authed(
    client: StunClient,
    method: int,
    attrs: list[tuple[int, bytes]],
    *,
    user: str = USER,
    password: str = PASSWORD,
    tid: bytes | None = None,
) -> stun.StunMessage:
    """Long-term credential dance: unauthenticated try, 401, retry with realm and nonce."""
    first = await client.request(method, attrs)
    code = (
        stun.unpack_error_code(first.get(stun.Attr.ERROR_CODE) or b"")[0]
        if first.cls == stun.Class.ERROR
        else 0
    )
    if code != 401:
        return first
    realm, nonce = first.get(stun.Attr.REALM) or b"", first.get(stun.Attr.NONCE) or b""
    key = long_term_key(user, realm.decode(), password)
    auth = [
        (int(stun.Attr.USERNAME), user.encode()),
        (int(stun.Attr.REALM), realm),
        (int(stun.Attr.NONCE), nonce),
    ]
    return await client.request(method, attrs + auth, key=key, tid=tid)


def error_code(msg: stun.StunMessage) -> int | None:
    value = msg.get(stun.Attr.ERROR_CODE)
    return None if value is None else stun.unpack_error_code(value)[0]
