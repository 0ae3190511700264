"""Acceptance: a Lync IM session through `gateway run`, with SIPp playing the Microsoft side
byte for byte as pidgin-sipe sends it (tests/data/sipp/sipe_im_session_uac.xml: INVITE with
``m=message ... sip null``, ms-text-format, Ms-Conversation-ID, branchless in-dialog Via
under the FE's; ACK; two MESSAGEs; BYE), over TCP into an stunnel client doing the FE's
mutual TLS to the B2BUA's Microsoft listener. The gateway's SIP broker carries the session
to the lab's simulated IM&P node on the broker port.

Checked on both sides: SIPp's statistics (every session complete, the 200's SDP an
``m=message`` answer), IM&P's record (INVITE with sipe's headers unchanged, ACK, both texts
as MESSAGEs in the dialog, BYE, no session left), and the gateway's /status (no call, no
media port in use).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from certs.pki import LabPKI
from lab.cisco.config import ImpConfig
from lab.cisco.imp import Imp
from tests.gateway.conftest import (
    IMP_HOST,
    Scenario,
    counters,
    fe_tunnel,
    require_peers,
    run_gateway,
    run_scenario,
)

pytestmark = pytest.mark.peer

SESSIONS = 2
TIMEOUT = 60.0


async def test_sipe_im_session_reaches_imp_through_the_broker(
    pki: LabPKI, tmp_path: Path
) -> None:
    require_peers()
    with run_gateway(pki, tmp_path) as gateway:
        config = ImpConfig(listen=(f"tls:{IMP_HOST}:{gateway.ports.imp}",),
                           certs=str(pki.directory), t1=0.1)
        imp = await Imp.start(config)
        try:
            with fe_tunnel(gateway, pki, tmp_path) as tunnel:
                run = Scenario(
                    "sipe_im_session_uac.xml",
                    calls=SESSIONS,
                    remote=(tunnel.host, tunnel.port),
                    service="3001",
                    rate=5,
                    limit=SESSIONS,
                    duration_ms=200,
                    global_timeout=TIMEOUT - 10,
                )
                result = await asyncio.to_thread(run_scenario, run, tmp_path, timeout=TIMEOUT)
            context = result.describe() + "\n--- gateway log ---\n" + gateway.log()
            assert counters(result) == {
                "successful": SESSIONS, "failed": 0, "incoming": 0, "outgoing": SESSIONS,
            }, context

            invites = [await imp.wait_for("INVITE", 5) for _ in range(SESSIONS)]
            acks = [await imp.wait_for("ACK", 5) for _ in range(SESSIONS)]
            messages = [await imp.wait_for("MESSAGE", 5) for _ in range(2 * SESSIONS)]
            byes = [await imp.wait_for("BYE", 5) for _ in range(SESSIONS)]
            status = gateway.status()
        finally:
            await imp.close()
    call_ids = {invite.call_id for invite in invites}
    assert len(call_ids) == SESSIONS
    for invite in invites:
        # sipe's headers and body pass the broker unchanged (it is a proxy, not a B2BUA).
        assert invite.headers.get("Ms-Conversation-ID") == "846930886"
        assert (invite.headers.get("ms-text-format") or "").endswith(
            "ms-body=aGVsbG8gZnJvbSBwaWRnaW4tc2lwZQ==")
        assert b"m=message 52466 sip null" in invite.body
        assert [via.host for via in invite.via][-1] == "10.10.2.31"  # sipe's, branchless
        assert invite.via[-1].branch is None
    assert {ack.call_id for ack in acks} == call_ids
    assert {bye.call_id for bye in byes} == call_ids
    texts = sorted(m.body.strip() for m in messages)
    assert texts == sorted([b"hello from pidgin-sipe", b"second line, formatted"] * SESSIONS)
    assert all(m.to.tag and m.call_id in call_ids for m in messages)
    assert any("msgr=" in (m.headers.get("Content-Type") or "") for m in messages)
    assert not imp.sessions
    assert status["calls"] == []
    assert status["port_pool"]["in_use"] == 0
