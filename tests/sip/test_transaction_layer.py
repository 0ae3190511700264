"""A UAC layer and a UAS layer talking through bytes: CANCEL, losses, 2xx ACK passthrough."""

from __future__ import annotations

import pytest

from sip.events import (
    AckReceived,
    Cancelled,
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
)
from sip.message import Request, Response, make_response
from sip.transaction import TransactionLayer as ReExported
from sip.transaction_client import ClientState
from sip.transaction_layer import TransactionLayer, make_cancel
from sip.transaction_server import ServerState

from .helpers import LayerPair, drain, make_request, only


def test_contract_module_reexports_the_layer() -> None:
    assert ReExported is TransactionLayer


def test_cancel_after_ringing() -> None:
    pair = LayerPair()
    invite = make_request("INVITE", extra=(("Route", "<sip:edge.example.com;lr>"),))
    client = pair.uac.send_request(invite, pair.uas_addr, pair.now)
    pair.flush()
    (received,) = only(drain(pair.uas), RequestReceived)
    server = received.transaction
    pair.uas.send_response(server, make_response(server.request, 180, to_tag="uas"), pair.now)
    pair.flush()
    drain(pair.uac)

    cancel_tx = pair.uac.cancel(client, pair.now)
    assert cancel_tx is not None
    pair.flush()
    cancel = pair.from_uac[-1][1]
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    # §9.1: same branch, Request-URI, Call-ID, From, To, CSeq number and Route.
    assert cancel.top_via.branch == invite.top_via.branch
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.uri == invite.uri and cancel.call_id == invite.call_id
    assert cancel.headers.getlist("Route") == ["<sip:edge.example.com;lr>"]

    # The UAS layer answered the CANCEL 200 itself and told the TU.
    (cancelled,) = drain(pair.uas)
    assert isinstance(cancelled, Cancelled) and cancelled.transaction is server
    assert cancelled.request.method == "CANCEL"
    cancel_ok = only(drain(pair.uac), ResponseReceived)
    assert [(e.transaction, e.response.status) for e in cancel_ok] == [(cancel_tx, 200)]
    assert cancel_ok[0].response.to.tag == "uas"  # §9.2: the INVITE's To tag

    # The TU answers 487; the UAC transaction ACKs it (same branch) and completes.
    pair.uas.send_response(server, make_response(server.request, 487, to_tag="uas"), pair.now)
    pair.flush()
    (terminated,) = only(drain(pair.uac), ResponseReceived)
    assert terminated.response.status == 487 and client.state is ClientState.COMPLETED
    ack = pair.from_uac[-1][1]
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.top_via.branch == invite.top_via.branch
    assert server.state is ServerState.CONFIRMED
    assert drain(pair.uas) == []  # the non-2xx ACK stays inside the transaction

    pair.advance(100.0)
    assert pair.uac.transactions == [] and pair.uas.transactions == []


def test_cancel_before_any_provisional_is_deferred() -> None:
    pair = LayerPair()
    invite = make_request("INVITE")
    client = pair.uac.send_request(invite, pair.uas_addr, pair.now)
    assert pair.uac.cancel(client, pair.now) is None  # §9.1: wait for a provisional
    pair.flush()
    assert pair.sent("uac", "CANCEL") == []
    # The UAS's automatic 100 Trying at 200 ms releases it.
    pair.advance(0.2)
    assert pair.sent("uas", 100) == [pytest.approx(0.2)]
    assert pair.sent("uac", "CANCEL") == [pytest.approx(0.2)]
    assert any(isinstance(e, Cancelled) for e in drain(pair.uas))


def test_cancel_after_final_response_does_nothing() -> None:
    pair = LayerPair()
    client = pair.uac.send_request(make_request("INVITE"), pair.uas_addr, pair.now)
    pair.flush()
    server = drain(pair.uas)[0].transaction
    pair.uas.send_response(server, make_response(server.request, 486, to_tag="b"), pair.now)
    pair.flush()
    assert pair.uac.cancel(client, pair.now) is None
    pair.flush()
    assert pair.sent("uac", "CANCEL") == []


def test_cancel_for_an_answered_invite_gets_200_but_no_event() -> None:
    pair = LayerPair()
    invite = make_request("INVITE")
    pair.uac.send_request(invite, pair.uas_addr, pair.now)
    pair.flush()
    server = drain(pair.uas)[0].transaction
    pair.uas.send_response(server, make_response(invite, 200, to_tag="b"), pair.now)
    pair.flush()
    # A CANCEL crossing the 2xx on the wire (sent by hand: the UAC layer would not).
    pair.uac.send_request(make_cancel(invite), pair.uas_addr, pair.now)
    pair.flush()
    assert not only(drain(pair.uas), Cancelled)
    assert 200 in [e.response.status for e in only(drain(pair.uac), ResponseReceived)]


