"""Shared session fixtures (only): each engineer's own fixtures live in their test modules."""

from __future__ import annotations

import pytest

from certs.pki import LabPKI, init_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    """The lab PKI (CA + every lab host's cert and key), made once per test session.

    Use `pki.host("gateway").chain / .key`, `pki.ca_cert`, or the ready-made
    `pki.server_context("fe")` / `pki.client_context("gateway")` (mutual TLS, lab CA).
    """
    lab_pki, _ = init_pki(tmp_path_factory.mktemp("pki"))
    return lab_pki
