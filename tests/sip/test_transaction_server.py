"""Server transactions (RFC 3261 §17.2, RFC 6026): G/H/I/J/L, 100 Trying, 2xx retransmission."""

from __future__ import annotations

import pytest

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.events import (
    AckReceived,
    AckTimeout,
    RequestReceived,
    TransactionTerminated,
    TransactionTimeout,
)
from sip.message import Response, make_response
from sip.transaction_layer import TransactionLayer
from sip.transaction_server import ServerState, ServerTransaction

from .helpers import Addr, drain, make_request, only, wire

PEER_UDP = Addr("127.0.0.1", 5060, reliable=False)
PEER_TCP = Addr("127.0.0.1", 5060, reliable=True)


def receive_new(layer: TransactionLayer, request_method: str, source: Addr = PEER_UDP,
                now: float = 0.0, **kw: object) -> ServerTransaction:
    request = make_request(request_method, transport="TCP" if source.reliable else "UDP", **kw)
    layer.receive(wire(request), source, now)
    (event,) = drain(layer)
    assert isinstance(event, RequestReceived)
    assert event.source == source
    return event.transaction


def responses_until(layer: TransactionLayer, until: float) -> list[tuple[float, Response]]:
    sent: list[tuple[float, Response]] = []
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        sent += [(deadline, m) for m, _ in layer.messages_to_send() if isinstance(m, Response)]
    return sent


def test_invite_gets_100_trying_after_200_ms_when_tu_is_silent() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "INVITE")
    assert layer.messages_to_send() == []
    assert layer.get_timer() == pytest.approx(0.2)
    layer.handle_timer(0.2)
    ((trying, destination),) = layer.messages_to_send()
    assert isinstance(trying, Response) and trying.status == 100 and trying.to.tag is None
    assert destination == PEER_UDP
    assert tx.state is ServerState.PROCEEDING and layer.get_timer() is None


def test_no_automatic_100_when_tu_answers_in_time() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "INVITE")
    layer.send_response(tx, make_response(tx.request, 180, to_tag="u"), now=0.1)
    assert [m.status for m, _ in layer.messages_to_send()] == [180]  # type: ignore[union-attr]
    assert layer.get_timer() is None


def test_invite_retransmission_resends_latest_provisional_without_new_event() -> None:
    layer = TransactionLayer()
    request = make_request("INVITE")
    layer.receive(wire(request), PEER_UDP, 0.0)
    (event,) = drain(layer)
    tx = event.transaction
    layer.send_response(tx, make_response(request, 180, to_tag="u"), now=0.1)
    layer.messages_to_send()
    layer.receive(wire(request), PEER_UDP, 0.5)
    assert drain(layer) == []
    ((again, _),) = layer.messages_to_send()
    assert again.status == 180  # type: ignore[union-attr]


def test_failure_timer_g_caps_at_t2_and_timer_h_times_out() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "INVITE")
    layer.send_response(tx, make_response(tx.request, 486, to_tag="u"), now=0.0)
    assert tx.state is ServerState.COMPLETED
    layer.messages_to_send()
    sent = responses_until(layer, 100.0)
    # Timer G: 0.5, 1, 2, 4, then T2, until Timer H at 64*T1.
    assert [t for t, _ in sent] == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5,
                                                  27.5, 31.5])
    assert {r.status for _, r in sent} == {486}
    events = drain(layer)
    assert [type(e) for e in events] == [TransactionTimeout, TransactionTerminated]
    assert events[0].transaction is tx


def test_ack_for_failure_confirms_and_timer_i_is_t4_on_udp() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    layer.receive(wire(invite), PEER_UDP, 0.0)
    tx = drain(layer)[0].transaction
    response = make_response(invite, 486, to_tag="u")
    layer.send_response(tx, response, now=0.0)
    ack = make_request("ACK", branch=invite.top_via.branch, to=response.headers.get("To") or "")
    layer.receive(wire(ack), PEER_UDP, 0.7)
    assert tx.state is ServerState.CONFIRMED
    assert drain(layer) == []  # absorbed: the TU never sees the ACK for a non-2xx
    assert layer.get_timer() == pytest.approx(5.7)  # Timer I = T4; G and H are off
    layer.receive(wire(ack), PEER_UDP, 1.0)  # retransmitted ACKs absorbed too
    layer.receive(wire(invite), PEER_UDP, 1.0)  # and INVITEs
    assert drain(layer) == []
    layer.handle_timer(5.7)
    assert tx.state is ServerState.TERMINATED
    assert [type(e) for e in drain(layer)] == [TransactionTerminated]


def test_reliable_failure_has_no_timer_g_and_timer_i_zero() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", transport="TCP")
    layer.receive(wire(invite), PEER_TCP, 0.0)
    tx = drain(layer)[0].transaction
    layer.send_response(tx, make_response(invite, 603, to_tag="u"), now=0.0)
    assert layer.get_timer() == pytest.approx(32.0)  # H only
    ack = make_request("ACK", transport="TCP", branch=invite.top_via.branch,
                       to="<sip:bob@example.com>;tag=u")
    layer.receive(wire(ack), PEER_TCP, 0.1)
    assert tx.state is ServerState.TERMINATED and layer.transactions == []


