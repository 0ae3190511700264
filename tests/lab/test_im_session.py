"""IM sessions end to end on loopback with mutual TLS: a lab Lync client starts IM as
Lync and pidgin-sipe do (INVITE with ``m=message ... sip null``, ms-text-format,
Ms-Conversation-ID), through the FE and the gateway's SIP broker, to the simulated IM&P.

Checked: the IM&P node gets the INVITE, its ACK and the text as a MESSAGE inside the dialog
(recorded for ``wait_for("MESSAGE")`` as page-mode text is); IM&P's own MESSAGE comes back
to the client inside the session through the broker's Record-Route (the node is no
Microsoft trusted host) and the FE; BYE from either side ends the session on both; the
gateway set up no call and took no media port; ``im_mode = "page"`` keeps one page-mode
MESSAGE per text.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from certs.pki import LabPKI
from lab.cisco.imp import Imp
from lab.lync.client import LyncClient
from lab.lync.im import ImSession
from tests.lab.conftest import E2eLab, e2e_lab

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

WAIT = 10.0
TARGET = "3001@video.example.com"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(pki: LabPKI) -> AsyncIterator[E2eLab]:
    async with e2e_lab(pki) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(lab: E2eLab) -> LyncClient:
    return await lab.client("alice")


def imp_of(lab: E2eLab) -> Imp:
    assert lab.imp is not None
    return lab.imp


def no_call_no_port(lab: E2eLab) -> None:
    assert not lab.gateway.calls
    assert lab.gateway.pool.ports_in_use == 0


async def test_im_session_reaches_imp_and_text_flows_both_ways(
    lab: E2eLab, alice: LyncClient
) -> None:
    imp = imp_of(lab)
    broker = lab.gateway.broker
    before = (broker.stats.im_sessions, broker.stats.im_sessions_ended, broker.stats.acks)
    text = "hello from an IM session"
    response = await alice.im.send(TARGET, text, timeout=WAIT)
    assert response.status == 200, f"{response.status} {response.reason}"
    session = alice.im.session_with(f"sip:{TARGET}")
    assert isinstance(session, ImSession)

    invite = await imp.wait_for("INVITE", timeout=WAIT)
    assert invite.call_id == session.call_id
    assert b"m=message " in invite.body and b" sip null" in invite.body
    # What sipe puts in the INVITE reached IM&P unchanged (the broker is a proxy).
    text_format = invite.headers.get("ms-text-format") or ""
    assert text_format.endswith("ms-body=" + base64.b64encode(text.encode()).decode())
    assert invite.headers.get("Ms-Conversation-ID")
    assert len(invite.headers.getlist("Via")) >= 3  # alice, the FE, the gateway's broker
    assert invite.record_route, "the broker and the FE stay in the session's path"
    # IM&P did not claim the INVITE's text, so it came again as a MESSAGE in the dialog.
    assert not session.first_text_taken
    ack = await imp.wait_for("ACK", timeout=WAIT)
    assert ack.call_id == session.call_id
    message = await imp.wait_for("MESSAGE", timeout=WAIT)
    assert message.call_id == session.call_id and message.to.tag
    assert message.body == text.encode()
    no_call_no_port(lab)

    again = await session.send("second line", timeout=WAIT)
    assert again.status == 200
    assert (await imp.wait_for("MESSAGE", timeout=WAIT)).body == b"second line"

    # IM&P -> client inside the session, through the broker's Record-Route and the FE.
    reply = await asyncio.wait_for(imp.send_message(session.call_id, "hello back"), WAIT)
    assert reply.status == 200, f"{reply.status} {reply.reason}"
    got = await session.next_message(WAIT)
    assert got.body == b"hello back"

    bye = await session.close(timeout=WAIT)
    assert bye is not None and bye.status == 200
    assert (await imp.wait_for("BYE", timeout=WAIT)).call_id == session.call_id
    assert session.call_id not in imp.sessions
    assert alice.im.session_with(f"sip:{TARGET}") is None
    no_call_no_port(lab)
    after = (broker.stats.im_sessions, broker.stats.im_sessions_ended, broker.stats.acks)
    assert after == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_imp_ends_the_session(lab: E2eLab, alice: LyncClient) -> None:
    imp = imp_of(lab)
    session = await alice.im.open(TARGET, timeout=WAIT)
    await imp.wait_for("INVITE", timeout=WAIT)
    assert session.call_id in imp.sessions
    response = await asyncio.wait_for(imp.bye(session.call_id), WAIT)
    assert response.status == 200
    await asyncio.wait_for(session.closed.wait(), WAIT)
    assert alice.im.session_with(f"sip:{TARGET}") is None
    no_call_no_port(lab)


async def test_page_mode_client_sends_one_message(lab: E2eLab) -> None:
    imp = imp_of(lab)
    old = await lab.client("alice", im_mode="page")
    try:
        response = await old.im.send(TARGET, "page mode", timeout=WAIT)
        assert response.status == 200
        message = await imp.wait_for("MESSAGE", timeout=WAIT)
        assert message.body == b"page mode" and message.to.tag is None
        assert not old.im.sessions
    finally:
        await old.close()
