"""The lab's failure cases end to end (issue 6), each asserting what the caller sees:
the gateway certificate not trusted by the FE, the FE not a trusted host on the gateway
(403), call 101 refused (503 + Retry-After), the media port pool exhausted (503), TURN
blocked so ICE fails (BYE with Reason "failed to get media connectivity"), and an
encryption mismatch (488 "Encryption Levels not compatible").

Each case runs its own small topology (tests/lab/conftest.py, one endpoint, no IM&P),
built with the knob it needs; starting one takes a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from certs.pki import LabPKI
from gateway.config import MICROSOFT_ZONE
from gateway.status import LegSide
from lab.endpoint import CallFailed
from lab.lync.client import CallRefused
from sip.headers import Address
from sip.uri import URI, Params
from tests.lab.conftest import E2eLab, Knobs, e2e_lab

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
SMALL = Knobs(broker=False, endpoints=("3001",), dmz_turn=False)
"""One endpoint, no IM&P, no DMZ TURN: what most cases need."""


def response_to_invite(lab: E2eLab, who: str, call_id: str) -> tuple[int, str, dict[str, str]]:
    """(status, reason, headers) of the final response ``who`` received to its INVITE."""
    for seen in reversed(lab.wires[who].seen):
        message = seen.message
        if (not seen.sent and not hasattr(message, "method") and message.call_id == call_id
                and message.cseq.method == "INVITE" and message.status >= 200):
            headers = {name: message.headers.get(name) or "" for name in ("Retry-After",)}
            return message.status, message.reason, headers
    raise AssertionError(f"{who} got no final response to {call_id}")


def reason_text(value: str | None) -> str:
    """The text="..." of a Reason header value."""
    assert value, "no Reason header"
    _, _, rest = value.partition('text="')
    return rest.partition('"')[0]


async def test_gateway_certificate_not_trusted_by_the_fe(pki: LabPKI) -> None:
    """The FE's trusted application pools do not name the gateway: the gateway's INVITE
    gets 403, its OPTIONS 401 (NTLM challenge), its INFO
    "400 Missing Correct Via Header"; the endpoint calling Lync sees the 403."""
    knobs = replace(SMALL, fe_trusted_applications=("other.video.example.com",))
    async with e2e_lab(pki, knobs) as lab:
        await lab.client("alice")
        call = await lab.endpoints["3001"].call("alice.parkes@example.com")
        with pytest.raises(CallFailed) as refused:
            await call.wait_connected(WAIT)
        assert refused.value.status == 403
        status, reason, _ = response_to_invite(lab, "3001", call.call_id)
        assert (status, reason) == (403, "Forbidden")
        assert ("INVITE", 403) in lab.ms.fe.refusals
        assert not lab.wires["alice"].received("INVITE")

        # OPTIONS and INFO from the gateway, over its own TLS connection and certificate.
        agent = lab.gateway.agents[LegSide.MICROSOFT]
        hop = lab.gateway.zone_hops(MICROSOFT_ZONE)[0]
        fe = lab.ms.fe.listener
        options = agent.new_request("OPTIONS", URI("sip", host=fe.host, port=fe.port,
                                                   params=Params.of(transport="tls")), hop)
        answer = await asyncio.wait_for(agent.stack.send_request(options, hop), WAIT)
        assert (answer.status, answer.reason) == (401, "Unauthorized")
        assert (answer.headers.get("WWW-Authenticate") or "").startswith("NTLM ")
        uri = URI.parse("sip:alice.parkes@example.com")
        info = agent.new_request("INFO", uri, hop, to=Address(uri))
        answer = await asyncio.wait_for(agent.stack.send_request(info, hop), WAIT)
        assert (answer.status, answer.reason) == (400, "Missing Correct Via Header")
        await lab.idle()


async def test_fe_not_a_trusted_host_on_the_gateway(pki: LabPKI) -> None:
    async with e2e_lab(pki, replace(SMALL, trust_fe=False)) as lab:
        alice = await lab.client("alice")
        call = await alice.call("3001@video.example.com")
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected(WAIT)
        assert refused.value.status == 403
        status, reason, _ = response_to_invite(lab, "alice", call.call_id)
        fe_host = lab.ms.fe.listener.host
        assert (status, reason) == (403, f"Forbidden: {fe_host} is not a trusted host")
        assert call.state == "ended"
        assert not lab.wires["3001"].received("INVITE")  # never routed
        assert not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0


async def test_call_over_the_limit_is_refused_with_retry_after(pki: LabPKI) -> None:
    knobs = Knobs(max_calls=1, broker=False, dmz_turn=False)
    async with e2e_lab(pki, knobs) as lab:
        alice = await lab.client("alice")
        first = await alice.call("3001@video.example.com")
        incoming = await lab.endpoints["3001"].next_call(WAIT)
        await first.wait_media(both_ways=True, timeout=WAIT)

        second = await alice.call("3002@video.example.com")
        with pytest.raises(CallRefused) as refused:
            await second.wait_connected(WAIT)
        assert refused.value.status == 503
        status, reason, headers = response_to_invite(lab, "alice", second.call_id)
        assert (status, reason) == (503, "Service Unavailable: call limit of 1 reached")
        assert headers["Retry-After"] == str(lab.gateway.retry_after)
        assert not lab.wires["3002"].received("INVITE")
        # The call in progress is untouched: media keeps flowing both ways.
        before = first.media().packets_received
        await first.wait_media(both_ways=True, min_packets=before + 10, timeout=WAIT)
        await incoming.wait_media(both_ways=True, timeout=WAIT)
        assert len(lab.gateway.calls) == 1
        await first.hangup()
        await lab.idle()


async def test_media_port_pool_exhausted(pki: LabPKI) -> None:
    async with e2e_lab(pki, replace(SMALL, media_ports=2)) as lab:
        alice = await lab.client("alice")
        call = await alice.call("3001@video.example.com")
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected(WAIT)
        assert refused.value.status == 503
        status, reason, _ = response_to_invite(lab, "alice", call.call_id)
        assert status == 503
        assert reason.startswith("Service Unavailable: Media port pool exhausted"), reason
        assert not lab.wires["3001"].received("INVITE")
        assert lab.gateway.pool.ports_in_use == 0 and not lab.gateway.calls


async def test_turn_blocked_so_ice_fails_and_the_gateway_byes_both_legs(pki: LabPKI) -> None:
    """david is external and relay-only; the A/V Edge may not relay to the gateway and the
    DMZ TURN is off, so no candidate pair can work. The gateway gives ICE ``ice_timeout``
    seconds, then clears the call with a BYE carrying its Reason to both sides."""
    knobs = replace(SMALL, edge_allow_peers=("127.0.1.0/24", "127.0.5.0/24"), ice_timeout=1.5)
    async with e2e_lab(pki, knobs) as lab:
        david = await lab.client("david", ice_timeout=30.0)  # the gateway gives up first
        call = await david.call("3001@video.example.com")
        incoming = await lab.endpoints["3001"].next_call(WAIT)
        await call.wait_connected(WAIT)  # signalling works, media cannot
        bye = await lab.wires["david"].wait_received("BYE", call.call_id, timeout=WAIT)
        assert reason_text(bye.headers.get("Reason")) == "failed to get media connectivity"
        await asyncio.wait_for(call.ended.wait(), WAIT)
        assert call.result == "BYE from peer"
        assert call.media().packets_received == 0
        far = await lab.wires["3001"].wait_received("BYE", incoming.call_id, timeout=WAIT)
        assert reason_text(far.headers.get("Reason")) == "failed to get media connectivity"
        edge = lab.ms.edge
        assert edge is not None and edge.turn is not None
        assert edge.turn.stats().peers_denied > 0  # the block is what stopped it
        await lab.idle()


async def test_encryption_mismatch_is_refused_with_488(pki: LabPKI) -> None:
    """The gateway does no encryption toward Microsoft; Lync requires it."""
    async with e2e_lab(pki, replace(SMALL, encryption="off")) as lab:
        alice = await lab.client("alice")
        call = await alice.call("3001@video.example.com")
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected(WAIT)
        assert refused.value.status == 488
        status, reason, _ = response_to_invite(lab, "alice", call.call_id)
        assert (status, reason) == (488, "Encryption Levels not compatible")
        assert not lab.wires["3001"].received("INVITE")
        assert lab.gateway.pool.ports_in_use == 0 and not lab.gateway.calls
