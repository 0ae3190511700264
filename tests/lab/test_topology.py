"""lab.topology.Lab in process: every role up on its lab address with free ports, wired to
each other (FE static route and CUCM trunk to the gateway's real ports), progress events in
start order, status, two labs side by side, and calls that need the wiring (both
directions, IM through the broker)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from certs.pki import LabPKI
from lab.topology import ROLES, Lab, RoleEvent, RoleState


async def test_roles_start_in_order_on_their_addresses_and_stop(lab_pki: LabPKI) -> None:
    events: list[RoleEvent] = []
    async with Lab(lab_pki, any_port=True, progress=events.append) as lab:
        ups = [e.role for e in events if e.state is RoleState.UP]
        assert ups == list(ROLES)
        for role in ROLES:  # each role said it was starting before it was up
            states = [e.state for e in events if e.role == role]
            assert states == [RoleState.STARTING, RoleState.UP], (role, states)
        status = lab.status()
        roles = {r.role: r for r in status.roles}
        assert all(r.state is RoleState.UP for r in roles.values())
        hosts = {"dmz-turn": "127.0.4.1", "imp": "127.0.3.2", "cucm": "127.0.3.1",
                 "lync-fe": "127.0.1.1", "lync-edge": "127.0.1.2", "gateway": "127.0.2.1",
                 "endpoint-3001": "127.0.3.11", "endpoint-3002": "127.0.3.12"}
        for role, host in hosts.items():
            own = [a for a in roles[role].addresses if not a.startswith(("http", "turn-"))]
            assert own and all(f":{host}:" in a for a in own), roles[role]
        # The A/V Edge on its own address beside the Access Edge's, as a real Edge.
        av = [a for a in roles["lync-edge"].addresses if a.startswith("turn-")]
        assert av and all(":127.0.1.3:" in a for a in av), av
        assert "registered=True" in roles["alice"].addresses[0]
        # The gateway status page answers on the (free) management port.
        assert status.status_url is not None
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(  # noqa: S310 - loopback
            status.status_url, timeout=5).read())
        page = json.loads(body)
        zones = {z["name"]: z for z in page["zones"]}
        assert page["capacity"]["active"] == 0 and "CUCM Neighbor" in zones
        assert status.gateway is not None
    assert [e.role for e in events if e.state is RoleState.STOPPED] == list(reversed(ROLES[1:]))


async def test_wiring_carries_calls_both_ways_and_im(lab_pki: LabPKI) -> None:
    async with Lab(lab_pki, any_port=True) as lab:
        # CUCM -> gateway uses the trunk pointed at the gateway's real TLS port.
        call = await lab.endpoint("3002").call("alice.parkes@example.com", video=False)
        await call.wait_connected()
        answered = await lab.next_call("alice")
        assert answered is lab.callee_of(call.call_id, "alice")
        report = await answered.wait_media(both_ways=True)
        assert report.ice_pair is not None and report.ice_pair.startswith("host/")
        await call.hangup()
        # The IM: FE static route -> gateway broker -> IM&P.
        assert lab.imp is not None
        response = await lab.send_message("alice", "imp@video.example.com", "hi")
        assert response.status == 200
        message = await lab.imp.wait_for("MESSAGE")
        assert message.body == b"hi" and message.from_.uri.user == "alice.parkes"


async def test_two_labs_run_side_by_side(lab_pki: LabPKI) -> None:
    async with Lab(lab_pki, any_port=True) as one, Lab(lab_pki, any_port=True) as two:
        assert one.status_url != two.status_url
        call = await two.client("david").call("3001@video.example.com", video=False)
        await call.wait_connected()
        report = await call.wait_media(both_ways=True)
        assert report.ice_pair is not None and report.ice_pair.startswith("relay/")
        assert one.gateway is not None and not one.gateway.calls  # only lab two saw it
        await call.hangup()


async def test_a_role_that_cannot_start_is_reported_and_the_rest_stopped(
        lab_pki: LabPKI) -> None:
    events: list[RoleEvent] = []
    async with Lab(lab_pki, any_port=True) as first:
        assert first.turn is not None
        # A second lab on the real TURN port of the first cannot bind its DMZ TURN.
        port = first.turn.addresses[0][2]
        import lab.topology as topology

        broken = Lab(lab_pki, any_port=False, progress=events.append)
        broken._port = lambda wanted: port if wanted == 3478 else 0  # type: ignore[method-assign]
        try:
            async with broken:
                raise AssertionError("the lab started on a taken port")
        except OSError:
            pass
        assert topology.ROLES[1] == "dmz-turn"
    failed = [e for e in events if e.state is RoleState.FAILED]
    assert [e.role for e in failed] == ["dmz-turn"] and failed[0].detail


async def test_zone_overrides_still_reach_this_labs_cucm(lab_pki: LabPKI) -> None:
    """A ``zones`` override (here: the default list with another hop count) replaces the
    section after the lab pointed the CUCM zone at its own CUCM: the lab points it again."""
    from gateway.configkit import read_toml
    from gateway.run import DEFAULT_CONFIG
    from lab.topology import CUCM_HOST
    from sip.transport import Transport

    zones = read_toml(DEFAULT_CONFIG)["zones"]
    for zone in zones:
        zone["hop_count"] = 7
    async with Lab(lab_pki, any_port=True, gateway_overrides={"zones": zones}) as lab:
        assert lab.cucm is not None
        cucm_tls = next(a for a in lab.cucm.listeners if a.transport is Transport.TLS)
        config = lab.gateway_config()
        cucm_zones = [z for z in config.zones if CUCM_HOST in z.peers]
        assert cucm_zones and all(z.hop_count == 7 for z in cucm_zones)
        assert all(z.port == cucm_tls.port for z in cucm_zones)
        call = await lab.client("alice").call("3001@video.example.com", video=False)
        await call.wait_connected()
        await call.hangup()
