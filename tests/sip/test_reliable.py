"""Reliable provisional responses (RFC 3262): RSeq/RAck codecs from the RFC's examples, the
UAC's classification and PRACK, the UAS's numbering, retransmission and PRACK matching, and
a whole 183 -> PRACK -> 200 exchange over a pair of transaction layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sip.dialog import Dialog, DialogState
from sip.errors import LocalProtocolError, ParseError
from sip.events import RequestReceived, ResponseReceived
from sip.extensions import TAG_100REL, requires
from sip.message import Request, Response, make_response, parse_message
from sip.reliable import (
    PrackMatch,
    ProvisionalAcceptor,
    ProvisionalKind,
    RAck,
    ReliableProvisionalSender,
    parse_rseq,
)

from .helpers import LayerPair, drain, make_request, only, wire

DATA = Path(__file__).parent.parent / "data" / "sip" / "rfc3262"
VECTORS: dict[str, Any] = json.loads((DATA / "headers.json").read_text())
UAC_CONTACT = "<sip:gw@127.0.0.1:5060>"
UAS_CONTACT = "<sip:3001@127.0.0.2:5060>"
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n"
       b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")


def invite(cseq: int = 1) -> Request:
    return make_request("INVITE", cseq=cseq, extra=(
        ("Contact", UAC_CONTACT), ("Supported", "100rel, timer"),
        ("Record-Route", "<sip:cucm.example.com;lr>")))


def reliable(request: Request, rseq: int | None, *, status: int = 183, tag: str = "cucm",
             body: bytes = b"") -> Response:
    response = make_response(request, status, to_tag=tag, body=body,
                             content_type="application/sdp" if body else None)
    response.headers.add("Contact", UAS_CONTACT)
    response.headers.add("Record-Route", "<sip:cucm.example.com;lr>")
    response.headers.add("Require", "100rel")
    if rseq is not None:
        response.headers.add("RSeq", str(rseq))
    return response


# -- codecs ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["rseq_valid"], ids=lambda c: c["text"])
def test_rseq_parses(case: dict[str, Any]) -> None:
    assert parse_rseq(case["text"]) == case["value"]


@pytest.mark.parametrize("text", VECTORS["rseq_invalid"])
def test_malformed_rseq_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_rseq(text)


@pytest.mark.parametrize("case", VECTORS["rack_valid"], ids=lambda c: c["text"])
def test_rack_parses_and_formats(case: dict[str, Any]) -> None:
    rack = RAck.parse(case["text"])
    assert (rack.rseq, rack.cseq, rack.method) == (case["rseq"], case["cseq"], case["method"])
    assert str(rack) == case["str"] and RAck.parse(str(rack)) == rack


@pytest.mark.parametrize("text", VECTORS["rack_invalid"])
def test_malformed_rack_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        RAck.parse(text)


def test_rack_of_a_recorded_cucm_183() -> None:
    response = parse_message((DATA / "cucm_183_reliable.sip").read_bytes())
    assert isinstance(response, Response) and requires(response, TAG_100REL)
    assert RAck.of(response) == RAck(988789, 1, "INVITE")
    with pytest.raises(ParseError):
        RAck.of(make_response(invite(), 183, to_tag="x"))


# -- UAC (§4) ----------------------------------------------------------------------------


def test_uac_prack_for_new_drops_retransmissions_and_out_of_order() -> None:
    request = invite()
    acceptor = ProvisionalAcceptor(request)
    assert acceptor.classify(make_response(request, 180, to_tag="cucm")) is \
        ProvisionalKind.UNRELIABLE
    assert acceptor.classify(reliable(request, 7)) is ProvisionalKind.NEW
    assert acceptor.classify(reliable(request, 7)) is ProvisionalKind.RETRANSMISSION
    assert acceptor.classify(reliable(request, 9)) is ProvisionalKind.OUT_OF_ORDER
    assert acceptor.last_rseq("cucm") == 7  # the out-of-order one was not processed
    assert acceptor.classify(reliable(request, 8)) is ProvisionalKind.NEW
    assert acceptor.classify(reliable(request, 9)) is ProvisionalKind.NEW
    assert acceptor.classify(reliable(request, 8)) is ProvisionalKind.RETRANSMISSION
    assert acceptor.last_rseq("cucm") == 9


def test_uac_keeps_one_rseq_space_per_early_dialog() -> None:
    request = invite()
    acceptor = ProvisionalAcceptor(request)
    assert acceptor.classify(reliable(request, 100, tag="fork-a")) is ProvisionalKind.NEW
    assert acceptor.classify(reliable(request, 5, tag="fork-b")) is ProvisionalKind.NEW
    assert acceptor.classify(reliable(request, 101, tag="fork-a")) is ProvisionalKind.NEW
    assert acceptor.classify(reliable(request, 6, tag="fork-b")) is ProvisionalKind.NEW
    assert acceptor.last_rseq("fork-a") == 101 and acceptor.last_rseq("nobody") is None


def test_uac_discards_invalid_reliable_provisionals() -> None:
    request = invite(cseq=4)
    acceptor = ProvisionalAcceptor(request)
    assert acceptor.classify(reliable(request, None)) is ProvisionalKind.INVALID
    garbled = reliable(request, None)
    garbled.headers.add("RSeq", "many")
    assert acceptor.classify(garbled) is ProvisionalKind.INVALID
    other = reliable(invite(cseq=3), 1)  # a 1xx to an earlier INVITE
    assert acceptor.classify(other) is ProvisionalKind.INVALID
    no_tag = reliable(request, 1)
    no_tag.headers.set("To", "<sip:bob@example.com>")
    assert acceptor.classify(no_tag) is ProvisionalKind.INVALID
    # A 100 is never reliable (§3): processed as an ordinary 100.
    assert acceptor.classify(reliable(request, 1, status=100)) is ProvisionalKind.UNRELIABLE
    assert acceptor.last_rseq("cucm") is None


def test_prack_is_a_request_in_the_early_dialog() -> None:
    request = invite(cseq=20)
    response = wire(reliable(request, 988789, body=SDP))
    assert isinstance(response, Response)
    dialog = Dialog.create_uac(request, response)
    assert dialog.state is DialogState.EARLY
    prack = ProvisionalAcceptor.prack(dialog, response, via="SIP/2.0/UDP 127.0.0.1:5060;rport")
    assert prack.method == "PRACK" and (prack.cseq.seq, prack.cseq.method) == (21, "PRACK")
    assert prack.headers.get("RAck") == "988789 20 INVITE"
    assert str(prack.uri) == "sip:3001@127.0.0.2:5060"
    assert prack.headers.getlist("Route") == ["<sip:cucm.example.com;lr>"]
    assert prack.to.tag == "cucm" and prack.from_.tag == "fromtag1"
    assert "Contact" not in prack.headers  # PRACK refreshes no target
    assert prack.body == b""
    # The 2xx to the INVITE is ACKed with the INVITE's number, not the PRACK's.
    ok = make_response(request, 200, to_tag="cucm")
    ok.headers.add("Contact", UAS_CONTACT)
    dialog.receive_response(request, ok)
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.create_ack().cseq.seq == 20


# -- UAS (§3) ----------------------------------------------------------------------------


def test_uas_numbers_and_retransmits_until_prack() -> None:
    request = invite()
    sender = ReliableProvisionalSender(request, t1=0.5, first_rseq=41)
    first = sender.send(make_response(request, 180, to_tag="gw"), now=10.0)
    assert first.headers.get("RSeq") == "41" and requires(first, TAG_100REL)
    assert first.headers.getlist("Require").count("100rel") == 1
    assert sender.outstanding and sender.get_timer() == 10.5
    with pytest.raises(LocalProtocolError, match="unacknowledged"):
        sender.send(make_response(request, 183, to_tag="gw"), now=10.1)
    times = []
    now = 10.0
    while (deadline := sender.get_timer()) is not None:
        now = deadline
        if sender.handle_timer(now) is not None:
            times.append(now - 10.0)
    # T1 doubling, no T2 cap, for 64*T1 (§3).
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert sender.timed_out and not sender.outstanding and now == 10.0 + 32.0


def test_uas_matches_prack_by_rack_and_the_next_rseq_follows() -> None:
    request = invite(cseq=7)
    sender = ReliableProvisionalSender(request, first_rseq=1)
    sent = sender.send(make_response(request, 183, to_tag="gw", body=SDP,
                                     content_type="application/sdp"), now=0.0)
    to = "<sip:bob@example.com>;tag=gw"

    def prack(rack: str | None) -> Request:
        extra = () if rack is None else (("RAck", rack),)
        return make_request("PRACK", cseq=8, to=to, extra=extra)

    assert not sender.may_send_final(200) and sender.may_send_final(486)
    assert sender.receive_prack(prack("1 6 INVITE")) is PrackMatch.NO_MATCH
    assert sender.receive_prack(prack("2 7 INVITE")) is PrackMatch.NO_MATCH
    with pytest.raises(ParseError):
        sender.receive_prack(prack(None))
    with pytest.raises(ParseError):
        sender.receive_prack(prack("one 7 INVITE"))
    assert sender.outstanding
    assert sender.receive_prack(prack(str(RAck.of(sent)))) is PrackMatch.ACKNOWLEDGED
    assert not sender.outstanding and sender.get_timer() is None
    assert sender.may_send_final(200)
    assert sender.receive_prack(prack("1 7 INVITE")) is PrackMatch.NO_MATCH  # late duplicate
    second = sender.send(make_response(request, 180, to_tag="gw"), now=1.0)
    assert second.headers.get("RSeq") == "2"
    assert sender.may_send_final(200)  # no SDP in the unacknowledged one
    sender.abandon()
    assert sender.get_timer() is None and sender.handle_timer(100.0) is None


def test_uas_refuses_to_send_what_cannot_be_reliable() -> None:
    request = invite()
    sender = ReliableProvisionalSender(request)
    with pytest.raises(LocalProtocolError):
        sender.send(make_response(request, 100), now=0.0)
    with pytest.raises(LocalProtocolError):
        sender.send(make_response(request, 200, to_tag="gw"), now=0.0)
    with pytest.raises(LocalProtocolError, match="To tag"):
        sender.send(make_response(request, 180), now=0.0)
    # Nothing was consumed by the refusals; a random first RSeq is in 1 .. 2**31 - 1 (§3).
    first = sender.send(make_response(request, 180, to_tag="gw"), now=0.0)
    assert 1 <= parse_rseq(first.headers.get("RSeq") or "") < 2**31
    assert sender.outstanding


# -- over the wire -----------------------------------------------------------------------


@pytest.mark.parametrize("lose_first_prack", [False, True])
def test_reliable_183_prack_200_over_transaction_layers(lose_first_prack: bool) -> None:
    lost: list[Request] = []

    def drop(message: Request | Response) -> bool:
        if lose_first_prack and isinstance(message, Request) and message.method == "PRACK" \
                and not lost:
            lost.append(message)
            return True
        return False

    pair = LayerPair(drop=drop)
    request = invite()
    invite_tx = pair.uac.send_request(request, pair.uas_addr, pair.now)
    pair.flush()
    (received,) = only(drain(pair.uas), RequestReceived)
    server_tx = received.transaction

    # UAS: a reliable 183 with SDP (early media).
    sender = ReliableProvisionalSender(received.request, first_rseq=988789)
    progress = make_response(received.request, 183, to_tag="cucm", body=SDP,
                             content_type="application/sdp")
    progress.headers.add("Contact", UAS_CONTACT)
    reliable_183 = sender.send(progress, pair.now)
    pair.uas.send_response(server_tx, reliable_183, pair.now)
    uas_dialog = Dialog.create_uas(received.request, reliable_183)
    pair.flush()

    # UAC: classify, make the early dialog, PRACK on its own transaction.
    acceptor = ProvisionalAcceptor(request)
    responses = only(drain(pair.uac), ResponseReceived)
    assert [r.response.status for r in responses] == [183]
    response = responses[0].response
    assert acceptor.classify(response) is ProvisionalKind.NEW
    dialog = Dialog.create_uac(request, response)
    prack = acceptor.prack(dialog, response, via="SIP/2.0/UDP 127.0.0.1:5060;rport")
    prack_tx = pair.uac.send_request(prack, pair.uas_addr, pair.now)
    assert prack_tx is not invite_tx
    pair.flush()
    if lose_first_prack:
        # The 183 is retransmitted at T1 (the UAC drops it as a retransmission) and the
        # PRACK by its own Timer E.
        pair.advance(0.5)
        resent = sender.handle_timer(pair.now)
        assert resent is not None
        pair.uas.send_response(server_tx, resent, pair.now)
        pair.flush()
        again = only(drain(pair.uac), ResponseReceived)
        assert [acceptor.classify(r.response) for r in again] == [ProvisionalKind.RETRANSMISSION]
    (prack_in,) = only(drain(pair.uas), RequestReceived)
    assert prack_in.request.method == "PRACK"
    uas_dialog.receive_request(prack_in.request)
    assert sender.receive_prack(prack_in.request) is PrackMatch.ACKNOWLEDGED
    assert sender.may_send_final(200) and sender.get_timer() is None
    pair.uas.send_response(prack_in.transaction, make_response(prack_in.request, 200), pair.now)
    pair.flush()
    (prack_ok,) = only(drain(pair.uac), ResponseReceived)
    assert prack_ok.transaction is prack_tx and prack_ok.response.status == 200
    assert prack_ok.response.cseq.method == "PRACK"
    assert pair.sent("uac", "PRACK") == ([0.0, 0.5] if lose_first_prack else [0.0])
