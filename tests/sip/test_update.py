"""UPDATE (RFC 3311) in early and confirmed dialogs, with and without SDP, the glare and
pending-offer refusals, and the option-tag / Allow helpers (RFC 3261 §8.2.2.3, §20)."""

from __future__ import annotations

import random

import pytest

from sip.dialog import Dialog, DialogState
from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.events import RequestReceived, ResponseReceived
from sip.extensions import allows, option_tags, requires, supports, unsupported_tags
from sip.message import Request, Response, make_response
from sip.update import (
    OFFER_TABLE,
    OfferAnswer,
    OfferEvent,
    OfferState,
    Refusal,
    can_send_update,
    ends_dialog,
    glare_retry_delay,
    has_sdp,
    make_update,
    refuse_offer,
)
from sip.uri import URI

from .helpers import LayerPair, drain, make_request, only

UAC_CONTACT = "<sip:gw@127.0.0.1:5060>"
UAS_CONTACT = "<sip:3001@127.0.0.2:5060>"
SDP = (b"v=0\r\no=- 1 2 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n"
       b"t=0 0\r\nm=audio 4002 RTP/AVP 0\r\n")
VIA = "SIP/2.0/UDP 127.0.0.1:5060;rport"


def dialogs(status: int) -> tuple[Request, Dialog, Dialog]:
    """An INVITE and the UAC's and UAS's dialogs after a ``status`` (183 or 200)."""
    invite = make_request("INVITE", cseq=5, extra=(("Contact", UAC_CONTACT),))
    response = make_response(invite, status, to_tag="cucm")
    response.headers.add("Contact", UAS_CONTACT)
    return (invite, Dialog.create_uac(invite, response),
            Dialog.create_uas(invite, response, local_contact=UAS_CONTACT))


@pytest.mark.parametrize("status", [183, 200])
@pytest.mark.parametrize("with_sdp", [True, False])
def test_update_from_the_caller_in_early_and_confirmed_dialogs(
    status: int, with_sdp: bool
) -> None:
    _invite, uac, uas = dialogs(status)
    update = make_update(uac, via=VIA, sdp=SDP if with_sdp else b"")
    assert update.method == "UPDATE" and update.cseq.seq == 6
    assert update.headers.get("Contact") == UAC_CONTACT  # a target refresh request
    assert str(update.uri) == "sip:3001@127.0.0.2:5060"
    assert has_sdp(update) is with_sdp
    assert (update.content_type == "application/sdp") is with_sdp
    # The UAS accepts it in sequence, in the same dialog state.
    state = uas.state
    uas.receive_request(update)
    assert uas.remote_seq == 6 and uas.state is state
    assert refuse_offer(OfferState.STABLE, update) is None


@pytest.mark.parametrize("status", [183, 200])
def test_update_from_the_callee_refreshes_the_callers_target(status: int) -> None:
    _invite, uac, uas = dialogs(status)
    uas.local_contact = "<sip:3001@127.0.0.9:5070>"
    update = make_update(uas, sdp=SDP)
    assert update.from_.tag == "cucm" and update.to.tag == "fromtag1"
    uac.receive_request(update)
    assert uac.remote_target == URI.parse("sip:3001@127.0.0.9:5070")
    ok = make_response(update, 200, body=SDP, content_type="application/sdp")
    ok.headers.add("Contact", UAC_CONTACT)
    uas.receive_response(update, ok)
    assert uas.state is (DialogState.EARLY if status == 183 else DialogState.CONFIRMED)


def test_a_2xx_to_our_update_refreshes_the_target_and_keeps_an_early_dialog_early() -> None:
    _invite, uac, _uas = dialogs(183)
    update = make_update(uac, sdp=SDP)
    ok = make_response(update, 200, body=SDP, content_type="application/sdp")
    ok.headers.add("Contact", "<sip:3001@127.0.0.8:5080>")
    uac.receive_response(update, ok)
    assert uac.state is DialogState.EARLY  # only the INVITE's 2xx confirms it
    assert uac.remote_target == URI.parse("sip:3001@127.0.0.8:5080")
    refused = make_response(make_update(uac), 491)
    uac.receive_response(update, refused)
    assert uac.state is DialogState.EARLY  # a refused UPDATE ends nothing


def test_no_update_in_a_terminated_dialog() -> None:
    _invite, uac, _uas = dialogs(200)
    uac.terminate()
    with pytest.raises(LocalProtocolError):
        make_update(uac)
    assert not can_send_update(uac, peer_allows=True, offer=False, state=OfferState.STABLE)


def test_glare_and_pending_offer_refusals() -> None:
    _invite, uac, _uas = dialogs(200)
    offer = make_update(uac, sdp=SDP)
    bare = make_update(uac)
    assert refuse_offer(OfferState.LOCAL_OFFER, offer) == Refusal(491, "Request Pending")
    pending = refuse_offer(OfferState.REMOTE_OFFER, offer, rng=random.Random(1))
    assert pending is not None and pending.status == 500
    ((name, value),) = pending.headers
    assert name == "Retry-After" and 0 <= int(value) <= 10
    # Without SDP there is no offer to collide: never refused (a session-timer refresh).
    for state in OfferState:
        assert refuse_offer(state, bare) is None
    reinvite = uac.create_request("INVITE", body=SDP, content_type="application/sdp")
    assert refuse_offer(OfferState.LOCAL_OFFER, reinvite) is not None