def test_cancel_without_invite_gets_481() -> None:
    pair = LayerPair()
    pair.uac.send_request(make_cancel(make_request("INVITE")), pair.uas_addr, pair.now)
    pair.flush()
    assert drain(pair.uas) == []
    (answer,) = only(drain(pair.uac), ResponseReceived)
    assert answer.response.status == 481


def test_lost_invite_and_lost_response_are_recovered_by_retransmission() -> None:
    lost: list[str] = []

    def drop(message: Request | Response) -> bool:
        # Lose the first INVITE and the first 486.
        kind = message.method if isinstance(message, Request) else str(message.status)
        if kind in ("INVITE", "486") and kind not in lost:
            lost.append(kind)
            return True
        return False

    pair = LayerPair(drop=drop)
    client = pair.uac.send_request(make_request("INVITE"), pair.uas_addr, pair.now)
    pair.flush()
    assert drain(pair.uas) == []
    pair.advance(0.5)  # Timer A
    (received,) = only(drain(pair.uas), RequestReceived)
    server = received.transaction
    pair.uas.send_response(server, make_response(server.request, 486, to_tag="b"), pair.now)
    pair.flush()
    assert client.state is ClientState.CALLING  # the 486 was lost
    pair.advance(1.0)  # Timer G at 0.5 after the 486 resends it
    assert pair.sent("uas", 486) == [pytest.approx(0.5), pytest.approx(1.0)]
    assert client.state is ClientState.COMPLETED
    assert server.state is ServerState.CONFIRMED
    assert [r.response.status for r in only(drain(pair.uac), ResponseReceived)] == [486]
    # Timer A stopped with the 486: just the two INVITEs.
    assert pair.sent("uac", "INVITE") == [0.0, pytest.approx(0.5)]


def test_2xx_ack_passthrough_and_lost_ack_recovery() -> None:
    acks_seen = 0

    def drop(message: Request | Response) -> bool:
        nonlocal acks_seen
        if isinstance(message, Request) and message.method == "ACK":
            acks_seen += 1
            return acks_seen == 1  # the first ACK is lost
        return False

    pair = LayerPair(drop=drop)
    invite = make_request("INVITE")
    client = pair.uac.send_request(invite, pair.uas_addr, pair.now)
    pair.flush()
    server = drain(pair.uas)[0].transaction
    pair.uas.send_response(server, make_response(invite, 200, to_tag="uas"), pair.now)
    pair.flush()
    (ok,) = only(drain(pair.uac), ResponseReceived)
    assert ok.response.status == 200 and client.state is ClientState.ACCEPTED
    ack = make_request("ACK", call_id=invite.call_id, to="<sip:bob@example.com>;tag=uas")
    pair.uac.send_ack(client, ack, pair.uas_addr)
    pair.flush()  # lost
    assert drain(pair.uas) == []
    pair.advance(0.5)  # the UAS retransmits the 2xx; the UAC layer re-sends the ACK itself
    assert pair.sent("uac", "ACK") == [0.0, pytest.approx(0.5)]
    assert drain(pair.uac) == []
    (acked,) = drain(pair.uas)
    assert isinstance(acked, AckReceived) and acked.transaction is server
    pair.advance(40.0)
    assert pair.sent("uas", 200) == [0.0, pytest.approx(0.5)]  # stopped after the ACK
    assert [type(e) for e in drain(pair.uas)] == [TransactionTerminated]


def test_over_tcp_nothing_is_retransmitted_and_transactions_end_at_once() -> None:
    pair = LayerPair(reliable=True)
    request = make_request("OPTIONS", transport="TCP")
    client = pair.uac.send_request(request, pair.uas_addr, pair.now)
    pair.flush()
    server = drain(pair.uas)[0].transaction
    pair.advance(10.0)
    assert pair.sent("uac", "OPTIONS") == [0.0]
    pair.uas.send_response(server, make_response(request, 200, to_tag="t"), pair.now)
    pair.flush()
    assert client.state is ClientState.TERMINATED and server.state is ServerState.TERMINATED
    assert pair.uac.get_timer() is None and pair.uas.get_timer() is None


def test_get_timer_follows_thousands_of_transactions_in_deadline_order() -> None:
    """The deadline heap: the earliest timer of many transactions, fired in order, and
    nothing left armed once every transaction has ended (Timer B/F on unanswered requests)."""
    from sip.message import Request as _Request
    from sip.message import parse_message as _parse

    layer = TransactionLayer()
    for n in range(2000):
        raw = (
            "OPTIONS sip:b@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{n}\r\n"
            f"From: <sip:a@example.com>;tag=a\r\nTo: <sip:b@example.com>\r\nCall-ID: c{n}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        request = _parse(raw)
        assert isinstance(request, _Request)
        layer.send_request(request, ("127.0.0.1", 5060), now=float(n) / 100, reliable=True)
    assert layer.get_timer() == 32.0  # Timer F of the first request: 64*T1 after t=0
    fired = 0
    while (deadline := layer.get_timer()) is not None:
        layer.handle_timer(deadline)
        fired += 1
    assert fired == 2000 and layer.transactions == []
