"""Outbound source port range: parsing and the round-robin walk (sans-IO)."""

from __future__ import annotations

import pytest

from sip.port_range import DEFAULT_OUTBOUND_PORTS, PortCursor, PortRange


def test_default_is_the_gateway_range() -> None:
    assert (DEFAULT_OUTBOUND_PORTS.first, DEFAULT_OUTBOUND_PORTS.last) == (25000, 29999)
    assert len(DEFAULT_OUTBOUND_PORTS) == 5000
    assert 25000 in DEFAULT_OUTBOUND_PORTS and 29999 in DEFAULT_OUTBOUND_PORTS
    assert 24999 not in DEFAULT_OUTBOUND_PORTS and 30000 not in DEFAULT_OUTBOUND_PORTS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("25000-29999", PortRange(25000, 29999)),
        (" 5060 - 5061 ", PortRange(5060, 5061)),
        ("5060", PortRange(5060, 5060)),
    ],
)
def test_parse(text: str, expected: PortRange) -> None:
    assert PortRange.parse(text) == expected
    assert PortRange.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "abc", "5061-5060", "0-10", "60000-70000", "1-2-3"])
def test_parse_rejects_bad_ranges(text: str) -> None:
    with pytest.raises(ValueError):
        PortRange.parse(text)


def test_walk_wraps_around_and_resumes_after_the_port_taken() -> None:
    cursor = PortCursor(PortRange(100, 103), start=102)
    walk = cursor.candidates()
    assert next(walk) == 102
    assert next(walk) == 103  # 102 was busy: skipped
    # 103 taken: the next walk starts after it, wrapping to the first port.
    assert cursor.next_port == 100
    assert list(cursor.candidates()) == [100, 101, 102, 103]
    assert cursor.next_port == 100


def test_walk_offers_each_port_once() -> None:
    cursor = PortCursor(PortRange(7, 9))
    assert list(cursor.candidates()) == [7, 8, 9]
    single = PortCursor(PortRange(5, 5))
    assert list(single.candidates()) == [5]
    assert list(single.candidates()) == [5]


def test_start_outside_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        PortCursor(PortRange(10, 20), start=21)
