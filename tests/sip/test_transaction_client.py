"""Client transactions (RFC 3261 §17.1): retransmission schedules, timeouts, ACK for non-2xx."""

from __future__ import annotations

import pytest

from sip.errors import LocalProtocolError
from sip.events import ResponseReceived, TransactionTerminated, TransactionTimeout
from sip.message import Request, make_response
from sip.timers import Timer, TimerSettings
from sip.transaction import transition
from sip.transaction_client import (
    INVITE_CLIENT_TABLE,
    ClientInput,
    ClientState,
    make_ack_for_failure,
)
from sip.transaction_layer import TransactionLayer

from .helpers import Addr, drain, make_request, only, wire

UDP = Addr("127.0.0.2", 5060, reliable=False)
TCP = Addr("127.0.0.2", 5060, reliable=True)


def run_until(layer: TransactionLayer, until: float) -> list[tuple[float, Request]]:
    """Fire the layer's timers up to ``until``; what it sent, with the times."""
    sent: list[tuple[float, Request]] = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        sent += [(deadline, m) for m, _ in layer.messages_to_send() if isinstance(m, Request)]
    return sent


def test_invite_timer_a_doubles_without_cap_and_timer_b_times_out() -> None:
    layer = TransactionLayer()
    tx = layer.send_request(make_request("INVITE"), UDP, now=0.0)
    assert [m.method for m, d in layer.messages_to_send()] == ["INVITE"]
    assert tx.state is ClientState.CALLING
    sent = run_until(layer, 100.0)
    # Timer A: 0.5, 1, 2, 4, 8, 16 s intervals (no T2 cap) until Timer B at 64*T1 = 32 s.
    assert [t for t, _ in sent] == pytest.approx([0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
    events = drain(layer)
    assert [type(e) for e in events] == [TransactionTimeout, TransactionTerminated]
    assert events[0].transaction is tx and not events[0].transport_error
    assert tx.state is ClientState.TERMINATED
    assert layer.transactions == [] and layer.get_timer() is None


def test_invite_over_reliable_transport_is_not_retransmitted() -> None:
    layer = TransactionLayer()
    layer.send_request(make_request("INVITE", transport="TCP"), TCP, now=10.0)
    layer.messages_to_send()
    assert layer.get_timer() == pytest.approx(42.0)  # only Timer B
    assert run_until(layer, 100.0) == []
    assert only(drain(layer), TransactionTimeout)


def test_provisional_stops_retransmission_and_timer_b() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = layer.send_request(invite, UDP, now=0.0)
    layer.receive(wire(make_response(invite, 180, to_tag="t1")), UDP, now=0.3)
    assert tx.state is ClientState.PROCEEDING
    assert tx.timers == {Timer.C: pytest.approx(180.3)}  # A and B are off
    (event,) = drain(layer)
    assert isinstance(event, ResponseReceived) and event.response.status == 180


def test_timer_c_cancels_then_timer_b_gives_up() -> None:
    layer = TransactionLayer(TimerSettings(timer_c=60.0))
    invite = make_request("INVITE")
    tx = layer.send_request(invite, UDP, now=0.0)
    layer.receive(wire(make_response(invite, 180, to_tag="t1")), UDP, now=1.0)
    layer.receive(wire(make_response(invite, 183, to_tag="t1")), UDP, now=10.0)  # restarts C
    layer.messages_to_send()
    drain(layer)
    assert layer.get_timer() == pytest.approx(70.0)
    layer.handle_timer(70.0)
    ((cancel, destination),) = layer.messages_to_send()
    assert isinstance(cancel, Request) and cancel.method == "CANCEL" and destination == UDP
    assert cancel.top_via.branch == invite.top_via.branch
    assert tx.state is ClientState.PROCEEDING
    # Nobody answers at all: Timer B (64*T1 after C) ends the INVITE transaction.
    layer.handle_timer(70.0 + 32.0)
    timeouts = only(drain(layer), TransactionTimeout)
    assert tx in [t.transaction for t in timeouts]
    assert tx.state is ClientState.TERMINATED


def test_failure_response_is_acked_inside_the_transaction() -> None:
    layer = TransactionLayer()
    invite = make_request(
        "INVITE", extra=(("Route", "<sip:p1.example.com;lr>"), ("Route", "<sip:p2;lr>"))
    )
    tx = layer.send_request(invite, UDP, now=0.0)
    layer.messages_to_send()
    busy = wire(make_response(invite, 486, to_tag="busytag"))
    layer.receive(busy, UDP, now=1.0)
    assert tx.state is ClientState.COMPLETED
    ((ack, destination),) = layer.messages_to_send()
    assert destination == UDP
    assert isinstance(ack, Request) and ack.method == "ACK"
    # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number, top Via (branch) and Routes;
    # To from the response (with its tag).
    assert ack.uri == invite.uri
    assert ack.call_id == invite.call_id
    assert ack.from_.tag == invite.from_.tag
    assert (ack.cseq.seq, ack.cseq.method) == (invite.cseq.seq, "ACK")
    assert ack.top_via.branch == invite.top_via.branch and len(ack.via) == 1
    assert ack.to.tag == "busytag"
    assert ack.headers.getlist("Route") == ["<sip:p1.example.com;lr>", "<sip:p2;lr>"]
    assert wire(ack).method == "ACK"
    (event,) = drain(layer)
    assert isinstance(event, ResponseReceived) and event.response.status == 486

    # A retransmitted 486 gets the same ACK again; the TU is not told twice.
    layer.receive(wire(busy), UDP, now=2.0)
    ((again, _),) = layer.messages_to_send()
    assert again is ack
    assert drain(layer) == []

    # Timer D: 32 s on UDP.
    assert layer.get_timer() == pytest.approx(33.0)
    layer.handle_timer(33.0)
    assert tx.state is ClientState.TERMINATED
    assert [type(e) for e in drain(layer)] == [TransactionTerminated]


def test_timer_d_is_zero_on_reliable_transport() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", transport="TCP")
    tx = layer.send_request(invite, TCP, now=0.0)
    layer.receive(wire(make_response(invite, 404, to_tag="x")), TCP, now=1.0)
    assert tx.state is ClientState.TERMINATED
    assert [type(e) for e in drain(layer)] == [ResponseReceived, TransactionTerminated]
    assert [m.method for m, _ in layer.messages_to_send() if isinstance(m, Request)] == [
        "INVITE",
        "ACK",
    ]


def test_2xx_goes_to_accepted_and_retransmissions_are_reacked() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = layer.send_request(invite, UDP, now=0.0)
    layer.messages_to_send()
    ok = wire(make_response(invite, 200, to_tag="uas1"))
    layer.receive(ok, UDP, now=1.0)
    assert tx.state is ClientState.ACCEPTED
    (event,) = drain(layer)
    assert isinstance(event, ResponseReceived) and not event.retransmission
    assert layer.messages_to_send() == []  # the 2xx ACK is the TU's (dialog's) job

    # The TU's ACK is remembered; a retransmitted 2xx is answered with it again.
    ack = make_request("ACK", cseq=1, to="<sip:bob@example.com>;tag=uas1")
    layer.send_ack(tx, ack, UDP)
    assert layer.messages_to_send() == [(ack, UDP)]
    layer.receive(wire(ok), UDP, now=2.0)
    assert layer.messages_to_send() == [(ack, UDP)]
    assert drain(layer) == []

    # A 2xx from another fork (other To tag) is a new dialog: the TU sees it.
    layer.receive(wire(make_response(invite, 200, to_tag="uas2")), UDP, now=3.0)
    (fork,) = drain(layer)
    assert isinstance(fork, ResponseReceived) and fork.response.to.tag == "uas2"

    # Timer M (RFC 6026) ends Accepted at 64*T1.
    assert layer.get_timer() == pytest.approx(33.0)
    layer.handle_timer(33.0)
    assert tx.state is ClientState.TERMINATED
    # After that, a late 2xx still reaches the TU (it must ACK it, §13.2.2.4).
    layer.receive(wire(ok), UDP, now=34.0)
    stray = only(drain(layer), ResponseReceived)
    assert stray and stray[0].transaction is None and stray[0].retransmission


def test_non_invite_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    layer = TransactionLayer()
    layer.send_request(make_request("OPTIONS"), UDP, now=0.0)
    layer.messages_to_send()
    sent = run_until(layer, 100.0)
    times = [t for t, _ in sent]
    # 0.5, 1, 2, 4, then T2 = 4 s forever, until Timer F at 32 s.
    assert times == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
    assert [type(e) for e in drain(layer)] == [TransactionTimeout, TransactionTerminated]


def test_non_invite_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    request = make_request("BYE")
    tx = layer.send_request(request, UDP, now=0.0)
    layer.messages_to_send()
    layer.receive(wire(make_response(request, 100)), UDP, now=0.2)
    assert tx.state is ClientState.PROCEEDING
    sent = run_until(layer, 10.0)
    # Timer E was armed for 0.5 in Trying; from Proceeding on it is T2.
    assert [t for t, _ in sent] == pytest.approx([0.5, 4.5, 8.5])


def test_timer_k_is_t4_on_udp_and_absorbs_retransmitted_finals() -> None:
    settings = TimerSettings(t1=0.1, t2=1.0, t4=2.0)
    layer = TransactionLayer(settings)
    request = make_request("INFO")
    tx = layer.send_request(request, UDP, now=0.0)
    ok = wire(make_response(request, 200, to_tag="a"))
    layer.receive(ok, UDP, now=0.05)
    assert tx.state is ClientState.COMPLETED
    assert layer.get_timer() == pytest.approx(2.05)
    layer.receive(wire(ok), UDP, now=1.0)
    assert [type(e) for e in drain(layer)] == [ResponseReceived]  # the copy was absorbed
    layer.handle_timer(2.05)
    assert tx.state is ClientState.TERMINATED


def test_timer_k_is_zero_on_tcp() -> None:
    layer = TransactionLayer()
    request = make_request("INFO", transport="TCP")
    tx = layer.send_request(request, TCP, now=0.0)
    layer.receive(wire(make_response(request, 200, to_tag="a")), TCP, now=0.05)
    assert tx.state is ClientState.TERMINATED
    assert layer.transactions == []


def test_response_matching_needs_branch_and_method() -> None:
    layer = TransactionLayer()
    request = make_request("OPTIONS")
    layer.send_request(request, UDP, now=0.0)
    other_branch = make_request("OPTIONS")
    layer.receive(wire(make_response(other_branch, 200)), UDP, now=0.1)
    wrong_method = make_request("INFO", branch=request.top_via.branch)
    layer.receive(wire(make_response(wrong_method, 200)), UDP, now=0.1)
    assert drain(layer) == []
    layer.receive(wire(make_response(request, 200)), UDP, now=0.1)
    assert len(only(drain(layer), ResponseReceived)) == 1


def test_late_provisional_after_final_is_ignored() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = layer.send_request(invite, UDP, now=0.0)
    layer.receive(wire(make_response(invite, 486, to_tag="a")), UDP, now=0.1)
    drain(layer)
    layer.receive(wire(make_response(invite, 180, to_tag="a")), UDP, now=0.2)
    assert drain(layer) == [] and tx.state is ClientState.COMPLETED


def test_transport_error_fails_the_transaction() -> None:
    layer = TransactionLayer()
    tx = layer.send_request(make_request("OPTIONS", transport="TCP"), TCP, now=0.0)
    layer.transport_error(tx, now=0.1)
    events = drain(layer)
    assert isinstance(events[0], TransactionTimeout) and events[0].transport_error
    assert tx.state is ClientState.TERMINATED and layer.transactions == []


def test_sending_needs_a_branch_and_no_ack_or_duplicate() -> None:
    layer = TransactionLayer()
    request = make_request("OPTIONS")
    layer.send_request(request, UDP, now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_request(request, UDP, now=0.0)  # same branch twice
    with pytest.raises(LocalProtocolError):
        layer.send_request(make_request("ACK"), UDP, now=0.0)
    no_branch = make_request("OPTIONS")
    no_branch.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5060")
    with pytest.raises(LocalProtocolError):
        layer.send_request(no_branch, UDP, now=0.0)


def test_table_miss_raises_local_protocol_error() -> None:
    assert transition(INVITE_CLIENT_TABLE, ClientState.CALLING, ClientInput.TIMER_A) is (
        ClientState.CALLING
    )
    with pytest.raises(LocalProtocolError):
        transition(INVITE_CLIENT_TABLE, ClientState.COMPLETED, ClientInput.TIMER_A)
    with pytest.raises(LocalProtocolError):
        transition(INVITE_CLIENT_TABLE, ClientState.TERMINATED, ClientInput.SUCCESS)


def test_make_ack_for_failure_keeps_only_the_top_via() -> None:
    invite = make_request("INVITE")
    invite.headers.add("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy")
    ack = make_ack_for_failure(invite, make_response(invite, 603, to_tag="d"))
    assert [v.branch for v in ack.via] == [invite.top_via.branch]


def test_timer_enum_covers_the_rfc_timers() -> None:
    names = {t.value for t in Timer}
    assert set("ABDEFGHIJKLM") <= names


def test_accepted_keeps_bytes_but_reacks_and_readers_still_work() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    tx = layer.send_request(invite, TCP, now=0.0)
    ((sent, _),) = layer.messages_to_send()
    assert tx.is_sending(sent)
    ok = wire(make_response(invite, 200, to_tag="uas1"))
    layer.receive(ok, TCP, now=0.1)
    (event,) = drain(layer)
    assert isinstance(event, ResponseReceived)
    # Slimmed: the event holds the 2xx; the transaction parses it again if asked.
    assert not tx.is_sending(invite) and tx.request == invite
    assert tx.last_response is not event.response and tx.last_response == event.response
    ack = make_request("ACK", cseq=1, to="<sip:bob@example.com>;tag=uas1")
    layer.send_ack(tx, ack, TCP)
    layer.messages_to_send()
    layer.receive(wire(ok), TCP, now=0.2)
    assert layer.messages_to_send() == [(ack, TCP)] and drain(layer) == []
    assert layer.cancel(tx, now=0.3) is None  # answered: nothing to cancel


def test_non_invite_completed_keeps_bytes() -> None:
    layer = TransactionLayer()
    request = make_request("INFO")
    tx = layer.send_request(request, UDP, now=0.0)
    layer.receive(wire(make_response(request, 200, to_tag="a")), UDP, now=0.05)
    assert tx.state is ClientState.COMPLETED
    assert not tx.is_sending(request) and tx.request == request
    assert repr(tx).startswith("<ClientTransaction INFO ")
