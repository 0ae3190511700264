"""Dialogs (RFC 3261 §12, §13.2.2.4, §13.3.1.4) over a pair of transaction layers."""

from __future__ import annotations

import pytest

from sip.dialog import Dialog, DialogId, DialogState
from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.events import AckReceived, AckTimeout, RequestReceived, ResponseReceived
from sip.message import Request, Response, make_response, parse_message
from sip.uri import URI

from .helpers import LayerPair, drain, make_request, only, wire

UAC_CONTACT = "<sip:alice@127.0.0.1:5060;transport=udp>"
UAS_CONTACT = "<sip:bob@127.0.0.2:5060>"
# As the UAS receives them: nearest proxy first (p1 is next to the UAC, p2 to the UAS).
RECORD_ROUTES = ("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>")


def initial_invite() -> Request:
    return make_request(
        "INVITE",
        cseq=10,
        extra=(("Contact", UAC_CONTACT), *(("Record-Route", r) for r in RECORD_ROUTES)),
    )


def uas_ok(invite: Request, status: int = 200) -> Response:
    response = make_response(invite, status, to_tag="bobtag")
    response.headers.add("Contact", UAS_CONTACT)
    for route in RECORD_ROUTES:
        response.headers.add("Record-Route", route)
    return response


def test_uac_and_uas_dialogs_mirror_each_other() -> None:
    invite = wire(initial_invite())
    assert isinstance(invite, Request)
    ok = wire(uas_ok(invite))
    assert isinstance(ok, Response)
    uac = Dialog.create_uac(invite, ok)
    uas = Dialog.create_uas(invite, uas_ok(invite), local_contact=UAS_CONTACT)
    assert uac.id == DialogId(invite.call_id, "fromtag1", "bobtag")
    assert uas.id == DialogId(invite.call_id, "bobtag", "fromtag1")
    assert uac.state is DialogState.CONFIRMED and uas.state is DialogState.CONFIRMED
    # §12.1.2: the UAC reverses Record-Route; §12.1.1: the UAS keeps its order.
    assert [str(r.uri) for r in uac.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert [str(r.uri) for r in uas.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert uac.remote_target == URI.parse("sip:bob@127.0.0.2:5060")
    assert uas.remote_target == URI.parse("sip:alice@127.0.0.1:5060;transport=udp")
    assert (uac.local_seq, uac.remote_seq) == (10, None)
    assert (uas.local_seq, uas.remote_seq) == (None, 10)
    assert uac.next_hop() == URI.parse("sip:p1.example.com;lr")
    assert DialogId.of_received_request(make_request(
        "BYE", call_id=invite.call_id, to="<sip:bob@example.com>;tag=bobtag")) == uas.id


def test_in_dialog_requests_use_the_route_set_and_next_cseq() -> None:
    invite = initial_invite()
    uac = Dialog.create_uac(invite, wire(uas_ok(invite)), local_contact=UAC_CONTACT)  # type: ignore[arg-type]
    bye = uac.create_request("BYE", via="SIP/2.0/UDP 127.0.0.1:5060;rport")
    assert bye.uri == URI.parse("sip:bob@127.0.0.2:5060")  # loose routing: target stays
    assert bye.headers.getlist("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert (bye.cseq.seq, bye.cseq.method) == (11, "BYE")
    assert bye.from_.tag == "fromtag1" and bye.to.tag == "bobtag"
    assert bye.call_id == invite.call_id
    assert bye.top_via.branch and bye.top_via.branch.startswith("z9hG4bK")
    assert bye.top_via.has_rport
    assert "Contact" not in bye.headers
    parsed = parse_message(bye.encode())  # a valid message on the wire
    assert isinstance(parsed, Request) and parsed.method == "BYE"

    info = uac.create_request("INFO", via="SIP/2.0/UDP 127.0.0.1:5060", body=b"x",
                              content_type="application/dtmf-relay")
    assert info.cseq.seq == 12 and info.body == b"x"
    refer = uac.create_request("REFER", headers=(("Refer-To", "<sip:3001@video.example.com>"),))
    assert refer.cseq.seq == 13 and refer.headers.get("Contact") == UAC_CONTACT
    assert refer.headers.get("Refer-To") == "<sip:3001@video.example.com>"
    assert refer.via == []  # via=None: the caller adds it

    reinvite = uac.create_request("INVITE", via="SIP/2.0/UDP 127.0.0.1:5060")
    assert reinvite.cseq.seq == 14 and reinvite.headers.get("Contact") == UAC_CONTACT
    ack = uac.create_ack(via="SIP/2.0/UDP 127.0.0.1:5060")
    # §13.2.2.4: the ACK reuses the INVITE's CSeq number, with a new branch.
    assert (ack.cseq.seq, ack.cseq.method) == (14, "ACK")
    assert ack.top_via.branch != reinvite.top_via.branch
    assert uac.local_seq == 14  # ACK does not consume a number
    with pytest.raises(LocalProtocolError):
        uac.create_request("INFO", body=b"x")  # body without a type


def test_uas_first_request_picks_a_sequence_and_increments() -> None:
    invite = initial_invite()
    uas = Dialog.create_uas(invite, uas_ok(invite), local_contact=UAS_CONTACT)
    first = uas.create_request("INFO")
    second = uas.create_request("BYE")
    assert 0 < first.cseq.seq < 2**31 and second.cseq.seq == first.cseq.seq + 1
    # UAS requests go to the UAC's Contact through Record-Route in received order.
    assert second.uri == URI.parse("sip:alice@127.0.0.1:5060;transport=udp")
    assert second.headers.getlist("Route") == list(RECORD_ROUTES)
    assert second.from_.tag == "bobtag" and second.to.tag == "fromtag1"


def test_strict_router_goes_in_the_request_uri() -> None:
    invite = make_request("INVITE", extra=(("Contact", UAC_CONTACT),))
    ok = make_response(invite, 200, to_tag="b")
    ok.headers.add("Contact", UAS_CONTACT)
    ok.headers.add("Record-Route", "<sip:strict.example.com>, <sip:loose.example.com;lr>")
    uac = Dialog.create_uac(invite, ok)
    bye = uac.create_request("BYE")
    # Reversed: loose then strict -> first route is loose: loose routing.
    assert bye.uri == URI.parse("sip:bob@127.0.0.2:5060")
    ok2 = make_response(invite, 200, to_tag="c")
    ok2.headers.add("Contact", UAS_CONTACT)
    ok2.headers.add("Record-Route", "<sip:loose.example.com;lr>")
    ok2.headers.add("Record-Route", "<sip:strict.example.com>")
    strict = Dialog.create_uac(invite, ok2).create_request("BYE")
    assert strict.uri == URI.parse("sip:strict.example.com")
    assert strict.headers.getlist("Route") == [
        "<sip:loose.example.com;lr>",
        "<sip:bob@127.0.0.2:5060>",
    ]


def test_cseq_checks_and_target_refresh_on_the_uas() -> None:
    invite = initial_invite()
    uas = Dialog.create_uas(invite, uas_ok(invite))
    to = "<sip:bob@example.com>;tag=bobtag"
    reinvite = make_request("INVITE", cseq=11, to=to, call_id=invite.call_id,
                            extra=(("Contact", "<sip:alice@127.0.0.9:5070>"),))
    uas.receive_request(reinvite)
    assert uas.remote_seq == 11
    assert uas.remote_target == URI.parse("sip:alice@127.0.0.9:5070")
    # ACK and CANCEL carry the INVITE's number: no check, no change.
    uas.receive_request(make_request("ACK", cseq=11, to=to, call_id=invite.call_id))
    info = make_request("INFO", cseq=12, to=to, call_id=invite.call_id)
    uas.receive_request(info)
    assert uas.remote_target == URI.parse("sip:alice@127.0.0.9:5070")  # INFO refreshes nothing
    with pytest.raises(RemoteProtocolError) as lower:
        uas.receive_request(make_request("INFO", cseq=5, to=to, call_id=invite.call_id))
    assert lower.value.status_hint == 500
    assert uas.remote_seq == 12
    with pytest.raises(RemoteProtocolError) as other:
        uas.receive_request(make_request("BYE", cseq=20, to="<sip:b@x>;tag=nope",
                                         call_id=invite.call_id))
    assert other.value.status_hint == 481


def test_uac_target_refresh_from_2xx_and_early_dialog() -> None:
    invite = initial_invite()
    ringing = make_response(invite, 180, to_tag="bobtag")
    ringing.headers.add("Contact", "<sip:bob@127.0.0.5>")
    ringing.headers.add("Record-Route", "<sip:early.example.com;lr>")
    uac = Dialog.create_uac(invite, ringing)
    assert uac.state is DialogState.EARLY
    # The 2xx confirms it and recomputes the route set (§13.2.2.4) and target.
    uac.receive_response(invite, uas_ok(invite))
    assert uac.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in uac.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert uac.remote_target == URI.parse("sip:bob@127.0.0.2:5060")
    reinvite = uac.create_request("INVITE")
    moved = make_response(reinvite, 200)
    moved.headers.add("Contact", "<sip:bob@127.0.0.6:5080>")
    uac.receive_response(reinvite, moved)
    assert uac.remote_target == URI.parse("sip:bob@127.0.0.6:5080")
    uac.terminate()
    assert uac.state is DialogState.TERMINATED
    with pytest.raises(LocalProtocolError):
        uac.create_request("INFO")


def test_early_dialog_ends_on_failure() -> None:
    invite = initial_invite()
    early = Dialog.create_uac(invite, make_response(invite, 183, to_tag="t"))
    early.receive_response(invite, make_response(invite, 486, to_tag="t"))
    assert early.state is DialogState.TERMINATED


def test_dialog_needs_a_tagged_response() -> None:
    invite = initial_invite()
    with pytest.raises(RemoteProtocolError):
        Dialog.create_uac(invite, make_response(invite, 100))
    with pytest.raises(RemoteProtocolError):
        Dialog.create_uac(invite, make_response(invite, 486, to_tag="x"))


def call_through_pair(pair: LayerPair) -> tuple[Dialog, Dialog, object, object]:
    """INVITE / 200 between the pair; returns both dialogs and the two INVITE transactions."""
    invite = initial_invite()
    client = pair.uac.send_request(invite, pair.uas_addr, pair.now)
    pair.flush()
    received = only(drain(pair.uas), RequestReceived)[0]
    server = received.transaction
    ok = uas_ok(received.request)
    uas = Dialog.create_uas(received.request, ok, local_contact=UAS_CONTACT)
    pair.uas.send_response(server, ok, pair.now)
    pair.flush()
    answered = only(drain(pair.uac), ResponseReceived)[-1]
    uac = Dialog.create_uac(invite, answered.response, local_contact=UAC_CONTACT)
    return uac, uas, client, server


def test_full_call_with_lost_acks_retransmits_2xx_and_reacks() -> None:
    lost = {"ACK": 2}

    def drop(message: Request | Response) -> bool:
        if isinstance(message, Request) and lost.get(message.method, 0) > 0:
            lost[message.method] -= 1
            return True
        return False

    pair = LayerPair(drop=drop)
    uac, uas, client, server = call_through_pair(pair)
    pair.uac.send_ack(client, uac.create_ack(via="SIP/2.0/UDP 127.0.0.1:5060"),  # type: ignore[arg-type]
                      pair.uas_addr)
    pair.flush()
    pair.advance(2.0)  # 2xx at 0.5 (ACK lost again) and 1.5 (ACK arrives)
    assert pair.sent("uas", 200) == [0.0, pytest.approx(0.5), pytest.approx(1.5)]
    assert pair.sent("uac", "ACK") == [0.0, pytest.approx(0.5), pytest.approx(1.5)]
    (acked,) = drain(pair.uas)
    assert isinstance(acked, AckReceived) and acked.transaction is server
    uas.receive_request(acked.request)  # in-dialog, accepted
    # Then BYE from the UAS side, through the layers.
    bye = uas.create_request("BYE", via="SIP/2.0/UDP 127.0.0.2:5060")
    pair.uas.send_request(bye, pair.uac_addr, pair.now)
    pair.flush()
    got = only(drain(pair.uac), RequestReceived)[0]
    uac.receive_request(got.request)
    pair.uac.send_response(got.transaction, make_response(got.request, 200), pair.now)
    pair.flush()
    assert [e.response.status for e in only(drain(pair.uas), ResponseReceived)] == [200]


def test_call_whose_ack_never_arrives_drops_after_32_seconds() -> None:
    pair = LayerPair(drop=lambda m: isinstance(m, Request) and m.method == "ACK")
    uac, uas, client, server = call_through_pair(pair)
    pair.uac.send_ack(client, uac.create_ack(via="SIP/2.0/UDP 127.0.0.1:5060"),  # type: ignore[arg-type]
                      pair.uas_addr)
    pair.advance(31.9)
    assert not only(drain(pair.uas), AckTimeout)
    pair.advance(32.0)
    (timeout,) = only(drain(pair.uas), AckTimeout)
    assert timeout.transaction is server
    # 2xx sent at 0 then T1 doubling capped at T2: 0.5 1.5 3.5 7.5 11.5 ... 31.5.
    assert pair.sent("uas", 200) == pytest.approx(
        [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    )
    # Every retransmitted 2xx was re-ACKed by the UAC layer without the UAC TU.
    assert len(pair.sent("uac", "ACK")) == 11
    assert not only(drain(pair.uac), ResponseReceived)
    # The TU's answer to AckTimeout: BYE, and the dialog ends.
    bye = uas.create_request("BYE", via="SIP/2.0/UDP 127.0.0.2:5060")
    uas.terminate()
    pair.uas.send_request(bye, pair.uac_addr, pair.now)
    pair.flush()
    assert only(drain(pair.uac), RequestReceived)[0].request.method == "BYE"


def test_a_second_forks_2xx_makes_its_own_dialog_of_the_same_invite() -> None:
    """§13.2.2.4: a forked INVITE answered 2xx by two UASs makes two dialogs; the second,
    made from our first and the other 2xx, has the other To tag, target and route set, and
    its ACK and BYE follow the INVITE's CSeq (the UA ACKs it and BYEs it at once)."""
    invite = wire(initial_invite())
    assert isinstance(invite, Request)
    first = Dialog.create_uac(invite, wire(uas_ok(invite)), local_contact=UAC_CONTACT)  # type: ignore[arg-type]
    other = make_response(invite, 200, to_tag="carol")
    other.headers.add("Contact", "<sip:bob@127.0.0.3:5070>")
    other.headers.add("Record-Route", "<sip:p3.example.com;lr>")
    fork = Dialog.create_fork(first, other)
    assert fork.id == DialogId(invite.call_id, "fromtag1", "carol") != first.id
    assert fork.state is DialogState.CONFIRMED and fork.is_uac
    assert fork.remote_target == URI.parse("sip:bob@127.0.0.3:5070")
    assert [str(r.uri) for r in fork.route_set] == ["sip:p3.example.com;lr"]
    ack = fork.create_ack()
    assert (ack.cseq.seq, ack.cseq.method, ack.to.tag) == (10, "ACK", "carol")
    bye = fork.create_request("BYE")
    assert (bye.cseq.seq, bye.to.tag, bye.from_.tag) == (11, "carol", "fromtag1")
    with pytest.raises(RemoteProtocolError):
        Dialog.create_fork(first, make_response(invite, 180, to_tag="dave"))
