"""The gateway's Microsoft ICE leg and the lab's Lync client against a real libnice agent in
its OC2007R2 mode ([MS-ICE2] version 2: pidgin-sipe's ICE), both ICE roles: ICE completes
and datagrams flow both ways over the nominated pair. The leg also meets libnice in its
standard RFC 5245 mode, and speaks RFC 5389 to it."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Iterator

import pytest

from lab.lync.client_media import ClientIce, IceServers, networks
from media.ice_leg import IceLeg, IceSettings
from media.ms_stun import StunDialect
from tests.media.libnice import (
    NamespaceUnavailable,
    Veth,
    libnice_peer,
    read_nice_sdp,
    veth_pair,
    why_not,
    write_nice_sdp,
)

REASON = why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"libnice peer: {REASON}")
WAIT = 25.0


@pytest.fixture
def veth() -> Iterator[Veth]:
    try:
        pair = veth_pair()
        made = pair.__enter__()
    except NamespaceUnavailable as error:
        pytest.skip(f"libnice peer: cannot make a network namespace and veth here: {error}")
    try:
        yield made
    finally:
        pair.__exit__(None, None, None)


def ufrag_pwd() -> tuple[str, str]:
    return secrets.token_hex(2), secrets.token_hex(12)


async def until(predicate: object, timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)  # polling the received list; no event to wait on
    await asyncio.wait_for(poll(), timeout)


def free_port_pair(host: str) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind((host, port))
                b.bind((host, port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


@pytest.mark.parametrize(("compatibility", "dialect", "version"), [
    ("OC2007R2", StunDialect.MS_ICE2, 2), ("RFC5245", StunDialect.RFC5389, None)],
    ids=["oc2007r2", "rfc5245"])
@pytest.mark.parametrize("gateway_controlling", [True, False],
                         ids=["gateway-controlling", "gateway-controlled"])
async def test_ice_leg_completes_with_libnice(veth: Veth, gateway_controlling: bool,
                                              compatibility: str, dialect: StunDialect,
                                              version: int | None) -> None:
    """libnice in its Microsoft mode and in its standard one: the leg speaks each's dialect."""
    ufrag, pwd = ufrag_pwd()
    leg = IceLeg(veth.ours, free_port_pair(veth.ours),
                 IceSettings(allowed_networks=(veth.network,), connect_timeout=WAIT),
                 ufrag=ufrag, pwd=pwd, controlling=gateway_controlling)
    received: list[tuple[int, bytes]] = []
    leg.on_media = lambda data, component: received.append((component, data))
    try:
        await leg.gather()
        async with libnice_peer(veth, controlling=not gateway_controlling,
                                compatibility=compatibility) as peer:
            theirs = read_nice_sdp((await peer.wait(lambda e: e["event"] == "local"))["sdp"])
            assert theirs.candidates, "libnice offered no UDP candidate on the veth"
            peer.send(remote_sdp=write_nice_sdp(leg.ufrag, leg.pwd, leg.local_candidates))
            await leg.connect(theirs.ufrag, theirs.pwd, theirs.candidates,
                              controlling=gateway_controlling)
            for component in (1, 2):
                await peer.wait(lambda e, c=component: e["event"] == "state"
                                and e["component"] == c and e["state"] == "READY")
            assert leg.stun_policy.peer is dialect
            assert leg.stun_policy.peer_version == version
            assert leg.controlling is gateway_controlling
            # Gateway -> libnice on the nominated pair.
            for index in range(5):
                assert leg.send(f"gateway-{index}".encode(), 1)
            await peer.wait(lambda e: e["event"] == "data"
                            and e["payload"].startswith("gateway-"))
            # libnice -> gateway.
            peer.send(send=5)
            await until(lambda: any(data.startswith(b"libnice-") for _, data in received))
            assert leg.remote_rtp is not None and leg.remote_rtp[0] == veth.theirs
    finally:
        await leg.close()
    # Nothing but libnice's own checks and payloads reached the media sink.
    assert all(data.startswith(b"libnice-") for _, data in received)


@pytest.mark.parametrize("client_controlling", [True, False],
                         ids=["client-controlling", "client-controlled"])
async def test_lab_client_speaks_ms_ice2_that_libnice_accepts(veth: Veth,
                                                             client_controlling: bool) -> None:
    received: list[bytes] = []
    ice = ClientIce(veth.ours, IceServers(), controlling=client_controlling,
                    on_media=lambda data, component: received.append(data),
                    allowed=networks([veth.network]), stun_dialect=StunDialect.MS_ICE2)
    try:
        await ice.gather()
        async with libnice_peer(veth, controlling=not client_controlling) as peer:
            theirs = read_nice_sdp((await peer.wait(lambda e: e["event"] == "local"))["sdp"])
            peer.send(remote_sdp=write_nice_sdp(ice.local_username, ice.local_password,
                                                ice.sdp_candidates))
            await ice.run(theirs.ufrag, theirs.pwd, theirs.candidates, WAIT)
            await peer.wait(lambda e: e["event"] == "state" and e["component"] == 1
                            and e["state"] == "READY")
            assert ice.stun_policy.peer is StunDialect.MS_ICE2
            assert ice.send_media(b"client-0", 1)
            await peer.wait(lambda e: e["event"] == "data"
                            and e["payload"].startswith("client-"))
            peer.send(send=3)
            await until(lambda: any(data.startswith(b"libnice-") for data in received))
    finally:
        await ice.close()
