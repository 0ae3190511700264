"""pidgin-sipe as an external user: through the Access Edge, media through the A/V Edge's
MS-TURN.

The real, unpatched client (Debian's pidgin + pidgin-sipe, default account settings: its
server set to the Access Edge, user, password) in a network namespace that reaches nothing
of the lab but the Edge's address, as a client outside the company firewall: it signs in
through the Access Edge (NTLM to the FE), asks the FE's MRAS for A/V Edge credentials,
allocates there with MS-TURN (libnice in its OC2007R2 mode) and calls 3001. The call can
only connect through its relay: the selected pair on the Microsoft side has sipe's relay
candidate, the Edge's TURN counters and the endpoint's show media both ways, the hang-up is
clean and the allocations are released.

As in test_real_client.py, sipe 1.25 needs tests/peers/pidgin_plugin/sax1_compat.c on Debian
12's current libxml2 to read any XML body (MRAS answers included).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from certs.pki import LabPKI
from lab.lync.config import AvEdgeConfig, EdgeConfig
from lab.netns import VethHost
from lab.topology import Lab
from tests.lab.test_real_client import (
    CALL_TIMEOUT,
    ENDPOINT,
    MIN_PACKETS,
    SIGN_IN_TIMEOUT,
    gateway_view,
    microsoft_packets,
    ports_in_use,
    received,
    sent,
    srtp_offer,
    until,
)
from tests.peers.pidgin import Pidgin, SipeAccount, pidgin_namespace
from turn.server import TurnServer

pytestmark = [pytest.mark.peer, pytest.mark.asyncio]

USER = "david.jones@example.com"
"""The lab's external user (its own lab client is stopped first)."""
EDGE_HOST = "127.0.1.2"
"""The Access Edge's address (SIP)."""
AV_EDGE_HOST = "127.0.1.3"
"""The A/V Edge's own address (TURN). These two are all the namespace may reach."""
ALLOCATION_LIFETIME = 15
"""The A/V Edge's allocation lifetime here (seconds). pidgin drops its libnice agent without
``nice_agent_close_async`` (libnice warns "We still have alive TURN refreshes"), so sipe
never deletes its UDP allocations: the Edge releases them when they lapse, as a real Edge
does; a short lifetime keeps the wait short (libnice refreshes before it ends)."""


@pytest.fixture(scope="module")
def veth() -> Iterator[VethHost]:
    """pidgin's namespace on a veth, routed to the Edge's address only: every other lab
    address (FE, gateway, endpoints) is unreachable from it, as from the Internet."""
    def edge_only(host: VethHost) -> list[list[str]]:
        return [["replace", "prohibit", "127.0.0.0/8"],
                ["add", f"{EDGE_HOST}/32", "via", host.outer, "dev", host.inner_link],
                ["add", f"{AV_EDGE_HOST}/32", "via", host.outer, "dev", host.inner_link]]

    with pidgin_namespace("external real-client test", edge_only) as host:
        yield host


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pidgin-cache")


@pytest.fixture
async def lab(lab_pki: LabPKI, veth: VethHost) -> AsyncIterator[Lab]:
    """The lab as it is (the gateway's allowed networks untouched: sipe's relay on the
    Edge is a 127.x address), the lab's own david client stopped."""
    edge = EdgeConfig(turn=AvEdgeConfig(max_lifetime=ALLOCATION_LIFETIME))
    async with Lab(lab_pki, any_port=True, management=True, lync_edge=edge) as running:
        client = running.clients.pop("david", None)
        if client is not None:
            await client.close()
        assert running.microsoft is not None and running.microsoft.edge is not None
        edge = running.microsoft.edge
        assert edge.listener.host == EDGE_HOST and edge.turn_address is not None
        assert edge.turn_address[0] == AV_EDGE_HOST
        yield running


def edge_turn(lab: Lab) -> TurnServer:
    assert lab.microsoft is not None and lab.microsoft.edge is not None
    turn = lab.microsoft.edge.turn
    assert turn is not None
    return turn


