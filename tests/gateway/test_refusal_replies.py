"""Refusals stay small and counted (issue 12, defect 6): a 404's reason phrase does not
echo an unbounded Request-URI (each UDP retransmission of the 404 would reflect it), and
a 483 for Max-Forwards 0 counts in ``gateway_calls_refused_total{reason="too_many_hops"}``
like every other refusal."""

from __future__ import annotations

from typing import Any

from sip.message import MAX_REASON_LENGTH
from tests.gateway.test_runtime import Lab, make_lab  # noqa: F401  (the lab fixture)


async def test_404_reason_is_short_for_a_huge_request_uri(make_lab: Any) -> None:  # noqa: F811
    lab: Lab = await make_lab()
    user = "9" * 4000
    _, response = await lab.fe.call(f"{user}@nowhere.example.org")
    assert response.status == 404
    assert response.reason.startswith("Not Found")
    assert len(response.reason) <= MAX_REASON_LENGTH
    assert user not in response.reason
    _, response = await lab.fe.call("9999@nowhere.example.org")
    assert response.status == 404 and "9999@nowhere.example.org" in response.reason
    assert 'reason="no_route"} 2.0' in lab.gateway.metrics.render().decode()


async def test_483_is_counted_as_too_many_hops(make_lab: Any) -> None:  # noqa: F811
    lab: Lab = await make_lab()
    _, response = await lab.fe.call("3001@video.example.com", headers=(("Max-Forwards", "0"),))
    assert response.status == 483
    assert 'reason="too_many_hops"} 1.0' in lab.gateway.metrics.render().decode()
    assert not lab.endpoint.calls and lab.gateway.pool.ports_in_use == 0
    # A normal call still goes through afterwards.
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    await lab.fe.hangup(call)