@pytest.mark.parametrize("state", list(OfferState))
@pytest.mark.parametrize("peer_allows", [True, False, None])
@pytest.mark.parametrize("offer", [True, False])
def test_can_send_update_table(state: OfferState, peer_allows: bool | None, offer: bool) -> None:
    _invite, uac, _uas = dialogs(183)
    expected = peer_allows is not False and (not offer or state is OfferState.STABLE)
    assert can_send_update(uac, peer_allows=peer_allows, offer=offer, state=state) is expected


def test_glare_retry_delay_depends_on_who_owns_the_call_id() -> None:
    _invite, uac, uas = dialogs(200)
    rng = random.Random(3)
    owner = {glare_retry_delay(uac, rng=rng) for _ in range(500)}
    other = {glare_retry_delay(uas, rng=rng) for _ in range(500)}
    assert 2.1 <= min(owner) and max(owner) <= 4.0
    assert 0.0 <= min(other) and max(other) <= 2.0
    assert all(abs(d * 100 - round(d * 100)) < 1e-9 for d in owner | other)  # 10 ms units
    assert len(owner) > 50 and len(other) > 50


@pytest.mark.parametrize(("status", "ends"), [(200, False), (408, True), (481, True),
                                              (491, False), (500, False)])
def test_ends_dialog(status: int, ends: bool) -> None:
    assert ends_dialog(Response(status, "x")) is ends


def test_update_with_sdp_over_transaction_layers_gets_its_answer() -> None:
    pair = LayerPair()
    _invite, uac, uas = dialogs(200)
    update = make_update(uac, via=VIA, sdp=SDP)
    tx = pair.uac.send_request(update, pair.uas_addr, pair.now)
    pair.flush()
    (received,) = only(drain(pair.uas), RequestReceived)
    uas.receive_request(received.request)
    assert has_sdp(received.request)
    answer = make_response(received.request, 200, body=SDP, content_type="application/sdp")
    answer.headers.add("Contact", UAS_CONTACT)
    pair.uas.send_response(received.transaction, answer, pair.now)
    pair.flush()
    (got,) = only(drain(pair.uac), ResponseReceived)
    assert got.transaction is tx and got.response.status == 200 and has_sdp(got.response)
    uac.receive_response(update, got.response)
    assert uac.state is DialogState.CONFIRMED


# -- extensions ---------------------------------------------------------------------------


def test_option_tags_require_supported_and_allow() -> None:
    request = make_request("INVITE", extra=(
        ("Require", "100rel, Foo"), ("Supported", "timer"), ("k", "replaces"),
        ("Allow", "INVITE, ACK, UPDATE, PRACK")))
    assert option_tags(request, "Supported") == {"timer", "replaces"}  # compact k too
    assert requires(request, "100REL") and not requires(request, "timer")
    assert supports(request, "timer") and supports(request, "100rel")  # Require implies it
    assert not supports(request, "path")
    assert unsupported_tags(request, {"100rel", "timer"}) == ["Foo"]
    assert unsupported_tags(request, ()) == ["100rel", "Foo"]
    assert allows(request, "UPDATE") is True and allows(request, "update") is False
    assert allows(request, "REFER") is False
    assert allows(make_request("INVITE"), "UPDATE") is None


# -- offer/answer table -------------------------------------------------------------------


@pytest.mark.parametrize("state", list(OfferState))
@pytest.mark.parametrize("event", list(OfferEvent))
def test_every_offer_state_and_event_is_handled_or_raises(
    state: OfferState, event: OfferEvent
) -> None:
    tracker = OfferAnswer(state)
    expected = OFFER_TABLE[state].get(event)
    if expected is not None:
        assert tracker.apply(event) is expected and tracker.state is expected
        return
    remote = event in (OfferEvent.RECEIVE_OFFER, OfferEvent.RECEIVE_ANSWER)
    with pytest.raises(RemoteProtocolError if remote else LocalProtocolError) as raised:
        tracker.apply(event)
    assert tracker.state is state
    if event is OfferEvent.RECEIVE_OFFER:
        assert raised.value.status_hint == (491 if state is OfferState.LOCAL_OFFER else 500)
    elif event is OfferEvent.RECEIVE_ANSWER:
        assert raised.value.status_hint == 400


def test_offer_answer_rounds_and_a_refused_offer_keeps_the_session() -> None:
    tracker = OfferAnswer()
    for event, state in [
        (OfferEvent.SEND_OFFER, OfferState.LOCAL_OFFER),
        (OfferEvent.RECEIVE_ANSWER, OfferState.STABLE),
        (OfferEvent.RECEIVE_OFFER, OfferState.REMOTE_OFFER),
        (OfferEvent.SEND_ANSWER, OfferState.STABLE),
        (OfferEvent.SEND_OFFER, OfferState.LOCAL_OFFER),
        (OfferEvent.OFFER_REFUSED, OfferState.STABLE),
        (OfferEvent.RECEIVE_OFFER, OfferState.REMOTE_OFFER),
        (OfferEvent.REFUSE_OFFER, OfferState.STABLE),
    ]:
        assert tracker.apply(event) is state
