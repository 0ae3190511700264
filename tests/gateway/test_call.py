"""The call state table (sans-IO) and the From rewrite, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.call import CALL_TABLE, Call, CallEvent, CallState, CallStateError, Outcome
from gateway.controller import rewrite_ip_from
from gateway.metrics import CallResult
from sip.headers import Address


def new_call() -> Call:
    leg: Any = object()
    return Call("call-1", 0.0, leg)


def test_a_call_goes_trying_ringing_connecting_connected_disconnected() -> None:
    call = new_call()
    assert call.state is CallState.TRYING
    assert call.handle(CallEvent.RING) is CallState.RINGING
    assert call.handle(CallEvent.RING) is CallState.RINGING  # 180 then 183
    assert call.handle(CallEvent.CONNECT) is CallState.CONNECTING
    assert call.handle(CallEvent.CONFIRM) is CallState.CONNECTED
    assert call.handle(CallEvent.CONFIRM) is CallState.CONNECTED  # a re-INVITE's ACK
    assert call.end(CallEvent.DISCONNECT, Outcome(CallResult.COMPLETED, "BYE"))
    assert call.ended and call.outcome == Outcome(CallResult.COMPLETED, "BYE")
    assert [state for _, state in call.history][-1] is CallState.DISCONNECTED
    # Ending twice does nothing (a BYE crossing our own BYE).
    assert not call.end(CallEvent.FAIL, Outcome(CallResult.FAILED, "late"))
    assert call.outcome.result is CallResult.COMPLETED


@pytest.mark.parametrize(("state", "event"), [
    (CallState.TRYING, CallEvent.CONFIRM),
    (CallState.RINGING, CallEvent.CONFIRM),
    (CallState.CONNECTING, CallEvent.RING),
    (CallState.CONNECTED, CallEvent.CONNECT),
    (CallState.DISCONNECTED, CallEvent.RING),
    (CallState.DISCONNECTED, CallEvent.DISCONNECT),
])
def test_events_the_table_does_not_allow_raise_and_change_nothing(
        state: CallState, event: CallEvent) -> None:
    call = new_call()
    call.state = state
    assert not call.can(event)
    with pytest.raises(CallStateError) as info:
        call.handle(event)
    assert info.value.status_hint == 400 or info.value.status_hint >= 400
    assert event.value in info.value.message and state.value in info.value.message
    assert call.state is state and not call.history


def test_every_live_state_can_fail_and_disconnect_and_the_end_is_final() -> None:
    for state, moves in CALL_TABLE.items():
        if state is CallState.DISCONNECTED:
            assert moves == {}
            continue
        assert moves[CallEvent.FAIL] is CallState.DISCONNECTED
        assert moves[CallEvent.DISCONNECT] is CallState.DISCONNECTED
        assert CallEvent.TRY not in moves  # TRY creates a call, it never moves one


def test_leg_for_gives_the_other_leg() -> None:
    inbound: Any = object()
    outbound: Any = object()
    stranger: Any = object()
    call = Call("c", 0.0, inbound, outbound)
    assert call.leg_for(inbound) is outbound
    assert call.leg_for(outbound) is inbound
    assert call.leg_for(stranger) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("<sip:10.10.2.1>", "sip:10.10.2.1@video.example.com"),
    ("<sip:10.10.2.1:5060;transport=tcp>;tag=x", "sip:10.10.2.1@video.example.com"),
    # ":" is not unreserved in a user part (RFC 3261 §25.1): escaped.
    ('"Room" <sip:[2001:db8::1]>', "sip:2001%3Adb8%3A%3A1@video.example.com"),
    ("<sip:3001@10.10.2.1>", "sip:3001@10.10.2.1"),  # has a user: left alone
    ("<sip:cucm.video.example.com>", "sip:cucm.video.example.com"),  # a name: routable
])
def test_from_holding_only_an_ip_address_gets_a_user_at_our_domain(
        text: str, expected: str) -> None:
    address = Address.parse(text)
    rewritten = rewrite_ip_from(address, "video.example.com")
    assert str(rewritten.uri) == expected
    assert rewritten.tag == address.tag and rewritten.display_name == address.display_name