@pytest.fixture
async def sipe(lab: Lab, lab_pki: LabPKI, veth: VethHost, tmp_path: Path,
               cache: Path) -> AsyncIterator[Pidgin]:
    """pidgin-sipe in the namespace, its server the Access Edge, signing in as david."""
    assert lab.microsoft is not None and lab.microsoft.edge is not None
    edge = lab.microsoft.edge.listener
    account = SipeAccount(user=USER, password=lab.microsoft.fe.config.passwords[USER],
                          server=edge.host, port=edge.port)
    leaf = lab_pki.host("edge").cert.read_bytes()
    async with Pidgin(account, tmp_path, server_cert_pem=leaf, wrap=veth.argv([]),
                      cache=cache, sax1_compat=True) as pidgin:
        yield pidgin


def nominated_remote_types(lab: Lab, call_id: str) -> list[str]:
    """The remote candidate type of the gateway's nominated RTP pair on the Microsoft leg
    of each stream: sipe's candidate that carried the media."""
    assert lab.gateway is not None
    call = lab.gateway.calls.get(call_id)
    if call is None or call.media is None:
        return []
    types = []
    for stream in call.media.streams:
        if stream is None:
            continue
        agent: Any = stream.ice.agent
        pair = agent._nominated.get(1)
        if pair is not None:
            types.append(pair.remote_candidate.type)
    return types


def leg_drops(lab: Lab, call_id: str) -> str:
    """Each stream's (Microsoft leg, video leg) counters at the gateway, the drops by reason:
    what a failure needs to tell a refused packet from one that never came."""
    assert lab.gateway is not None
    call = lab.gateway.calls.get(call_id)
    if call is None or call.media is None:
        return "no call"
    out = []
    for index, stream in enumerate(call.media.streams):
        if stream is not None:
            out.append(f"stream {index}: " + " / ".join(
                ", ".join(f"{k} {v}" for k, v in asdict(leg).items() if v)
                for leg in stream.counters()))
    return "; ".join(out)


