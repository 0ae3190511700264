"""The lab PKI: one CA and a certificate per lab host, made idempotently on disk.

`init_pki` keeps every file that is still good (key matches, signed by the CA, names as
expected, not expiring within `RENEW_BEFORE`) and reissues the rest, so a lab can call it
on every start. Time is passed in (`now`) so expiry handling is testable without waiting.
"""

from __future__ import annotations

import datetime as dt
import enum
import fcntl
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_NAME = "ca"
CA_COMMON_NAME = "Gateway Emulator Lab CA"
ORGANIZATION = "Gateway Emulator Lab"
LEAF_VALIDITY = dt.timedelta(days=365)
# The CA outlives its leaves so that yearly leaf renewal does not force a new trust anchor.
CA_VALIDITY = dt.timedelta(days=3650)
RENEW_BEFORE = dt.timedelta(days=30)
# Backdate notBefore a little so peers with a slightly slow clock accept a fresh cert.
CLOCK_SKEW = dt.timedelta(minutes=5)

LOCK_NAME = ".lock"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class PKIError(Exception):
    """The PKI directory cannot be used (not a directory, not writable, unknown host...)."""


@dataclass(frozen=True, slots=True)
class HostSpec:
    """What one lab host's certificate must say."""

    name: str
    """File stem and lookup key ("gateway" -> gateway.pem / gateway.key)."""
    common_name: str
    """Subject CN: the host FQDN, or the user address for a client cert."""
    dns_names: tuple[str, ...]
    """subjectAltName dNSName entries, in order."""
    ip_addresses: tuple[str, ...]
    """subjectAltName iPAddress entries (the host's lab loopback address)."""
    client_only: bool = False
    """True for user certs: EKU clientAuth only; host certs get serverAuth + clientAuth."""
    uris: tuple[str, ...] = ()
    """subjectAltName URI entries (sip:user@domain for Lync users)."""


@dataclass(frozen=True, slots=True)
class HostCert:
    """Where one host's certificate and key are, and the names it carries."""

    name: str
    """Lookup key, as in `HostSpec.name`."""
    cert: Path
    """The leaf certificate, PEM."""
    key: Path
    """The private key, PEM (PKCS#8, unencrypted, mode 0600)."""
    common_name: str
    """Subject CN."""
    dns_names: tuple[str, ...]
    """subjectAltName dNSName entries."""

    @property
    def chain(self) -> Path:
        """Leaf followed by the CA, PEM: what a TLS server should present."""
        return self.cert.with_name(f"{self.name}-chain.pem")


