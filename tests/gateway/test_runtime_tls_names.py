"""The runtime's off-loopback settings over real sockets and real TLS: ``[b2bua]
ms_tls_name`` and a zone's ``tls_name`` are the names the peers' certificates are checked
against (OPTIONS probes and calls), ``[b2bua] allowed_networks`` is what the ICE legs may
send to. The lab "endpoint" certificate carries only a DNS name, no IP SAN, like a
container's certificate: dialled by address it is refused unless the zone names it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from certs.pki import LabPKI
from gateway.config import MICROSOFT_ZONE, loads
from gateway.runtime import Gateway, RuntimeOptions
from lab.endpoint import Endpoint, ListenSpec
from media.ice_leg import IceLeg
from sip.stack import Hop
from sip.transport import Transport
from tests.gateway.test_runtime import (
    FAST,
    GATEWAY_HOST,
    GATEWAY_NAME,
    FrontEnd,
    lab_toml,
    only_call,
    start_endpoint,
    wait_for,
)

ENDPOINT_NAME = "endpoint.video.example.com"


def tls_port(endpoint: Endpoint) -> int:
    listener = endpoint.stack.listener(Transport.TLS)
    assert listener is not None
    return listener.port


@pytest.fixture
async def start_gateway(pki: LabPKI) -> AsyncIterator[Callable[..., Any]]:
    """A gateway toward a FE and a TLS-only endpoint (the CUCM zone's peer)."""
    made: list[Any] = []

    async def start(*, overrides: tuple[str, ...] = (), zone_tls_name: str | None = None,
                    options: dict[str, Any] | None = None) -> tuple[Gateway, FrontEnd, Endpoint]:
        endpoint = await start_endpoint(pki, listen=(ListenSpec(Transport.TLS, "127.0.3.1", 0),))
        made.append(endpoint)
        fe = await FrontEnd.start(pki)
        made.append(fe.stack)
        zone = f'tls_name = "{zone_tls_name}"' if zone_tls_name else ""
        text = lab_toml(pki, endpoint_port=tls_port(endpoint), fe_port=fe.port,
                        zone_extra=zone).replace('transport = "tcp"', 'transport = "tls"')
        settings: dict[str, Any] = dict(timers=FAST, pki=pki, management_port=0)
        settings.update(options or {})
        gateway = Gateway(loads(text, overrides=overrides), RuntimeOptions(**settings))
        await gateway.start()
        made.append(gateway)
        listen = gateway.config.b2bua.listen
        fe.gateway = Hop(Transport.TLS, listen.host, listen.port, server_hostname=GATEWAY_NAME)
        return gateway, fe, endpoint

    yield start
    for thing in reversed(made):
        await thing.close()


def zone_status(gateway: Gateway, name: str) -> Any:
    assert gateway.monitors is not None
    return gateway.monitors.statuses()[name]


async def test_ms_tls_name_is_the_name_the_fe_certificate_is_checked_against(
        start_gateway: Any) -> None:
    gateway, _, _ = await start_gateway(overrides=("b2bua.ms_tls_name=pool.example.com",))
    assert gateway.zone_hops(MICROSOFT_ZONE)[0].server_hostname == "pool.example.com"
    await wait_for(lambda: zone_status(gateway, MICROSOFT_ZONE).active, "FE alive by name")


async def test_a_wrong_ms_tls_name_fails_the_fe_and_the_option_overrides_it(
        start_gateway: Any) -> None:
    wrong = ("b2bua.ms_tls_name=wrong.example.com",)
    gateway, _, _ = await start_gateway(overrides=wrong)
    await wait_for(lambda: zone_status(gateway, MICROSOFT_ZONE).reason is not None,
                   "FE probe failed")
    assert "TLS" in zone_status(gateway, MICROSOFT_ZONE).reason
    assert not zone_status(gateway, MICROSOFT_ZONE).active
    # RuntimeOptions.ms_server_name (the in-process lab's knob) beats the file.
    gateway, _, _ = await start_gateway(overrides=wrong,
                                        options={"ms_server_name": "fe.example.com"})
    assert gateway.tls_name(MICROSOFT_ZONE) == "fe.example.com"
    await wait_for(lambda: zone_status(gateway, MICROSOFT_ZONE).active, "FE alive")


async def test_a_tls_zone_peer_without_ip_san_needs_the_zone_tls_name(
        start_gateway: Any) -> None:
    gateway, fe, _ = await start_gateway()  # no tls_name: checked against 127.0.3.1
    await wait_for(lambda: zone_status(gateway, "CUCM Neighbor").reason is not None,
                   "zone probe failed")
    assert "TLS" in zone_status(gateway, "CUCM Neighbor").reason
    _, refused = await fe.call("3001@video.example.com")
    assert refused.status >= 400

    gateway, fe, endpoint = await start_gateway(zone_tls_name=ENDPOINT_NAME)
    assert [h.server_hostname for h in gateway.zone_hops("CUCM Neighbor")] == [ENDPOINT_NAME]
    await wait_for(lambda: zone_status(gateway, "CUCM Neighbor").active, "zone Active")
    call, response = await fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    assert only_call(endpoint) is not None
    assert (await fe.hangup(call)).status == 200


async def test_allowed_networks_reach_the_ice_legs(start_gateway: Any) -> None:
    gateway, _, _ = await start_gateway(
        overrides=('b2bua.allowed_networks=["127.0.9.0/24", "10.201.0.0/16"]',))
    ice = gateway.media_settings.ice
    assert ice.allowed_networks == ("127.0.9.0/24", "10.201.0.0/16")
    leg = IceLeg(GATEWAY_HOST, 0, ice, ufrag="abcd", pwd="p" * 22)
    assert leg.guard(("10.201.5.10", 5000)) and leg.guard(("127.0.9.1", 5000))
    assert not leg.guard(("127.0.1.1", 5000))  # loopback is no longer implied
    assert leg.refused == {("127.0.1.1", 5000)}
