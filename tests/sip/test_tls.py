"""SIP over TLS with the lab PKI: mutual TLS, certificate names, handshake failures.

Real TLS on 127.0.x.y loopback addresses (FE 127.0.1.1, gateway 127.0.2.1, as in the lab),
on both the asyncio loop and uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

import pytest

from certs.pki import DEFAULT_HOSTS, LabPKI, init_pki
from sip.message import Request, Response, make_response
from sip.port_range import DEFAULT_OUTBOUND_PORTS
from sip.tls import client_context, describe_tls_error, peer_names, server_context
from sip.transport import Transport, TransportAddress, TransportError, TransportSettings
from tests.sip.test_transport import Peer, Runner, expect_request, manager, run, sip_request

__all__ = ["run"]  # the loop-parametrised runner fixture, shared with test_transport

FE_HOST = "127.0.1.1"
GATEWAY_HOST = "127.0.2.1"


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    """A second, unrelated CA with its own "gateway" certificate: nobody trusts it."""
    specs = [spec for spec in DEFAULT_HOSTS if spec.name == "gateway"]
    return init_pki(tmp_path_factory.mktemp("rogue-pki"), specs)[0]


def fe_server(pki: LabPKI, *, mutual: bool = True) -> ssl.SSLContext:
    fe = pki.host("fe")
    return server_context(fe.chain, fe.key, ca_file=pki.ca_cert, require_client_cert=mutual)


def client(pki: LabPKI, name: str | None = "gateway", *, leaf_only: bool = False) -> ssl.SSLContext:
    if name is None:
        return client_context(pki.ca_cert)
    host = pki.host(name)
    return client_context(pki.ca_cert, cert=host.cert if leaf_only else host.chain, key=host.key)


class LogWatcher(logging.Handler):
    """Queues the messages of one logger so a test can wait for a record (no sleeping)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: asyncio.Queue[str] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.put_nowait(record.getMessage())

    async def wait_for(self, *fragments: str) -> str:
        while True:
            message = await self.messages.get()
            if all(fragment in message for fragment in fragments):
                return message


@pytest.fixture
def watch() -> Iterator[LogWatcher]:
    """Watch sip.transport (where server-side handshake failures are logged)."""
    watcher = LogWatcher()
    log = logging.getLogger("sip.transport")
    previous = log.level
    log.addHandler(watcher)
    log.setLevel(logging.DEBUG)
    try:
        yield watcher
    finally:
        log.removeHandler(watcher)
        log.setLevel(previous)


# -- helpers (no sockets) ----------------------------------------------------------------


def test_peer_names_reads_cn_then_san_dns() -> None:
    peercert = {
        "subject": ((("organizationName", "Lab"),), (("commonName", "fe.example.com"),)),
        "subjectAltName": (
            ("DNS", "fe.example.com"),
            ("DNS", "pool.example.com"),
            ("IP Address", "127.0.1.1"),
            ("URI", "sip:fe@example.com"),
        ),
    }
    assert peer_names(peercert) == ("fe.example.com", "pool.example.com")
    assert peer_names({}) == ()
    assert peer_names(None) == ()


def test_context_builders_reject_incomplete_settings(pki: LabPKI) -> None:
    fe = pki.host("fe")
    with pytest.raises(ValueError, match="ca_file"):
        server_context(fe.chain, fe.key, require_client_cert=True)
    with pytest.raises(ValueError, match="both cert and key"):
        client_context(pki.ca_cert, cert=fe.chain)
    mutual = server_context(fe.chain, fe.key, ca_file=pki.ca_cert, require_client_cert=True)
    assert mutual.verify_mode is ssl.CERT_REQUIRED
    assert server_context(fe.chain, fe.key).verify_mode is ssl.CERT_NONE
    outbound = client_context(pki.ca_cert)
    assert outbound.check_hostname and outbound.verify_mode is ssl.CERT_REQUIRED


def test_describe_tls_error_names_the_verify_reason() -> None:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    error.verify_message = "unable to get local issuer certificate"
    assert describe_tls_error(error) == (
        "certificate verify failed: unable to get local issuer certificate"
    )
    assert describe_tls_error(TimeoutError()) == "handshake timed out"


# -- over real TLS -----------------------------------------------------------------------