@dataclass(frozen=True, slots=True)
class LabPKI:
    """The lab PKI on disk: the CA and every host certificate."""

    directory: Path
    """Directory holding all the files."""
    ca_cert: Path
    """The CA certificate (the lab trust anchor), PEM."""
    ca_key: Path
    """The CA private key, PEM."""
    hosts: Mapping[str, HostCert]
    """Host certificates by name ("gateway", "fe", "alice", ...)."""

    def host(self, name: str) -> HostCert:
        """The certificate of host `name`; PKIError names the known hosts if absent."""
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts))
            raise PKIError(f"no lab certificate for host {name!r} (known: {known})") from None

    def server_context(self, name: str, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """A TLS server context presenting `name`'s chain; mutual TLS against the lab CA."""
        host = self.host(name)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(host.chain), str(host.key))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self, name: str | None = None) -> ssl.SSLContext:
        """A TLS client context trusting the lab CA, presenting `name`'s cert if given."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if name is not None:
            host = self.host(name)
            ctx.load_cert_chain(str(host.chain), str(host.key))
        return ctx


class Outcome(enum.Enum):
    """What `init_pki` did with one certificate."""

    CREATED = "created"
    KEPT = "kept"


@dataclass(frozen=True, slots=True)
class InitReport:
    """What `init_pki` created and what it kept, and why it replaced anything."""

    outcomes: Mapping[str, Outcome]
    """Per name ("ca" first, then hosts in spec order): created or kept."""
    reasons: Mapping[str, str] = field(default_factory=dict)
    """For each created name: why (missing, expired, wrong SAN, CA reissued, ...)."""

    @property
    def created(self) -> tuple[str, ...]:
        """Names whose files were (re)written."""
        return tuple(n for n, o in self.outcomes.items() if o is Outcome.CREATED)

    @property
    def kept(self) -> tuple[str, ...]:
        """Names whose files were valid and left untouched."""
        return tuple(n for n, o in self.outcomes.items() if o is Outcome.KEPT)

    @property
    def ca_created(self) -> bool:
        """True when the CA was (re)made, which reissues every leaf."""
        return self.outcomes.get(CA_NAME) is Outcome.CREATED


DEFAULT_HOSTS: tuple[HostSpec, ...] = (
    HostSpec(
        "gateway",
        "exp01.video.example.com",
        ("exp01.video.example.com", "lyncexp.video.example.com"),
        ("127.0.2.1",),
    ),
    HostSpec("fe", "fe.example.com", ("fe.example.com", "pool.example.com"), ("127.0.1.1",)),
    HostSpec(
        "edge",
        "edge.example.com",
        ("edge.example.com", "sip.example.com", "access.example.com"),
        ("127.0.1.2",),
    ),
    HostSpec("cucm", "cucm.video.example.com", ("cucm.video.example.com",), ("127.0.3.1",)),
    HostSpec("turn", "turn.video.example.com", ("turn.video.example.com",), ("127.0.4.1",)),
    HostSpec("imp", "imp.video.example.com", ("imp.video.example.com",), ("127.0.3.2",)),
    HostSpec("endpoint", "endpoint.video.example.com", ("endpoint.video.example.com",), ()),
    HostSpec(
        "alice",
        "alice.parkes@example.com",
        (),
        (),
        client_only=True,
        uris=("sip:alice.parkes@example.com",),
    ),
    HostSpec(
        "david",
        "david.jones@example.com",
        (),
        (),
        client_only=True,
        uris=("sip:david.jones@example.com",),
    ),
)


# ---------------------------------------------------------------------------------------
# public entry point


def init_pki(
    directory: os.PathLike[str] | str,
    hosts: Sequence[HostSpec] = DEFAULT_HOSTS,
    *,
    now: dt.datetime | None = None,
) -> tuple[LabPKI, InitReport]:
    """Make (or keep) the CA and every host certificate under `directory`."""
    when = _utc(now)
    root = Path(directory)
    _check_specs(hosts)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PKIError(f"cannot create PKI directory {root}: {exc.strerror or exc}") from exc
    if not root.is_dir():
        raise PKIError(f"PKI path {root} is not a directory")
    # Lab roles may start together and each run init: serialise them so one never issues
    # leaves from a CA that another is replacing.
    try:
        lock = open(root / LOCK_NAME, "a+b")  # held for the whole init
    except OSError as exc:
        raise PKIError(f"cannot use PKI directory {root}: {exc.strerror or exc}") from exc
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return _init_locked(root, hosts, when)


def _init_locked(
    root: Path, hosts: Sequence[HostSpec], when: dt.datetime
) -> tuple[LabPKI, InitReport]:
    outcomes: dict[str, Outcome] = {}
    reasons: dict[str, str] = {}
    ca_cert_path, ca_key_path = root / "ca.pem", root / "ca.key"

    problem = _ca_problem(ca_cert_path, ca_key_path, when)
    if problem is None:
        ca_cert = _load_cert(ca_cert_path)
        ca_key = _load_ec_key(ca_key_path)
        _ensure_mode(ca_key_path)
        outcomes[CA_NAME] = Outcome.KEPT
    else:
        log.info("issuing lab CA in %s: %s", root, problem)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _make_ca(ca_key, when)
        _write_key(ca_key_path, ca_key)
        _write_public(ca_cert_path, _pem(ca_cert))
        outcomes[CA_NAME] = Outcome.CREATED
        reasons[CA_NAME] = problem

    certs: dict[str, HostCert] = {}
    for spec in hosts:
        cert_path, key_path = root / f"{spec.name}.pem", root / f"{spec.name}.key"
        if outcomes[CA_NAME] is Outcome.CREATED:
            problem = "CA reissued"
        else:
            problem = _leaf_problem(spec, cert_path, key_path, ca_cert, when)
        if problem is None:
            leaf = _load_cert(cert_path)
            _ensure_mode(key_path)
            outcomes[spec.name] = Outcome.KEPT
        else:
            log.info("issuing %s certificate (%s): %s", spec.name, spec.common_name, problem)
            leaf_key = ec.generate_private_key(ec.SECP256R1())
            leaf = _make_leaf(spec, leaf_key, ca_cert, ca_key, when)
            _write_key(key_path, leaf_key)
            _write_public(cert_path, _pem(leaf))
            outcomes[spec.name] = Outcome.CREATED
            reasons[spec.name] = problem
        host = HostCert(spec.name, cert_path, key_path, spec.common_name, spec.dns_names)
        # The chain is derived data: rewrite it only when its bytes differ, so a kept
        # leaf leaves the directory byte-identical.
        chain = _pem(leaf) + _pem(ca_cert)
        if not _same_bytes(host.chain, chain):
            _write_public(host.chain, chain)
        certs[spec.name] = host

    pki = LabPKI(root, ca_cert_path, ca_key_path, certs)
    return pki, InitReport(outcomes, reasons)


def load_pki(
    directory: os.PathLike[str] | str,
    hosts: Sequence[HostSpec] = DEFAULT_HOSTS,
) -> LabPKI:
    """Describe an existing PKI directory without checking or writing anything."""
    root = Path(directory)
    return LabPKI(
        root,
        root / "ca.pem",
        root / "ca.key",
        {
            s.name: HostCert(
                s.name, root / f"{s.name}.pem", root / f"{s.name}.key", s.common_name, s.dns_names
            )
            for s in hosts
        },
    )


def expected_extended_key_usage(spec: HostSpec) -> frozenset[x509.ObjectIdentifier]:
    """The EKUs a certificate for `spec` carries."""
    if spec.client_only:
        return frozenset({ExtendedKeyUsageOID.CLIENT_AUTH})
    return frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})


# ---------------------------------------------------------------------------------------
# issuing


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = _name(CA_COMMON_NAME)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san(spec: HostSpec) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.ip_addresses]
    names += [x509.UniformResourceIdentifier(u) for u in spec.uris]
    return x509.SubjectAlternativeName(names)


def _make_leaf(
    spec: HostSpec,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> x509.Certificate:
    public = key.public_key()
    # Never outlive the issuer: a chain with a leaf valid past its CA fails to verify.
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                sorted(expected_extended_key_usage(spec), key=lambda oid: oid.dotted_string)
            ),
            critical=False,
        )
        .add_extension(_san(spec), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


# ---------------------------------------------------------------------------------------
# checking what is on disk


def _ca_problem(cert_path: Path, key_path: Path, now: dt.datetime) -> str | None:
    """Why the CA on disk cannot be kept, or None if it can."""
    loaded = _load_pair(cert_path, key_path)
    if isinstance(loaded, str):
        return loaded
    cert, _ = loaded
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not a valid self-signed certificate"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "no basicConstraints"
    if not bc.ca:
        return "not a CA (basicConstraints CA:false)"
    return _validity_problem(cert, now)


def _leaf_problem(
    spec: HostSpec,
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    now: dt.datetime,
) -> str | None:
    """Why the host certificate on disk cannot be kept, or None if it can."""
    loaded = _load_pair(cert_path, key_path)
    if isinstance(loaded, str):
        return loaded
    cert, _ = loaded
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the lab CA"
    problem = _validity_problem(cert, now)
    if problem is not None:
        return problem
    if _common_name(cert) != spec.common_name:
        return f"subject CN is {_common_name(cert)!r}, want {spec.common_name!r}"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    if san != _san(spec):
        return "subjectAltName differs from the host spec"
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "no extendedKeyUsage"
    if frozenset(eku) != expected_extended_key_usage(spec):
        return "extendedKeyUsage differs from the host spec"
    return None


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | str:
    """The cert and key, or a reason they are unusable (missing, corrupt, mismatched)."""
    if not cert_path.is_file():
        return f"{cert_path.name} missing"
    if not key_path.is_file():
        return f"{key_path.name} missing"
    try:
        cert = _load_cert(cert_path)
    except (ValueError, OSError) as exc:
        return f"{cert_path.name} unreadable: {exc}"
    try:
        key = _load_ec_key(key_path)
    except (ValueError, TypeError, OSError) as exc:
        return f"{key_path.name} unreadable: {exc}"
    if cert.public_key() != key.public_key():
        return f"{cert_path.name} does not match {key_path.name}"
    return cert, key


def _validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
    if cert.not_valid_after_utc <= now:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_after_utc <= now + RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}, within {RENEW_BEFORE.days} days"
    return None


def _common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


# ---------------------------------------------------------------------------------------
# files


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("not an EC private key")
    return key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, data, PRIVATE_MODE)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, PUBLIC_MODE)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file + rename so a crash never leaves a half-written cert or key.

    mkstemp creates the file 0600, so a key is never readable by others even briefly.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ensure_mode(key_path: Path) -> None:
    """A kept key with loose permissions is tightened, not regenerated."""
    if key_path.stat().st_mode & 0o777 != PRIVATE_MODE:
        log.warning("tightening %s to mode 0600", key_path)
        os.chmod(key_path, PRIVATE_MODE)


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


def _check_specs(hosts: Sequence[HostSpec]) -> None:
    seen: set[str] = set()
    for spec in hosts:
        if spec.name == CA_NAME or spec.name in seen:
            raise PKIError(f"host name {spec.name!r} is reserved or duplicated")
        if not spec.name or "/" in spec.name or spec.name.startswith("."):
            raise PKIError(f"host name {spec.name!r} is not a plain file stem")
        if not (spec.dns_names or spec.ip_addresses or spec.uris):
            raise PKIError(f"host {spec.name!r} needs at least one subjectAltName")
        seen.add(spec.name)
