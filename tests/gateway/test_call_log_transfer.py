"""The call log follows a transfer: the new leg (claimed by its call only once the transfer
is done) shows on the call's ladder with its first INVITE, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from certs.pki import LabPKI
from tests.gateway.test_controller import refer_to_3002, transfer_target_zone
from tests.gateway.test_runtime import (
    WAIT,
    Lab,
    make_lab,
    only_call,
    start_endpoint,
    wait_for,
)

__all__ = ["make_lab"]  # the fixture, re-exported for pytest


async def test_the_transfer_leg_joins_the_call_log(make_lab: Any, pki: LabPKI) -> None:
    target = await start_endpoint(pki, aor="3002@video.example.com")
    try:
        lab: Lab = await make_lab(extra=transfer_target_zone(target))
        ms_call, old = await refer_to_3002(lab, lab.endpoint)
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
