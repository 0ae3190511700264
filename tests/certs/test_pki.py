"""The lab PKI: names, verification against the CA, real mutual TLS, idempotence, CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import cli
from certs.pki import (
    DEFAULT_HOSTS,
    HostSpec,
    LabPKI,
    Outcome,
    PKIError,
    init_pki,
)

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH

# What the issue asks for, written out independently of DEFAULT_HOSTS so a wrong
# table in certs/pki.py fails here: name -> (CN, DNS SANs, IP SANs, URI SANs, EKUs).
EXPECTED: dict[str, tuple[str, set[str], set[str], set[str], set[x509.ObjectIdentifier]]] = {
    "gateway": (
        "exp01.video.example.com",
        {"exp01.video.example.com", "lyncexp.video.example.com"},
        {"127.0.2.1"},
        set(),
        {SERVER, CLIENT},
    ),
    "fe": (
        "fe.example.com",
        {"fe.example.com", "pool.example.com"},
        {"127.0.1.1"},
        set(),
        {SERVER, CLIENT},
    ),
    "edge": (
        "edge.example.com",
        {"edge.example.com", "sip.example.com", "access.example.com"},
        {"127.0.1.2"},
        set(),
        {SERVER, CLIENT},
    ),
    "cucm": (
        "cucm.video.example.com",
        {"cucm.video.example.com"},
        {"127.0.3.1"},
        set(),
        {SERVER, CLIENT},
    ),
    "turn": (
        "turn.video.example.com",
        {"turn.video.example.com"},
        {"127.0.4.1"},
        set(),
        {SERVER, CLIENT},
    ),
    "imp": (
        "imp.video.example.com",
        {"imp.video.example.com"},
        {"127.0.3.2"},
        set(),
        {SERVER, CLIENT},
    ),
    "endpoint": (
        "endpoint.video.example.com",
        {"endpoint.video.example.com"},
        set(),
        set(),
        {SERVER, CLIENT},
    ),
    "alice": (
        "alice.parkes@example.com",
        set(),
        set(),
        {"sip:alice.parkes@example.com"},
        {CLIENT},
    ),
    "david": (
        "david.jones@example.com",
        set(),
        set(),
        {"sip:david.jones@example.com"},
        {CLIENT},
    ),
}
SERVER_HOSTS = [n for n, e in EXPECTED.items() if SERVER in e[4]]
TIMEOUT = 5.0


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def verifier_store(pki: LabPKI) -> verification.Store:
    return verification.Store([load(pki.ca_cert)])


# ---------------------------------------------------------------------------------------
# contents


def test_every_lab_host_has_a_certificate(pki: LabPKI) -> None:
    assert set(pki.hosts) == set(EXPECTED)
    assert {s.name for s in DEFAULT_HOSTS} == set(EXPECTED)
    for name, host in pki.hosts.items():
        assert pki.host(name) is host
        assert host.cert == pki.directory / f"{name}.pem"
        assert host.key == pki.directory / f"{name}.key"
        assert host.common_name == EXPECTED[name][0]


def test_unknown_host_lookup_names_the_known_hosts(pki: LabPKI) -> None:
    with pytest.raises(PKIError, match="gateway"):
        pki.host("mcu")


def test_ca_is_a_p256_sha256_signing_ca(pki: LabPKI) -> None:
    ca = load(pki.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ca.subject == ca.issuer
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_names_ekus_and_key_type(pki: LabPKI, name: str) -> None:
    cn, dns, ips, uris, ekus = EXPECTED[name]
    cert = load(pki.host(name).cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == dns
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == ips
    assert set(san.get_values_for_type(x509.UniformResourceIdentifier)) == uris
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == ekus
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)


@pytest.mark.parametrize("name", SERVER_HOSTS)
def test_host_cert_verifies_as_server_for_each_name_and_ip(pki: LabPKI, name: str) -> None:
    _, dns, ips, _, _ = EXPECTED[name]
    leaf = load(pki.host(name).cert)
    now = dt.datetime.now(dt.UTC)
    subjects: list[x509.verification.Subject] = [x509.DNSName(d) for d in sorted(dns)]
    subjects += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(ips)]
    for subject in subjects:
        verifier = (
            verification.PolicyBuilder()
            .store(verifier_store(pki))
            .time(now)
            .build_server_verifier(subject)
        )
        chain = verifier.verify(leaf, [])
        assert chain[-1] == load(pki.ca_cert)
    # ...and not for a name it does not carry.
    verifier = (
        verification.PolicyBuilder()
        .store(verifier_store(pki))
        .build_server_verifier(x509.DNSName("mallory.example.net"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(leaf, [])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_cert_verifies_as_client(pki: LabPKI, name: str) -> None:
    verifier = verification.PolicyBuilder().store(verifier_store(pki)).build_client_verifier()
    verified = verifier.verify(load(pki.host(name).cert), [])
    assert verified.chain[-1] == load(pki.ca_cert)


async def test_user_cert_is_refused_as_server(pki: LabPKI) -> None:
    # alice has only clientAuth. Hostname checking is off so that the only thing that can
    # fail is the purpose (EKU) check: a client must refuse a client-only cert from a server.
    client_ctx = pki.client_context("fe")
    client_ctx.check_hostname = False
    with pytest.raises(ssl.SSLCertVerificationError, match="purpose"):
        await handshake(pki.server_context("alice"), client_ctx, "alice")
    # Control: the same relaxed client accepts a host cert, so the EKU made the difference.
    server_cert, _ = await handshake(pki.server_context("cucm"), client_ctx, "cucm")
    assert cn_of(server_cert) == "cucm.video.example.com"


def test_keys_are_private_and_chains_are_leaf_then_ca(pki: LabPKI) -> None:
    assert pki.ca_key.stat().st_mode & 0o777 == 0o600
    ca_pem = pki.ca_cert.read_bytes()
    for host in pki.hosts.values():
        assert host.key.stat().st_mode & 0o777 == 0o600
        assert host.chain.read_bytes() == host.cert.read_bytes() + ca_pem


# ---------------------------------------------------------------------------------------
# real TLS on loopback


async def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str,
    host: str = "127.0.0.1",
) -> tuple[dict[str, object], dict[str, object]]:
    """One TLS connection; returns (cert the client saw, cert the server saw)."""
    seen: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(writer.get_extra_info("peercert"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_ctx, server_hostname=server_hostname),
            TIMEOUT,
        )
        try:
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"ok"
            server_cert = writer.get_extra_info("peercert")
        finally:
            writer.close()
        client_cert = await asyncio.wait_for(seen, TIMEOUT)
    finally:
        server.close()
        await server.wait_closed()
    return server_cert, client_cert


def cn_of(peercert: dict[str, object]) -> str:
    subject = peercert["subject"]
    assert isinstance(subject, tuple)
    return str(next(v for rdn in subject for k, v in rdn if k == "commonName"))


async def test_mutual_tls_to_gateway_cluster_fqdn(pki: LabPKI) -> None:
    server_cert, client_cert = await handshake(
        pki.server_context("gateway"), pki.client_context("fe"), "lyncexp.video.example.com"
    )
    assert cn_of(server_cert) == "exp01.video.example.com"
    assert cn_of(client_cert) == "fe.example.com"


async def test_mutual_tls_by_ip_on_the_hosts_loopback_address(pki: LabPKI) -> None:
    server_cert, client_cert = await handshake(
        pki.server_context("fe"), pki.client_context("gateway"), "127.0.1.1", host="127.0.1.1"
    )
    assert cn_of(server_cert) == "fe.example.com"
    assert cn_of(client_cert) == "exp01.video.example.com"


async def test_user_client_cert_accepted_by_edge(pki: LabPKI) -> None:
    _, client_cert = await handshake(
        pki.server_context("edge"), pki.client_context("alice"), "sip.example.com"
    )
    assert cn_of(client_cert) == "alice.parkes@example.com"


async def test_client_refuses_a_name_the_server_cert_lacks(pki: LabPKI) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(pki.server_context("gateway"), pki.client_context("fe"), "fe.example.com")


async def test_server_refuses_a_client_from_another_ca(pki: LabPKI, tmp_path: Path) -> None:
    foreign, _ = init_pki(tmp_path / "foreign")
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    client_ctx.load_cert_chain(str(foreign.host("fe").chain), str(foreign.host("fe").key))
    # TLS 1.3 finishes the client side before the server judges the client cert, so the
    # refusal shows up as an alert or EOF on the first read, never as b"ok".
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        await handshake(pki.server_context("gateway"), client_ctx, "lyncexp.video.example.com")


# ---------------------------------------------------------------------------------------
# idempotence


def test_second_run_keeps_every_file_byte_identical(tmp_path: Path) -> None:
    _, first = init_pki(tmp_path)
    assert set(first.created) == {"ca", *EXPECTED}
    before = snapshot(tmp_path)
    _, second = init_pki(tmp_path)
    assert second.created == ()
    assert set(second.kept) == {"ca", *EXPECTED}
    assert snapshot(tmp_path) == before
    assert {f"{n}.key" for n in EXPECTED} <= set(before)
    assert {f"{n}-chain.pem" for n in EXPECTED} <= set(before)


def test_tampered_cert_is_reissued_and_others_kept(tmp_path: Path) -> None:
    pki, _ = init_pki(tmp_path)
    before = snapshot(tmp_path)
    gw = pki.host("gateway")
    gw.cert.write_bytes(gw.cert.read_bytes().replace(b"MII", b"MIJ", 1))
    _, report = init_pki(tmp_path)
    assert report.created == ("gateway",)
    after = snapshot(tmp_path)
    assert after["gateway.pem"] != before["gateway.pem"]
    for name in set(EXPECTED) - {"gateway"}:
        assert after[f"{name}.pem"] == before[f"{name}.pem"]
    verification.PolicyBuilder().store(verifier_store(pki)).build_server_verifier(
        x509.DNSName("lyncexp.video.example.com")
    ).verify(load(gw.cert), [])


def test_cert_from_another_ca_is_reissued(tmp_path: Path) -> None:
    pki, _ = init_pki(tmp_path / "lab")
    other, _ = init_pki(tmp_path / "other")
    shutil.copy(other.host("cucm").cert, pki.host("cucm").cert)
    shutil.copy(other.host("cucm").key, pki.host("cucm").key)
    _, report = init_pki(tmp_path / "lab")
    assert report.created == ("cucm",)
    assert "not signed by the lab CA" in report.reasons["cucm"]
    load(pki.host("cucm").cert).verify_directly_issued_by(load(pki.ca_cert))


def test_mismatched_key_is_reissued(tmp_path: Path) -> None:
    pki, _ = init_pki(tmp_path)
    shutil.copy(pki.host("edge").key, pki.host("fe").key)
    _, report = init_pki(tmp_path)
    assert report.created == ("fe",)
    assert "does not match" in report.reasons["fe"]


@pytest.mark.parametrize(
    ("age_days", "reissued"),
    [
        (400, True),  # expired
        (340, True),  # expires in ~25 days: within the 30-day renewal window
        (300, False),  # ~65 days left: kept
    ],
)
def test_expiring_leaves_are_reissued(tmp_path: Path, age_days: int, reissued: bool) -> None:
    now = dt.datetime.now(dt.UTC)
    init_pki(tmp_path, now=now - dt.timedelta(days=age_days))
    before = snapshot(tmp_path)
    _, report = init_pki(tmp_path, now=now)
    assert report.outcomes["ca"] is Outcome.KEPT  # the CA lives ten years
    expected = set(EXPECTED) if reissued else set()
    assert set(report.created) == expected
    after = snapshot(tmp_path)
    assert after["ca.pem"] == before["ca.pem"]
    for name in EXPECTED:
        assert (after[f"{name}.pem"] != before[f"{name}.pem"]) is reissued
        if reissued:
            assert load(tmp_path / f"{name}.pem").not_valid_after_utc > now + dt.timedelta(days=360)


def test_deleted_ca_reissues_every_leaf(tmp_path: Path) -> None:
    old, _ = init_pki(tmp_path)
    old_ca = load(old.ca_cert)
    old_leaves = snapshot(tmp_path)
    old.ca_cert.unlink()
    new, report = init_pki(tmp_path)
    assert report.ca_created
    assert set(report.created) == {"ca", *EXPECTED}
    assert all(report.reasons[n] == "CA reissued" for n in EXPECTED)
    new_ca = load(new.ca_cert)
    assert new_ca.public_key() != old_ca.public_key()
    for name, host in new.hosts.items():
        leaf = load(host.cert)
        assert host.cert.read_bytes() != old_leaves[f"{name}.pem"]
        leaf.verify_directly_issued_by(new_ca)


def test_loose_key_mode_is_tightened_not_reissued(tmp_path: Path) -> None:
    pki, _ = init_pki(tmp_path)
    pki.host("turn").key.chmod(0o644)
    pki.ca_key.chmod(0o640)
    before = snapshot(tmp_path)
    _, report = init_pki(tmp_path)
    assert report.created == ()
    assert snapshot(tmp_path) == before
    assert pki.host("turn").key.stat().st_mode & 0o777 == 0o600
    assert pki.ca_key.stat().st_mode & 0o777 == 0o600


def test_changed_spec_reissues_only_that_host(tmp_path: Path) -> None:
    init_pki(tmp_path)
    hosts = [
        HostSpec("cucm", "cucm.video.example.com", ("cucm2.video.example.com",), ("127.0.3.1",))
        if s.name == "cucm"
        else s
        for s in DEFAULT_HOSTS
    ]
    pki, report = init_pki(tmp_path, hosts)
    assert report.created == ("cucm",)
    assert "subjectAltName" in report.reasons["cucm"]
    san = load(pki.host("cucm").cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["cucm2.video.example.com"]


@pytest.mark.parametrize(
    "hosts",
    [
        [HostSpec("ca", "x.example.com", ("x.example.com",), ())],
        [HostSpec("a", "a.example.com", ("a.example.com",), ())] * 2,
        [HostSpec("../a", "a.example.com", ("a.example.com",), ())],
        [HostSpec("a", "a.example.com", (), ())],
    ],
)
def test_bad_host_specs_are_refused(tmp_path: Path, hosts: list[HostSpec]) -> None:
    with pytest.raises(PKIError):
        init_pki(tmp_path, hosts)
    assert not any(tmp_path.iterdir())


def test_naive_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        init_pki(tmp_path, now=dt.datetime(2030, 1, 1))


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_init_reports_created_then_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["init", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "created ca: ca.pem missing" in out
    assert "created gateway: CA reissued" in out
    assert "10 created, 0 kept" in out
    (tmp_path / "imp.pem").unlink()
    assert cli.main(["init", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "created imp: imp.pem missing" in out
    assert "kept    gateway" in out
    assert "1 created, 9 kept" in out


def test_gateway_dispatcher_runs_certs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main as gateway_main

    assert gateway_main(["certs", "init", "--dir", str(tmp_path)]) == 0
    assert "10 created" in capsys.readouterr().out
    assert (tmp_path / "gateway.key").stat().st_mode & 0o777 == 0o600


def test_cli_show_lists_hosts_names_and_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki, _ = init_pki(tmp_path)
    assert cli.main(["show", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expiry = f"{load(pki.host('gateway').cert).not_valid_after_utc:%Y-%m-%d}"
    for name, (cn, *_rest) in EXPECTED.items():
        assert name in out and cn in out
    assert "lyncexp.video.example.com" in out
    assert "URI:sip:alice.parkes@example.com" in out
    assert expiry in out


def test_cli_show_without_pki_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["show", "--dir", str(tmp_path / "none")]) == 1
    assert "gateway certs init" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["bogus"], "invalid choice"),
        (["init", "--dir"], "expected one argument"),
        (["init", "--frobnicate"], "unrecognized arguments"),
    ],
)
def test_cli_bad_arguments_get_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: gateway certs" in err


def test_cli_init_into_a_file_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert cli.main(["init", "--dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gateway certs: ") and str(target) in err


def test_concurrent_inits_agree_on_one_ca(tmp_path: Path) -> None:
    # Lab roles starting together all run init on the same directory.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: init_pki(tmp_path), range(4)))
    assert sum(report.ca_created for _, report in results) == 1
    ca = load(tmp_path / "ca.pem")
    for name in EXPECTED:
        leaf = load(tmp_path / f"{name}.pem")
        leaf.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key((tmp_path / f"{name}.key").read_bytes(), None)
        assert key.public_key() == leaf.public_key()
