"""The routing text the tests write into their configs is the shipped lab routing."""

from __future__ import annotations

from gateway.config import load, loads
from gateway.run import DEFAULT_CONFIG
from tests.gateway.lab_routing import LAB_SEARCH_RULES, LAB_TRANSFORMS


def test_lab_routing_matches_the_shipped_default() -> None:
    shipped = load(DEFAULT_CONFIG)
    zones = '\n[[zones]]\nname = "CUCM Neighbor"\npeers = ["127.0.3.1"]\n'
    written = loads(zones + LAB_SEARCH_RULES + LAB_TRANSFORMS)
    assert written.search_rules == shipped.search_rules
    assert written.transforms == shipped.transforms