def test_2xx_is_retransmitted_until_the_ack() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    layer.receive(wire(invite), PEER_UDP, 0.0)
    tx = drain(layer)[0].transaction
    ok = make_response(invite, 200, to_tag="uas")
    layer.send_response(tx, ok, now=0.0)
    assert tx.state is ServerState.ACCEPTED
    layer.messages_to_send()
    sent = responses_until(layer, 8.0)
    assert [t for t, _ in sent] == pytest.approx([0.5, 1.5, 3.5, 7.5])
    # The ACK for a 2xx has its own branch: matched by Call-ID, CSeq and To tag.
    ack = make_request("ACK", to="<sip:bob@example.com>;tag=uas")
    layer.receive(wire(ack), PEER_UDP, 9.0)
    (event,) = drain(layer)
    assert isinstance(event, AckReceived) and event.transaction is tx
    assert event.request.method == "ACK" and event.source == PEER_UDP
    assert tx.ack_received
    # No more 2xx; retransmitted INVITEs are absorbed; Timer L ends Accepted silently.
    layer.receive(wire(invite), PEER_UDP, 10.0)
    assert drain(layer) == [] and layer.messages_to_send() == []
    assert layer.get_timer() == pytest.approx(32.0)
    layer.handle_timer(32.0)
    assert [type(e) for e in drain(layer)] == [TransactionTerminated]
    assert layer.messages_to_send() == []


def test_2xx_without_ack_gives_up_after_64_t1() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "INVITE", source=PEER_TCP)
    ok = make_response(tx.request, 200, to_tag="uas")
    layer.send_response(tx, ok, now=0.0)
    layer.messages_to_send()
    # Retransmitted even over TCP: §13.3.1.4 is end to end (a later hop may be UDP).
    sent = responses_until(layer, 40.0)
    assert [t for t, _ in sent] == pytest.approx(
        [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    )
    events = drain(layer)
    assert [type(e) for e in events] == [AckTimeout, TransactionTerminated]
    assert events[0].transaction is tx and events[0].response is ok
    # A late ACK is still handed to the TU, with no transaction.
    layer.receive(wire(make_request("ACK", transport="TCP", to="<sip:b@x>;tag=uas")), PEER_TCP,
                  41.0)
    (late,) = drain(layer)
    assert isinstance(late, AckReceived) and late.transaction is None


def test_non_invite_timer_j_and_retransmissions() -> None:
    layer = TransactionLayer()
    request = make_request("OPTIONS")
    layer.receive(wire(request), PEER_UDP, 0.0)
    tx = drain(layer)[0].transaction
    assert tx.state is ServerState.TRYING
    layer.receive(wire(request), PEER_UDP, 0.3)  # Trying absorbs
    assert layer.messages_to_send() == [] and drain(layer) == []
    layer.send_response(tx, make_response(request, 200, to_tag="x"), now=1.0)
    layer.messages_to_send()
    layer.receive(wire(request), PEER_UDP, 2.0)  # Completed resends the final
    ((again, _),) = layer.messages_to_send()
    assert again.status == 200  # type: ignore[union-attr]
    assert layer.get_timer() == pytest.approx(33.0)  # Timer J = 64*T1 on UDP
    layer.handle_timer(33.0)
    assert tx.state is ServerState.TERMINATED


def test_non_invite_proceeding_resends_provisional() -> None:
    layer = TransactionLayer()
    request = make_request("REFER")
    layer.receive(wire(request), PEER_UDP, 0.0)
    tx = drain(layer)[0].transaction
    layer.send_response(tx, make_response(request, 100), now=0.1)
    assert tx.state is ServerState.PROCEEDING
    layer.messages_to_send()
    layer.receive(wire(request), PEER_UDP, 0.5)
    assert [m.status for m, _ in layer.messages_to_send()] == [100]  # type: ignore[union-attr]


def test_timer_j_is_zero_on_tcp() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "BYE", source=PEER_TCP)
    layer.send_response(tx, make_response(tx.request, 200), now=0.0)
    assert tx.state is ServerState.TERMINATED and layer.transactions == []
    with pytest.raises(LocalProtocolError):
        layer.send_response(tx, make_response(tx.request, 200), now=0.0)


