"""Starting a lab SIP role (CUCM, IM&P, endpoint): its PKI and its listeners."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from pathlib import Path

from certs.pki import LabPKI, init_pki
from lab.endpoint.config import ListenSpec
from sip.stack import SipStack
from sip.transport import Transport

__all__ = ["listen_all", "load_pki"]


async def load_pki(
    certs: str | Path | None, client_name: str | None
) -> tuple[LabPKI | None, ssl.SSLContext | None]:
    """The lab PKI in ``certs`` (made there if missing) and a TLS client context presenting
    ``client_name`` (None: no client certificate); ``(None, None)`` without ``certs``."""
    if not certs:
        return None, None
    # Making keys and certificates is slow: off the event loop.
    pki, _ = await asyncio.to_thread(init_pki, Path(certs))
    return pki, pki.client_context(client_name)


async def listen_all(
    stack: SipStack,
    specs: Iterable[ListenSpec],
    pki: LabPKI | None,
    cert_name: str,
    *,
    require_client_cert: bool,
) -> None:
    """Bind every listener; TLS ones present ``cert_name`` (the role's config requires certs
    for TLS, so ``pki`` is set when one is TLS). The caller closes the stack on failure."""
    for spec in specs:
        context = None
        if spec.transport is Transport.TLS:
            assert pki is not None
            context = pki.server_context(cert_name, require_client_cert=require_client_cert)
        await stack.listen(spec.transport, spec.host, spec.port, ssl=context)