async def test_sipe_outside_calls_3001_through_the_edge_relay(lab: Lab, sipe: Pidgin) -> None:
    turn = edge_turn(lab)
    await sipe.wait_signed_on(SIGN_IN_TIMEOUT)
    fe = lab.microsoft.fe if lab.microsoft is not None else None
    assert fe is not None
    (binding,) = fe.lookup(USER)  # registered through the Edge
    connection = fe.stack.transports.connection(binding.hop.connection_id or -1)
    assert connection is not None and "edge.example.com" in connection.peer_names

    # Once signed in, sipe reads its provisioning (the A/V encryption policy, mrasUri) and
    # asks MRAS (SERVICE to the mrasUri) for the A/V Edge and credentials: a call placed
    # before the answer would gather without them, so the user calls after it, as anyone
    # would a moment after signing in.
    service = await sent(sipe, r"^SERVICE sip:mras\.", 0)
    assert "<location>internet</location>" in service.text, service.text
    mras_answer = await received(sipe, r"^SIP/2.0 \d\d\d", 0,
                                 call_id=service.header("Call-ID") or "", method="SERVICE")
    assert mras_answer.start_line.startswith("SIP/2.0 200"), mras_answer.text
    assert "<credentialsResponse" in mras_answer.text
    # What sipe makes of the answer comes after it in the log, in lines of their own: the
    # relay it read (logged while handling the 200), then its address resolved (in a later
    # main-loop turn; an IP literal is usable before, a name is not). Waited for, each.
    relay_host = re.escape(AV_EDGE_HOST)
    await sipe.until(rf"sipe: Media relay: {relay_host} ", SIGN_IN_TIMEOUT)
    await sipe.until(rf"sipe: Media relay {relay_host} resolved to {relay_host}\.",
                     SIGN_IN_TIMEOUT)

    idle_ports = ports_in_use(lab)
    assert turn.stats().allocations == 0
    mark = sipe.mark()
    await sipe.call(f"sip:{ENDPOINT}")
    invite = await sent(sipe, rf"^INVITE sip:{re.escape(ENDPOINT)}", mark)
    srtp_offer(invite)
    relay = rf"(?m)^a=candidate:.* {re.escape(AV_EDGE_HOST)} \d+ typ relay"
    assert re.search(relay, invite.text), invite.text  # its MS-TURN allocation on the A/V Edge
    call_id = invite.header("Call-ID")
    assert call_id is not None
    ok = await received(sipe, r"^SIP/2.0 [2-6]\d\d", mark, call_id=call_id, method="INVITE")
    assert ok.start_line.startswith("SIP/2.0 200"), ok.text

    await sipe.until(r"libnice-DEBUG: .* component 1 STATE-CHANGE connected -> ready",
                     CALL_TIMEOUT, since=mark)

    def flowing() -> bool:
        view = gateway_view(lab, call_id)
        if view is None:
            return False
        inbound, outbound = microsoft_packets(view)
        return inbound >= MIN_PACKETS and outbound >= MIN_PACKETS

    await until(flowing, CALL_TIMEOUT, f"SRTP both ways with sipe (log: {sipe.log_path})")
    # The Microsoft side's selected pair: sipe's relay candidate (nothing else can reach),
    # as libnice selected it and as the gateway's leg nominated it.
    selected = await sipe.until(r"libnice-DEBUG: .*Local selected pair: 1:1 .*", CALL_TIMEOUT,
                                since=mark)
    assert selected.group(0).endswith("RELAYED"), selected.group(0)
    assert nominated_remote_types(lab, call_id) == ["relay"]
    # Only MS-TURN allocations on the Edge (sipe's), carrying the media both ways.
    allocations = list(turn.core.allocations.values())
    assert allocations and all(a.ms is not None for a in allocations)
    # The Edge counts a packet to sipe when it relays it, after the gateway counted it sent
    # (its next read of the relay socket): waited for, not read in the same turn.
    await until(lambda: (stats := turn.stats()).packets_to_peer >= MIN_PACKETS
                and stats.packets_to_client >= MIN_PACKETS, CALL_TIMEOUT,
                f"the A/V Edge relaying {MIN_PACKETS} packets each way")
    endpoint_call = lab.callee_of(call_id, "3001")
    assert endpoint_call is not None
    try:
        report = await endpoint_call.wait_media(both_ways=True, min_packets=MIN_PACKETS,
                                                timeout=CALL_TIMEOUT)
    except TimeoutError as exc:   # once (load 10) 3001 got nothing: say where it went
        raise AssertionError(f"{exc}; the gateway's legs: {leg_drops(lab, call_id)}") from None
    assert report.packets_sent >= MIN_PACKETS and report.packets_received >= MIN_PACKETS

    bye_mark = sipe.mark()
    await sipe.hangup(f"sip:{ENDPOINT}")
    await sent(sipe, r"^BYE ", bye_mark, call_id=call_id)
    done = await received(sipe, r"^SIP/2.0 [2-6]", bye_mark, call_id=call_id, method="BYE")
    assert done.start_line.startswith("SIP/2.0 200"), done.text
    await until(lambda: gateway_view(lab, call_id) is None, CALL_TIMEOUT, "the call to end")
    await until(lambda: ports_in_use(lab) == idle_ports, CALL_TIMEOUT,
                "the call's ports back in the pool")
    await until(lambda: endpoint_call.state == "ended", CALL_TIMEOUT, "3001 to hang up")
    # Released: TCP ones with their connection, UDP ones when their lifetime lapses
    # unrefreshed (sipe sends no deletion, see ALLOCATION_LIFETIME).
    await until(lambda: turn.stats().allocations == 0, CALL_TIMEOUT + ALLOCATION_LIFETIME,
                f"sipe's A/V Edge allocations released (log: {sipe.log_path})")
