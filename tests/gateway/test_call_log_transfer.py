"""The call log follows a transfer: the new leg (claimed by its call only once the transfer
is done) shows on the call's ladder with its first INVITE, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from certs.pki import LabPKI
from tests.gateway.test_runtime import (
    WAIT,
    Lab,
    endpoint_port,
    make_lab,
    only_call,
    start_endpoint,
    wait_for,
)

__all__ = ["make_lab"]  # the fixture, re-exported for pytest


async def test_the_transfer_leg_joins_the_call_log(make_lab: Any, pki: LabPKI) -> None:
    target = await start_endpoint(pki, aor="3002@video.example.com")
    extra = f"""
[[zones]]
name = "CUCM Two"
peers = ["127.0.3.1"]
port = {endpoint_port(target)}
transport = "tcp"
monitor = false

[[search_rules]]
name = "3002 on CUCM Two"
priority = 50
pattern_type = "exact"
pattern = "3002@video.example.com"
target = "CUCM Two"
"""
    try:
        lab: Lab = await make_lab(extra=extra)
        ms_call, response = await lab.fe.call("3001@video.example.com")
        assert response.status == 200 and ms_call is not None
        old = only_call(lab.endpoint)
        await asyncio.wait_for(old.confirmed.wait(), WAIT)
        await wait_for(lambda: next(iter(lab.gateway.calls.values())).state.value
                       == "connected", "connected")
        assert old.dialog is not None
        refer, hop = lab.endpoint.dialog_request(
            old.dialog, "REFER", headers=(("Refer-To", "<sip:3002@video.example.com>"),))
        answer = await asyncio.wait_for(lab.endpoint.stack.send_request(refer, hop), WAIT)
        assert answer.status == 202
        await wait_for(lambda: len(target.calls) == 1, "transfer target called")
        new = only_call(target)
        await asyncio.wait_for(old.ended.wait(), WAIT)
        await lab.fe.hangup(ms_call)
        await asyncio.wait_for(new.ended.wait(), WAIT)
        await wait_for(lambda: not lab.gateway.calls, "cleared")
        (record,) = lab.gateway.call_log.records.values()
        assert record.call_id in record.leg_ids
        assert record.leg_ids >= {old.call_id, new.call_id} and len(record.leg_ids) == 3
        new_leg = [m.label for m in record.messages if m.leg_call_id == new.call_id]
        assert new_leg[0] == "INVITE" and "BYE" in new_leg, new_leg
        assert "REFER" in [m.label for m in record.messages]
        seqs = [m.seq for m in record.messages]
        assert seqs == sorted(seqs)
    finally:
        await target.close()
