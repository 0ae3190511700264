"""pytest plugin (entry point ``pytest11: gateway_lab``): the whole lab for a test.

Fixtures:

- ``lab``: a running :class:`lab.topology.Lab` on free ports (``any_port``), started for
  the test and stopped after it (about 0.3 s each way). Function-scoped on purpose: an
  async fixture shared by several tests must run on the event loop of every test using it,
  which pytest-asyncio 1.x only arranges when each of those tests is marked with the same
  ``loop_scope``; a per-test lab works in any mode and keeps tests independent.
- ``lab_pki``: the lab certificates, made once per session in a temporary directory.
- ``lync_client``: ``await lync_client("alice")`` (default ``alice``) is a registered Lync
  client of the lab (``"david"`` is the external one, via the Edge, relay-only).
- ``sip_endpoint``: SIP endpoint 3001, registered to the lab's Unified CM
  (``lab.endpoint("3002")`` for the other).

The module imports nothing heavy at load time: pytest loads it in every run of this
environment, and it stays inert unless a test asks for these fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

try:
    import pytest_asyncio

    _async_fixture: Callable[..., Any] = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - the lab's test extra installs it
    _async_fixture = pytest.fixture

if TYPE_CHECKING:
    from certs.pki import LabPKI
    from lab.endpoint.agent import Endpoint
    from lab.lync.client import LyncClient
    from lab.topology import Lab

__all__ = ["lab", "lab_pki", "lync_client", "sip_endpoint"]


@pytest.fixture(scope="session")
def lab_pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    """The lab PKI (CA and every lab host's certificate), made once per session."""
    from certs.pki import init_pki

    return init_pki(tmp_path_factory.mktemp("lab-pki"))[0]


@_async_fixture
async def lab(lab_pki: LabPKI) -> AsyncIterator[Lab]:
    """The whole lab, on free ports, for one test."""
    from lab.topology import Lab

    async with Lab(lab_pki, any_port=True, management=True) as running:
        yield running


@pytest.fixture
def lync_client(lab: Lab) -> Callable[..., Awaitable[LyncClient]]:
    """``await lync_client("alice")``: a registered Lync client of the lab."""

    async def get(name: str = "alice") -> LyncClient:
        if name not in lab.clients:
            return await lab.add_client(name)
        return lab.client(name)

    return get


@pytest.fixture
def sip_endpoint(lab: Lab) -> Endpoint:
    """SIP endpoint 3001@video.example.com, registered to the lab's Unified CM."""
    return lab.endpoint("3001")
