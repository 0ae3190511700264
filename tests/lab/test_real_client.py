"""pidgin-sipe, the independent open implementation of the Lync client, through the lab.

The real, unpatched client (Debian's pidgin + pidgin-sipe) with sipe's default account
settings (server, user, password only) signs in to the lab FE, sends an IM that reaches
IM&P, and makes and takes audio calls with SIP endpoint 3001 through the gateway (MS-ICE2
through libnice, SRTP through GStreamer). pidgin runs headless in a network namespace on a
veth (libnice skips loopback interfaces); the lab runs in this process on its loopback
addresses, which the namespace reaches over the veth (lab.netns.VethHost). Driven over
D-Bus, with the test plugin accepting calls (tests/peers/pidgin.py).

Skips with the reason where pidgin-sipe is not installed or namespaces cannot be made.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from lab.netns import NetnsError, VethHost
from lab.netns import unavailable as netns_unavailable
from lab.topology import Lab
from tests.peers.pidgin import Pidgin, SipeAccount
from tests.peers.pidgin import unavailable as pidgin_unavailable

pytestmark = [pytest.mark.peer, pytest.mark.asyncio]

USER = "alice.parkes@example.com"
"""The lab user sipe signs in as (the lab's own client of that name is stopped first)."""
LAB_PASSWORD = "alice-lab-password"
"""Used only when the lab FE has no password for the user in its configuration."""
SIGN_IN_TIMEOUT = 20.0
CALL_TIMEOUT = 30.0
SELF_SUBSCRIPTIONS = ("vnd-microsoft-roaming-contacts", "vnd-microsoft-roaming-self",
                      "vnd-microsoft-roaming-ACL", "vnd-microsoft-provisioning-v2",
                      "presence.wpending")
"""The events sipe subscribes to for its own data once signed in (with the FE's
Allow-Events), each of which the FE must answer."""


@pytest.fixture(scope="module")
def veth() -> Iterator[VethHost]:
    """A namespace for pidgin on a veth, from which the lab's 127.x addresses answer."""
    for reason in (pidgin_unavailable(), netns_unavailable()):
        if reason is not None:
            pytest.skip(f"real-client test skipped: {reason}")
    host = VethHost.unique()
    try:
        host.create()
    except NetnsError as error:
        host.destroy()
        pytest.skip(f"real-client test skipped: cannot make a network namespace: {error}")
    try:
        yield host
    finally:
        host.destroy()
        assert not host.exists(), f"namespace {host.namespace} left behind"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the module's pidgins: the GStreamer registry (built once, ~2 s)."""
    return tmp_path_factory.mktemp("pidgin-cache")


@pytest.fixture
async def lab(lab_pki: LabPKI, veth: VethHost) -> AsyncIterator[Lab]:
    """The lab with the veth network among the gateway's allowed media destinations, and
    the lab's own alice client stopped (sipe signs in as alice)."""
    overrides = {"b2bua": {"allowed_networks": ["127.0.0.0/8", "::1/128", str(veth.subnet)]}}
    async with Lab(lab_pki, any_port=True, management=True,
                   gateway_overrides=overrides) as running:
        await running.clients.pop("alice").close()
        yield running


def password_of(lab: Lab, user: str) -> str:
    """The lab FE's password for ``user`` (its user accounts), else :data:`LAB_PASSWORD`."""
    assert lab.microsoft is not None
    for name in ("users", "user_accounts", "accounts"):
        accounts = getattr(lab.microsoft.fe.config, name, None)
        if isinstance(accounts, dict) and user in accounts:
            value = accounts[user]
            return str(getattr(value, "password", value))
        for entry in accounts or ():
            if getattr(entry, "aor", getattr(entry, "user", None)) in (user, f"sip:{user}"):
                return str(entry.password)
    return LAB_PASSWORD


@pytest.fixture
async def sipe(lab: Lab, lab_pki: LabPKI, veth: VethHost, tmp_path: Path,
               cache: Path) -> AsyncIterator[Pidgin]:
    """pidgin-sipe started in the namespace, signing in to the lab FE as alice."""
    assert lab.microsoft is not None
    fe = lab.microsoft.fe.listener
    account = SipeAccount(user=USER, password=password_of(lab, USER), server=fe.host,
                          port=fe.port)
    leaf = lab_pki.host("fe").cert.read_bytes()
    async with Pidgin(account, tmp_path, server_cert_pem=leaf, wrap=veth.argv([]),
                      cache=cache) as pidgin:
        yield pidgin


def _answered(messages: list[str], event: str) -> bool:
    """Whether sipe received a 2xx to its SUBSCRIBE for ``event``."""
    call_ids = {m.group(1) for msg in messages if msg.startswith("SUBSCRIBE ")
                and re.search(rf"(?im)^Event:\s*{re.escape(event)}\s*$", msg)
                for m in [re.search(r"(?im)^Call-ID:\s*(\S+)", msg)] if m}
    return any(msg.startswith("SIP/2.0 2") and re.search(r"(?im)^CSeq:\s*\d+\s+SUBSCRIBE", msg)
               and (m := re.search(r"(?im)^Call-ID:\s*(\S+)", msg)) and m.group(1) in call_ids
               for msg in messages)


async def test_sipe_signs_in(lab: Lab, sipe: Pidgin) -> None:
    """sipe connects over TLS (no client certificate), signs in with NTLM, and the FE
    answers every self-subscription it makes."""
    await sipe.wait_signed_on(SIGN_IN_TIMEOUT)
    for event in SELF_SUBSCRIPTIONS:
        await sipe.until(rf"(?i)^Event:\s*{re.escape(event)}\s*$", SIGN_IN_TIMEOUT)
    # Every SUBSCRIBE sipe sent got its 2xx (and its NOTIFY) from the FE itself.
    deadline = asyncio.get_running_loop().time() + SIGN_IN_TIMEOUT
    while True:
        messages = sipe.sip_messages()
        missing = [e for e in SELF_SUBSCRIPTIONS if not _answered(messages, e)]
        if not missing or asyncio.get_running_loop().time() > deadline:
            break
        await sipe.until(r"MESSAGE END", 5.0)
    assert not missing, f"self-subscriptions not answered: {missing} (log: {sipe.log_path})"
