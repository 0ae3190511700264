"""Media port pool: documented units, even/odd pairs, all-or-nothing, counters, warning."""

from __future__ import annotations

import logging

import pytest

from media.port_pool import (
    PortLease,
    PortPool,
    PortPoolExhausted,
    PortPoolSettings,
    PortUnit,
)

AV = [PortUnit.AUDIO_VIDEO]
SHARE = [PortUnit.AUDIO_VIDEO, PortUnit.SCREEN_SHARE]


def test_default_pool_is_1000_ports_80_av_plus_20_sharing_calls() -> None:
    pool = PortPool()
    assert (pool.total_ports, pool.ports_free, pool.ports_in_use) == (1000, 1000, 0)
    leases = [pool.allocate(f"av{i}", AV) for i in range(80)]
    leases += [pool.allocate(f"share{i}", SHARE) for i in range(20)]
    assert pool.ports_in_use == 1000 and pool.ports_free == 0
    every = [p for lease in leases for p in lease.ports]
    assert len(every) == len(set(every)) == 1000
    assert min(every) == 56000 and max(every) == 56999
    with pytest.raises(PortPoolExhausted):
        pool.allocate("one-too-many", [PortUnit.TURN_CONNECTION])


def test_units_and_pairs_are_even_rtp_odd_rtcp() -> None:
    pool = PortPool()
    lease = pool.allocate("call", [PortUnit.AUDIO_VIDEO, PortUnit.SCREEN_SHARE,
                                   PortUnit.TURN_CONNECTION, PortUnit.TURN_CONNECTION])
    assert len(lease.ports) == 8 + 10 + 2 + 2
    assert all(rtp % 2 == 0 for rtp in lease.pairs)
    assert lease.ports[:2] == (lease.pairs[0], lease.pairs[0] + 1)
    assert [len(lease.pairs_for(i)) for i in range(4)] == [4, 5, 1, 1]
    assert lease.pairs_for(1) == lease.pairs[4:9]


def test_exhaustion_refuses_whole_call_warns_and_counts(caplog) -> None:
    pool = PortPool(PortPoolSettings(56000, 56019))  # 10 pairs = 20 ports
    first = pool.allocate("a", SHARE)  # 18 ports
    with caplog.at_level(logging.WARNING, logger="media.port_pool"):
        with pytest.raises(PortPoolExhausted) as info:
            pool.allocate("b", AV)
    assert info.value.status_hint == 503
    assert "Media port pool exhausted" in info.value.message
    assert any("Media port pool exhausted" in r.getMessage() for r in caplog.records)
    assert pool.calls_refused == 1
    assert pool.ports_in_use == 18  # nothing half taken
    pool.allocate("c", [PortUnit.TURN_CONNECTION])
    pool.release(first)
    assert pool.ports_in_use == 2 and pool.calls_refused == 1
    assert len(pool.leases) == 1


def test_release_returns_ports_fifo_and_rejects_double_release() -> None:
    pool = PortPool(PortPoolSettings(56000, 56015))  # 8 pairs
    a = pool.allocate("a", AV)
    b = pool.allocate("b", AV)
    pool.release(a)
    # FIFO: a's just-freed ports come back last, after none are left
    c = pool.allocate("c", AV)
    assert set(c.pairs) == set(a.pairs)
    with pytest.raises(ValueError):
        pool.release(a)
    forged = PortLease(b.lease_id, "b", b.units, c.pairs)
    with pytest.raises(ValueError):
        pool.release(forged)
    pool.release(b)
    pool.release(c)
    assert pool.ports_free == pool.total_ports == 16


def test_odd_start_and_bad_settings() -> None:
    pool = PortPool(PortPoolSettings(56001, 56006))
    lease = pool.allocate("x", [PortUnit.TURN_CONNECTION, PortUnit.TURN_CONNECTION])
    assert lease.ports == (56002, 56003, 56004, 56005)
    for first, last in ((56000, 55000), (80, 90), (56001, 56002)):
        with pytest.raises(ValueError):
            PortPoolSettings(first, last)
    with pytest.raises(ValueError):
        pool.allocate("nothing", [])


def test_allocate_and_free_cost_does_not_grow_with_pool_size() -> None:
    """O(1) per unit: a pool 30x larger does the same number of deque operations."""
    big = PortPool(PortPoolSettings(2000, 62000))
    leases = [big.allocate(str(i), AV) for i in range(3000)]
    for lease in leases:
        big.release(lease)
    assert big.ports_in_use == 0 and big.ports_free == big.total_ports == 60000


def test_default_pool_serves_100_audio_video_calls_with_turn_and_audio_only_takes_4() -> None:
    """Issue 12, defect 2: an audio-only call took 8 + 2 x 2 per TURN server, so 83 calls fit
    in 1000 ports. Now a stream takes 4 media ports, TURN client ports come from their own
    range (gateway b2bua.turn_client_ports, default 57002-57801)."""
    pool = PortPool(PortPoolSettings(56000, 57000, 57002, 57801))
    assert (pool.total_ports, pool.turn_ports) == (1000, 800)
    turn_servers = 2
    stream = [PortUnit.STREAM] + [PortUnit.TURN_CONNECTION] * turn_servers
    for call in range(100):
        for _ in ("audio", "video"):
            lease = pool.allocate(f"call-{call}", stream)
            assert all(56000 <= p <= 57000 for p in lease.pairs_for(0))
            assert all(57002 <= p <= 57801 for p in lease.pairs[2:])
    assert pool.ports_in_use == 800 and pool.turn_ports_in_use == 800
    audio_only = pool.allocate("voice", [PortUnit.STREAM])
    assert len(audio_only.ports) == 4 and pool.ports_in_use == 804
    with pytest.raises(PortPoolExhausted):  # TURN range full: refused whole
        pool.allocate("one-more", stream)
    assert pool.ports_in_use == 804


def test_turn_range_must_not_overlap_the_media_range() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        PortPoolSettings(56000, 57000, 56990, 57100)
    with pytest.raises(ValueError, match="both"):
        PortPoolSettings(56000, 57000, 57002, None)