def test_wrong_responses_from_the_tu_raise() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "INVITE")
    layer.send_response(tx, make_response(tx.request, 486, to_tag="a"), now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_response(tx, make_response(tx.request, 200, to_tag="a"), now=0.1)
    other = receive_new(layer, "INFO")
    with pytest.raises(LocalProtocolError):
        layer.send_response(other, make_response(tx.request, 200), now=0.1)  # CSeq INVITE


def test_matching_uses_branch_and_sent_by() -> None:
    layer = TransactionLayer()
    branch = "z9hG4bKsame"
    receive_new(layer, "OPTIONS", branch=branch)
    # Same branch from another sent-by is another transaction (§17.2.3).
    receive_new(layer, "OPTIONS", branch=branch, via_host="127.0.0.9")
    # Same branch and sent-by, other method: another transaction too.
    receive_new(layer, "INFO", branch=branch)
    assert len(layer.transactions) == 3


def test_rfc2543_requests_without_magic_cookie_still_match() -> None:
    layer = TransactionLayer()
    request = make_request("OPTIONS", branch="oldstyle1")
    layer.receive(wire(request), PEER_UDP, 0.0)
    assert len(only(drain(layer), RequestReceived)) == 1
    layer.receive(wire(request), PEER_UDP, 0.5)
    assert drain(layer) == []
    assert len(layer.transactions) == 1


def test_response_routing_uses_received_and_rport_on_udp() -> None:
    layer = TransactionLayer()
    request = make_request(
        "OPTIONS", via_host="10.0.0.5", via_port=5070, via_params=";rport=40000;received=127.0.0.7"
    )
    layer.receive(wire(request), Addr("127.0.0.7", 40000), 0.0)
    tx = drain(layer)[0].transaction
    assert tx.response_destination == Addr("127.0.0.7", 40000)
    # rport asked for but not filled in: the source address is used (RFC 3581).
    nat = make_request("OPTIONS", via_host="10.0.0.5", via_port=5070, via_params=";rport")
    layer.receive(wire(nat), Addr("127.0.0.8", 41000), 0.0)
    assert drain(layer)[0].transaction.response_destination == Addr("127.0.0.8", 41000)
    # No rport: the sent-by port at the source host (what §18.2.1 stamps as received).
    plain = make_request("OPTIONS", via_host="10.0.0.5", via_port=5070)
    layer.receive(wire(plain), Addr("127.0.0.8", 41000), 0.0)
    assert drain(layer)[0].transaction.response_destination == Addr("127.0.0.8", 5070)


def test_response_routing_on_reliable_transport_uses_the_connection() -> None:
    layer = TransactionLayer()
    source = Addr("127.0.0.7", 50123, reliable=True)
    request = make_request("OPTIONS", transport="TLS", via_host="client.invalid", via_port=5061)
    layer.receive(wire(request), source, 0.0)
    tx = drain(layer)[0].transaction
    layer.send_response(tx, make_response(request, 200), now=0.0)
    assert layer.messages_to_send()[0][1] is source


def test_tuple_sources_are_supported() -> None:
    layer = TransactionLayer()
    request = make_request("OPTIONS", via_params=";rport")
    layer.receive(wire(request), ("127.0.0.3", 6000), 0.0)
    assert drain(layer)[0].transaction.response_destination == ("127.0.0.3", 6000)


def test_request_with_mismatched_cseq_is_a_remote_error() -> None:
    layer = TransactionLayer()
    request = make_request("OPTIONS")
    request.headers.set("CSeq", "1 INFO")
    with pytest.raises(RemoteProtocolError) as info:
        layer.receive(request, PEER_UDP, 0.0)
    assert info.value.status_hint == 400


def test_accepted_after_the_ack_keeps_bytes_but_still_answers_cancel_and_readers() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE")
    layer.receive(wire(invite), PEER_UDP, 0.0)
    tx = drain(layer)[0].transaction
    ok = make_response(invite, 200, to_tag="uas")
    layer.send_response(tx, ok, now=0.0)
    ((sent, _),) = layer.messages_to_send()
    assert tx.is_sending(sent)  # retransmitted until the ACK: the very object
    layer.receive(wire(make_request("ACK", to="<sip:bob@example.com>;tag=uas")), PEER_UDP, 0.1)
    drain(layer)
    # Slimmed: the parsed 2xx is no longer held, readers get an equal message again.
    assert not tx.is_sending(ok)
    assert tx.last_response is not ok and tx.last_response == ok
    assert tx.request == invite and tx.method == "INVITE"
    assert tx.last_response is tx.last_response  # parsed once, then kept
    # A late CANCEL still gets 200 with the 2xx's To tag (read from the bytes).
    layer.receive(wire(make_request("CANCEL", branch=invite.top_via.branch)), PEER_UDP, 0.2)
    ((cancel_ok, _),) = layer.messages_to_send()
    assert cancel_ok.status == 200 and cancel_ok.to.tag == "uas"  # type: ignore[union-attr]
    assert drain(layer) == []  # not Proceeding: the TU is not told


def test_confirmed_keeps_bytes_and_absorbs_acks() -> None:
    layer = TransactionLayer()
    tx = receive_new(layer, "INVITE")
    busy = make_response(tx.request, 486, to_tag="u")
    layer.send_response(tx, busy, now=0.0)
    layer.messages_to_send()
    ack = make_request("ACK", branch=tx.request.top_via.branch, to=busy.headers.get("To") or "")
    layer.receive(wire(ack), PEER_UDP, 0.1)
    assert tx.state is ServerState.CONFIRMED
    assert not tx.is_sending(busy) and tx.last_response == busy
    layer.receive(wire(ack), PEER_UDP, 0.2)
    assert drain(layer) == [] and layer.messages_to_send() == []
