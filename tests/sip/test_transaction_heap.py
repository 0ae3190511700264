"""The deadline heap lets ended transactions go (issue 12: the soak's memory growth).

An answered INVITE ends with Timer M (64*T1) while its Timer C entry (180 s) is still in the
heap; before the heap was compacted every such call stayed in memory, message bytes and all,
until 180 s after its last provisional. These drive time by hand: no sockets, no sleeping.
"""

from __future__ import annotations

import gc
import weakref

from sip.message import make_response
from sip.transaction_client import ClientState, ClientTransaction
from sip.transaction_layer import TransactionLayer

from .helpers import Addr, make_request

TCP = Addr("127.0.0.2", 5061, reliable=True)


def _answered_call(layer: TransactionLayer, n: int, now: float) -> ClientTransaction:
    """An INVITE over TCP that rang (Timer C armed) and was answered (Timer M armed)."""
    invite = make_request("INVITE", transport="TCP", call_id=f"soak-{n}@127.0.0.1")
    tx = layer.send_request(invite, TCP, now)
    layer.receive(make_response(invite, 180, to_tag=f"t{n}"), TCP, now)
    layer.receive(make_response(invite, 200, to_tag=f"t{n}"), TCP, now)
    assert tx.state is ClientState.ACCEPTED
    return tx


def _fire_until(layer: TransactionLayer, until: float) -> None:
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)


def test_ended_invite_transactions_are_released_while_calls_keep_coming() -> None:
    layer = TransactionLayer()
    refs = []
    now = 0.0
    # 20 calls/s for 90 s, as bench/soak.py places them; Timer M (32 s) ends each one, and
    # newer calls keep live deadlines ahead of the ended calls' Timer C entries (180 s).
    for n in range(1800):
        now = n / 20
        _fire_until(layer, now)
        refs.append(weakref.ref(_answered_call(layer, n, now)))
        layer.messages_to_send()
        while layer.next_event() is not None:  # the TU takes its events
            pass
    ended = [ref for n, ref in enumerate(refs) if n / 20 + 32.0 < now]
    assert len(ended) > 1000 and layer.transactions  # calls still live
    gc.collect()
    alive = sum(ref() is not None for ref in ended)
    assert alive == 0, f"{alive} of {len(ended)} ended transactions still referenced"
    # Bounded: at most twice the live entries plus the floor, never one per call placed.
    live_entries = sum(len(tx.timers) for tx in layer.transactions)
    assert layer.timer_entries <= 2 * live_entries + 64 + 2


def test_heap_stays_bounded_while_calls_keep_coming() -> None:
    layer = TransactionLayer()
    peak = 0
    for n in range(4000):
        now = n / 20
        _fire_until(layer, now)
        _answered_call(layer, n, now)
        layer.messages_to_send()
        while layer.next_event() is not None:
            pass
        peak = max(peak, layer.timer_entries)
    live = len(layer.transactions)
    # ~640 calls in Accepted at any time (32 s at 20/s), each with Timers C and M armed.
    assert 600 <= live <= 660
    assert peak <= 2 * (2 * live) + 64 + 2  # not 2 entries per call ever placed (8000)


def test_compaction_keeps_deadline_order() -> None:
    """A rebuild must not lose or reorder live deadlines."""
    layer = TransactionLayer()
    for n in range(300):
        _answered_call(layer, n, n / 10)
    _fire_until(layer, 100.0)  # Timers M end the first calls: stale Timer C entries pile up
    fired: list[float] = []
    while (deadline := layer.get_timer()) is not None:
        fired.append(deadline)
        layer.handle_timer(deadline)
    assert fired == sorted(fired)
    assert layer.transactions == [] and layer.timer_entries == 0
