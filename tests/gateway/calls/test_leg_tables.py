"""Both leg tables, exhaustively: every state x every event kind is either handled (the
next state and the actions are those of the vectors in tests/data/calls/) or raises
LegStateError and leaves the state alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.calls.events import LegStateError, ResponseIn
from gateway.calls.leg_machine import EventKind, LegMachine, LegState
from gateway.calls.uac_leg import UacLeg
from gateway.calls.uas_leg import UasLeg
from tests.gateway.calls.samples import OFFER, SAMPLES, render

DATA = Path(__file__).resolve().parents[2] / "data" / "calls"
MACHINES: dict[str, type[LegMachine]] = {"uas": UasLeg, "uac": UacLeg}


def vectors(name: str) -> dict[tuple[LegState, EventKind], tuple[LegState, str]]:
    found = {}
    for line in (DATA / f"{name}_transitions.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        state, kind, after, actions = line.split()
        found[(LegState(state), EventKind[kind.upper()])] = (LegState(after), actions)
    return found


CASES = [(name, state, kind) for name in MACHINES for state in LegState for kind in EventKind]


@pytest.mark.parametrize(("name", "state", "kind"), CASES,
                         ids=[f"{n}-{s.value}-{k.name.lower()}" for n, s, k in CASES])
def test_every_state_and_event_is_handled_as_specified_or_raises(
        name: str, state: LegState, kind: EventKind) -> None:
    machine = MACHINES[name]()
    machine.state = state
    expected = vectors(name).get((state, kind))
    if expected is None:
        with pytest.raises(LegStateError):
            machine.handle(SAMPLES[kind], 5.0)
        assert machine.state is state and not machine.history
        return
    actions = machine.handle(SAMPLES[kind], 5.0)
    assert (machine.state, render(actions)) == expected
    assert machine.history == [(kind, expected[0])] and machine.changed_at == 5.0


@pytest.mark.parametrize("name", MACHINES)
def test_the_vectors_name_exactly_the_table_entries(name: str) -> None:
    table = MACHINES[name].TABLE
    entries = {(state, kind) for state, row in table.items() for kind in row}
    assert entries == set(vectors(name))


def test_100_trying_moves_nothing_and_reports_nothing() -> None:
    leg = UacLeg()
    leg.handle(SAMPLES[EventKind.TRY], 0.0)
    assert leg.handle(ResponseIn(100, "Trying"), 0.1) == []
    assert leg.state is LegState.TRYING


def test_a_ring_without_sdp_after_early_media_stays_in_early_media() -> None:
    leg = UacLeg()
    leg.handle(SAMPLES[EventKind.TRY], 0.0)
    leg.handle(ResponseIn(183, "Session Progress", OFFER), 0.1)
    leg.handle(ResponseIn(180, "Ringing"), 0.2)
    assert leg.state is LegState.EARLY_MEDIA


def test_a_refused_invite_is_sent_again_as_a_retry() -> None:
    leg = UacLeg()
    leg.handle(SAMPLES[EventKind.TRY], 0.0)
    leg.handle(ResponseIn(488, "Not Acceptable Here"), 0.1)
    (send,) = leg.handle(SAMPLES[EventKind.TRY], 0.2)
    assert getattr(send, "retry", None) is True


def test_a_reinvite_without_sdp_answered_with_our_offer_waits_for_the_acks_answer() -> None:
    """Connect without SDP (the call answers a re-INVITE that had none) makes our 2xx an
    offer: the leg is reanswering until the ACK brings the answer, reported as Confirm."""
    from gateway.calls.events import AckIn, Confirm, Connect, Emit, ReinviteIn, SendUpdateAnswer
    leg = UacLeg()
    leg.state = LegState.CONNECTED
    leg.handle(ReinviteIn(None), 1.0)
    assert leg.handle(Connect(None), 1.1) == [SendUpdateAnswer(None)]
    assert leg.state is LegState.REANSWERING
    assert leg.handle(AckIn(OFFER), 1.2) == [Emit(Confirm(OFFER))]
    assert leg.state is LegState.CONNECTED
