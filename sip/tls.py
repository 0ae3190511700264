"""TLS contexts for SIP over TLS (stdlib :mod:`ssl`) and certificate name helpers.

Lync / Skype for Business trusts SIP peers by certificate name (the gateway's cluster
FQDN must be in its trusted application pool), so the names a peer presented (subject
CN + SAN DNS entries) are exposed on every connection.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from os import PathLike
from typing import Any

__all__ = [
    "client_context",
    "describe_tls_error",
    "peer_names",
    "server_context",
]

StrPath = str | PathLike[str]


def _keylog(context: ssl.SSLContext) -> ssl.SSLContext:
    """Honour ``SSLKEYLOGFILE`` (NSS key log, for Wireshark) as ``ssl.create_default_context``
    does; a bare ``ssl.SSLContext()`` ignores it."""
    path = os.environ.get("SSLKEYLOGFILE")
    if path and not sys.flags.ignore_environment:
        context.keylog_filename = path
    return context


def server_context(
    cert: StrPath,
    key: StrPath,
    *,
    ca_file: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context presenting ``cert``/``key``.

    With ``require_client_cert`` (mutual TLS, as the Lync FE and the gateway's
    Microsoft-facing port use) the client must present a certificate chaining to
    ``ca_file``. With a ``ca_file`` but no requirement, a client certificate is
    verified when offered.
    """
    if require_client_cert and ca_file is None:
        raise ValueError("mutual TLS needs a ca_file to verify client certificates")
    context = _keylog(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_file: StrPath,
    *,
    cert: StrPath | None = None,
    key: StrPath | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context trusting ``ca_file``; ``cert``/``key`` are presented for mutual TLS.

    The peer name is checked against the certificate's SAN (DNS or IP) entries, using the
    ``server_hostname`` given at connect time, which may differ from the address dialled.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key")
    context = _keylog(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca_file)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if cert is not None and key is not None:
        context.load_cert_chain(certfile=cert, keyfile=key)
    return context


def peer_names(peercert: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Subject common names then SAN DNS names from :meth:`ssl.SSLSocket.getpeercert`.

    Order is kept and duplicates removed; an unverified or absent certificate has no names.
    """
    if not peercert:
        return ()
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName" and value not in names:
                names.append(value)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS" and value not in names:
            names.append(value)
    return tuple(names)


def describe_tls_error(error: BaseException) -> str:
    """A log-friendly reason for a failed handshake.

    e.g. ``certificate verify failed: unable to get local issuer certificate``.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return f"certificate verify failed: {detail}"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        text = str(error)
        return f"{reason}: {text}" if reason and reason not in text else text
    if isinstance(error, TimeoutError):
        return "handshake timed out"
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        # Typically the peer rejected our certificate or name and hung up.
        return f"peer closed the connection during the handshake ({type(error).__name__})"
    return str(error) or type(error).__name__
