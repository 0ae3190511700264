"""TLS listeners accept a client that speaks first (a standard TLS client sends its
ClientHello at once), on asyncio and on uvloop; a failed handshake is logged with its
reason and costs nothing else."""

from __future__ import annotations

import asyncio
import logging

import pytest

from certs.pki import LabPKI
from sip.transport import Transport, TransportManager, TransportSettings
from tests.sip.test_transport import Runner, run  # noqa: F401  (the two-loop fixture)


def test_tls_listener_handshakes_with_an_eager_client(run: Runner, pki: LabPKI) -> None:  # noqa: F811
    async def main() -> None:
        settings = TransportSettings(outbound_ports=None, tls_handshake_timeout=2.0)
        async with TransportManager(settings) as manager:
            server = pki.server_context("endpoint", require_client_cert=True)
            bound = await manager.listen(Transport.TLS, "127.0.0.1", 0, ssl=server)
            for _ in range(5):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        bound.host,
                        bound.port,
                        ssl=pki.client_context("gateway"),
                        server_hostname="endpoint.video.example.com",
                    ),
                    3,
                )
                writer.write(b"\r\n\r\n")  # RFC 5626 ping: the server answers a pong
                assert await asyncio.wait_for(reader.readexactly(2), 3) == b"\r\n"
                writer.close()
                await writer.wait_closed()
            names = {name for info in manager.connections() for name in info.peer_names}
            assert "exp01.video.example.com" in names or manager.connections() == []

    run(main)


def test_failed_handshake_is_logged_with_reason(
    run: Runner,  # noqa: F811
    pki: LabPKI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        settings = TransportSettings(outbound_ports=None, tls_handshake_timeout=2.0)
        async with TransportManager(settings) as manager:
            server = pki.server_context("endpoint", require_client_cert=True)
            bound = await manager.listen(Transport.TLS, "127.0.0.1", 0, ssl=server)
            with pytest.raises((OSError, asyncio.IncompleteReadError)):
                # no client certificate: the server refuses the handshake
                reader, writer = await asyncio.open_connection(
                    bound.host,
                    bound.port,
                    ssl=pki.client_context(None),
                    server_hostname="endpoint.video.example.com",
                )
                writer.write(b"\r\n\r\n")
                await asyncio.wait_for(reader.readexactly(2), 3)
            for _ in range(100):
                if any("TLS handshake with" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            # the listener still serves a good client afterwards
            reader, writer = await asyncio.open_connection(
                bound.host,
                bound.port,
                ssl=pki.client_context("gateway"),
                server_hostname="endpoint.video.example.com",
            )
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), 3) == b"\r\n"
            writer.close()

    with caplog.at_level(logging.WARNING, logger="sip.transport"):
        run(main)
    failures = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert failures and "certificate" in failures[0].lower()
