"""Property test: any mix of requests, answers, CANCELs, losses and time never raises, and
once the TUs have answered everything both layers drain to nothing (no leaked state)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sip.events import (
    Cancelled,
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
)
from sip.message import Request, Response, make_response
from sip.transaction_client import ClientTransaction
from sip.transaction_server import ServerState, ServerTransaction

from .helpers import LayerPair, make_request

METHODS = ("INVITE", "OPTIONS", "BYE", "INFO")
STATUSES = (100, 180, 183, 200, 302, 404, 486, 500, 603)

operation = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(METHODS)),
    st.tuples(st.just("answer"), st.integers(0, 20), st.sampled_from(STATUSES)),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("advance"), st.floats(0.0, 10.0)),
)


class Tus:
    """Minimal transaction users on both sides, reacting to events as a UA core would."""

    def __init__(self, pair: LayerPair) -> None:
        self.pair = pair
        self.pending: list[ServerTransaction] = []
        self.clients: list[ClientTransaction] = []
        self.outcome: dict[ClientTransaction, list[str]] = {}
        self.counter = itertools.count()

    def react(self) -> None:
        pair = self.pair
        pair.flush()
        while True:
            uas_event, uac_event = pair.uas.next_event(), pair.uac.next_event()
            if uas_event is None and uac_event is None:
                return
            if isinstance(uas_event, RequestReceived):
                self.pending.append(uas_event.transaction)
            elif isinstance(uas_event, Cancelled):
                self.answer(uas_event.transaction, 487)
            if isinstance(uac_event, ResponseReceived) and uac_event.transaction is not None:
                tx = uac_event.transaction
                status = uac_event.response.status
                if status >= 200:
                    self.outcome.setdefault(tx, []).append("final")
                if tx.is_invite and 200 <= status < 300:
                    ack = make_request(
                        "ACK",
                        call_id=tx.request.call_id,
                        cseq=tx.request.cseq.seq,
                        to=str(uac_event.response.to),
                    )
                    pair.uac.send_ack(tx, ack, pair.uas_addr)
            elif isinstance(uac_event, TransactionTimeout):
                assert isinstance(uac_event.transaction, ClientTransaction)
                self.outcome.setdefault(uac_event.transaction, []).append("timeout")
            elif isinstance(uac_event, TransactionTerminated):
                pass
            pair.flush()

    def answer(self, tx: ServerTransaction, status: int) -> None:
        if tx.state not in (ServerState.TRYING, ServerState.PROCEEDING):
            return
        if status == 100 and tx.is_invite is False and tx.state is ServerState.PROCEEDING:
            status = 200
        self.pair.uas.send_response(tx, make_response(tx.request, status, to_tag="t"), 0.0)

    def run(self, op: tuple[object, ...]) -> None:
        pair = self.pair
        kind = op[0]
        if kind == "send":
            method = str(op[1])
            request = make_request(method, call_id=f"c{next(self.counter)}@fuzz")
            self.clients.append(pair.uac.send_request(request, pair.uas_addr, pair.now))
        elif kind == "answer" and self.pending:
            tx = self.pending[int(op[1]) % len(self.pending)]  # type: ignore[call-overload]
            self.answer(tx, int(op[2]))  # type: ignore[call-overload]
        elif kind == "cancel":
            invites = [c for c in self.clients if c.is_invite]
            if invites:
                pair.uac.cancel(invites[int(op[1]) % len(invites)], pair.now)  # type: ignore[call-overload]
        elif kind == "advance":
            self.react()
            pair.advance(pair.now + float(op[1]))  # type: ignore[arg-type]
        self.react()


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(operation, max_size=30),
    losses=st.lists(st.booleans(), min_size=1, max_size=16),
    reliable=st.booleans(),
)
def test_random_traffic_never_raises_and_leaves_nothing_behind(
    ops: list[tuple[object, ...]], losses: list[bool], reliable: bool
) -> None:
    loss_pattern = itertools.cycle(losses)

    def drop(message: Request | Response) -> bool:
        return not reliable and next(loss_pattern)

    pair = LayerPair(reliable=reliable, drop=drop)
    tus = Tus(pair)
    for op in ops:
        tus.run(op)
    # The TU answers whatever is (or, after retransmissions, becomes) open; time runs out
    # every timer.
    for _ in range(30):  # past Timer C (180 s) + Timer B
        for tx in list(tus.pending):
            tus.answer(tx, 486 if tx.is_invite else 200)
            tus.react()
        pair.advance(pair.now + 10.0)
        tus.react()
    assert pair.uac.transactions == [] and pair.uas.transactions == []
    assert pair.uac.get_timer() is None and pair.uas.get_timer() is None
    for client in tus.clients:
        # Each request ends exactly once: a final answer (2xx may repeat: forks/retransmits
        # reach the TU only if not yet ACKed), or a timeout.
        outcome = tus.outcome.get(client, [])
        assert outcome, client
        assert outcome.count("timeout") <= 1
        assert not ("timeout" in outcome and "final" in outcome)


@settings(max_examples=100, deadline=None)
@given(
    method=st.sampled_from(("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS")),
    status=st.sampled_from((None, *STATUSES)),
    branch=st.sampled_from(("z9hG4bKa", "z9hG4bKb", "legacy", "")),
    to_tag=st.sampled_from(("", ";tag=x", ";tag=y")),
    cseq=st.integers(1, 3),
    times=st.lists(st.floats(0, 100), max_size=4),
)
def test_stray_messages_never_raise(
    method: str, status: int | None, branch: str, to_tag: str, cseq: int, times: list[float]
) -> None:
    pair = LayerPair()
    layer = pair.uas
    request = make_request(method, branch=branch or None, cseq=cseq,
                           to=f"<sip:bob@example.com>{to_tag}")
    message: Request | Response = request
    if status is not None:
        message = make_response(request, status)
    for now in sorted([0.0, *times]):
        layer.receive(message, pair.uac_addr, now)
        layer.handle_timer(now)
        layer.messages_to_send()
    while layer.next_event() is not None:
        pass
    layer.handle_timer(1000.0)
    # Only server transactions waiting for their TU (no timer) may remain.
    assert all(tx.timers == {} for tx in layer.transactions)