def test_mutual_tls_round_trip_exposes_certificate_names(run: Runner, pki: LabPKI) -> None:
    async def main() -> None:
        settings = TransportSettings(source_host=GATEWAY_HOST)
        async with (
            manager() as fe,
            manager(settings, tls_client=client(pki, "gateway")) as gateway,
        ):
            listening = await fe.listen(Transport.TLS, FE_HOST, 0, ssl=fe_server(pki))
            assert listening.transport is Transport.TLS and listening.host == FE_HOST
            info = await gateway.send(
                sip_request(transport="TLS"), listening, server_hostname="fe.example.com"
            )
            assert info.transport is Transport.TLS and info.outbound
            assert info.peer_names == ("fe.example.com", "pool.example.com")
            assert info.server_hostname == "fe.example.com"
            assert info.local.host == GATEWAY_HOST
            assert info.local.port in DEFAULT_OUTBOUND_PORTS

            received = await expect_request(fe)
            assert received.source == TransportAddress(Transport.TLS, GATEWAY_HOST, info.local.port)
            # The FE trusts its peers by certificate name.
            assert received.connection.peer_names == (
                "exp01.video.example.com",
                "lyncexp.video.example.com",
            )

            assert isinstance(received.message, Request)
            reply = make_response(received.message, 200)
            used = await fe.send(reply, received.source)
            assert used.id == received.connection.id
            answer = await gateway.receive()
            assert isinstance(answer.message, Response) and answer.message.status == 200
            assert answer.connection.id == info.id

            # Same peer, same name: the connection is reused; a name it lacks is not.
            again = await gateway.send(
                sip_request(transport="TLS", call_id="again@127.0.0.1"),
                listening,
                server_hostname="pool.example.com",
            )
            assert again.id == info.id
            assert gateway.find_connection(listening, "cucm.video.example.com") is None

    run(main)


def test_server_name_defaults_to_the_dialled_ip(run: Runner, pki: LabPKI) -> None:
    async def main() -> None:
        async with manager() as fe, manager(tls_client=client(pki, None)) as caller:
            listening = await fe.listen(Transport.TLS, FE_HOST, 0, ssl=fe_server(pki, mutual=False))
            info = await caller.send(sip_request(transport="TLS"), listening)  # IP SAN 127.0.1.1
            assert info.server_hostname == FE_HOST
            received = await expect_request(fe)
            assert received.connection.peer_names == ()  # no client certificate offered

    run(main)


def test_untrusted_client_certificate_fails_on_server_and_listener_keeps_serving(
    run: Runner, pki: LabPKI, rogue: LabPKI, watch: LogWatcher
) -> None:
    async def main() -> None:
        # The rogue leaf alone: the FE cannot find its issuer.
        rogue_client = client_context(
            pki.ca_cert, cert=rogue.host("gateway").cert, key=rogue.host("gateway").key
        )
        async with (
            manager() as fe,
            manager(tls_client=rogue_client) as intruder,
            manager(tls_client=client(pki, "gateway")) as gateway,
        ):
            listening = await fe.listen(Transport.TLS, FE_HOST, 0, ssl=fe_server(pki))
            try:
                # TLS 1.3 finishes the client's side before the server checks the client
                # certificate, so the send itself may or may not fail.
                await intruder.send(
                    sip_request(transport="TLS", call_id="rogue@127.0.0.1"),
                    listening,
                    server_hostname="fe.example.com",
                )
            except TransportError:
                pass
            logged = await watch.wait_for("TLS handshake with", "failed")
            assert "certificate verify failed: unable to get local issuer certificate" in logged

            await gateway.send(
                sip_request(transport="TLS", call_id="trusted@127.0.0.1"),
                listening,
                server_hostname="fe.example.com",
            )
            received = await expect_request(fe)
            assert received.message.call_id == "trusted@127.0.0.1"
            assert fe._queue.empty()  # the rogue request never got through
            assert [c.peer_names[0] for c in fe.connections()] == ["exp01.video.example.com"]

    run(main)


def test_wrong_server_name_is_rejected_by_the_client(
    run: Runner, pki: LabPKI, watch: LogWatcher
) -> None:
    async def main() -> None:
        async with manager() as fe, manager(tls_client=client(pki, "gateway")) as gateway:
            listening = await fe.listen(Transport.TLS, FE_HOST, 0, ssl=fe_server(pki))
            with pytest.raises(TransportError) as raised:
                await gateway.send(
                    sip_request(transport="TLS"),
                    listening,
                    server_hostname="cucm.video.example.com",
                )
            assert "certificate verify failed" in str(raised.value)
            assert "cucm.video.example.com" in str(raised.value)  # hostname mismatch named
            assert gateway.connections() == []
            await watch.wait_for("TLS handshake with", "failed")  # the FE saw the abort
            info = await gateway.send(
                sip_request(transport="TLS"), listening, server_hostname="fe.example.com"
            )
            assert info.peer_names[0] == "fe.example.com"
            assert (await expect_request(fe)).connection.remote == TransportAddress(
                Transport.TLS, "127.0.0.1", info.local.port
            )

    run(main)


def test_clear_text_on_tls_port_is_logged_and_listener_keeps_serving(
    run: Runner, pki: LabPKI, watch: LogWatcher
) -> None:
    async def main() -> None:
        async with manager() as fe, manager(tls_client=client(pki, "gateway")) as gateway:
            listening = await fe.listen(Transport.TLS, FE_HOST, 0, ssl=fe_server(pki))
            plain = await Peer.connect(listening)
            try:
                await plain.write(sip_request(transport="TCP"))
                await watch.wait_for("TLS handshake with", "failed")
                assert await plain.next_item() is None  # the server hung up
            finally:
                await plain.close()
            await gateway.send(
                sip_request(transport="TLS", call_id="ok@127.0.0.1"),
                listening,
                server_hostname="fe.example.com",
            )
            assert (await expect_request(fe)).message.call_id == "ok@127.0.0.1"

    run(main)
