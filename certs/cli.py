"""`gateway certs`: make (`init`) or list (`show`) the lab PKI."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from rich.console import Console
from rich.table import Table

from certs.pki import (
    CA_NAME,
    DEFAULT_HOSTS,
    RENEW_BEFORE,
    InitReport,
    PKIError,
    init_pki,
    load_pki,
)

DEFAULT_DIR = Path("certs/lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway certs", description="Make or list the lab PKI (CA and host certificates)."
    )
    sub = parser.add_subparsers(dest="action", metavar="{init,show}", required=True)
    init = sub.add_parser("init", help="create missing or invalid certificates, keep valid ones")
    init.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"PKI directory (default {DEFAULT_DIR})"
    )
    show = sub.add_parser("show", help="list hosts, names and expiry")
    show.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"PKI directory (default {DEFAULT_DIR})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse exits on --help and on bad arguments
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.action == "init":
        return _init(args.dir)
    return _show(args.dir)


def _init(directory: Path) -> int:
    try:
        _, report = init_pki(directory)
    except (PKIError, OSError) as exc:
        sys.stderr.write(f"gateway certs: {exc}\n")
        return 1
    sys.stdout.write(format_report(directory, report))
    return 0


def format_report(directory: Path, report: InitReport) -> str:
    """One line per file set: `created <name>: <reason>` or `kept <name>`, then a summary."""
    lines = [f"lab PKI in {directory}"]
    for name in report.outcomes:
        if name in report.reasons:
            lines.append(f"  created {name}: {report.reasons[name]}")
        else:
            lines.append(f"  kept    {name}")
    lines.append(f"{len(report.created)} created, {len(report.kept)} kept")
    return "\n".join(lines) + "\n"


def _show(directory: Path) -> int:
    if not (directory / "ca.pem").is_file():
        hint = f"run `gateway certs init --dir {directory}`"
        sys.stderr.write(f"gateway certs: no lab PKI in {directory} ({hint})\n")
        return 1
    pki = load_pki(directory)
    now = dt.datetime.now(dt.UTC)
    table = Table(title=f"lab PKI in {directory}")
    for column in ("host", "subject CN", "subjectAltName", "expires", "status"):
        table.add_column(column)
    rows = [(CA_NAME, pki.ca_cert)] + [(s.name, pki.host(s.name).cert) for s in DEFAULT_HOSTS]
    for name, path in rows:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            table.add_row(name, "", "", "", "missing or unreadable")
            continue
        table.add_row(name, _cn(cert), ", ".join(_sans(cert)), _expiry(cert), _status(cert, now))
    Console(width=160).print(table)
    return 0


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for general in san:
        if isinstance(general, x509.UniformResourceIdentifier):
            out.append(f"URI:{general.value}")
        elif isinstance(general, x509.IPAddress):
            out.append(f"IP:{general.value}")
        elif isinstance(general, x509.DNSName):
            out.append(general.value)
    return out


def _expiry(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"


def _status(cert: x509.Certificate, now: dt.datetime) -> str:
    if cert.not_valid_after_utc <= now:
        return "EXPIRED"
    if cert.not_valid_after_utc <= now + RENEW_BEFORE:
        return "renew soon"
    return "ok"


if __name__ == "__main__":
    sys.exit(main())
