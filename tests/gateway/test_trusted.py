"""Trusted hosts: Microsoft-side requests from other addresses get 403 and are logged."""

from __future__ import annotations

import logging

import pytest

from gateway import config as cfg
from gateway.config import TrustedHost
from gateway.trusted import TrustedHosts, normalise_address


@pytest.fixture
def hosts() -> TrustedHosts:
    config = cfg.loads(
        """
        [b2bua]
        trusted_hosts = [
            { name = "fe01", address = "127.0.1.1" },
            { name = "director", address = "::1" },
        ]
        """
    )
    return TrustedHosts(config.b2bua.trusted_hosts)


def test_trusted_host_is_accepted(hosts: TrustedHosts) -> None:
    assert len(hosts) == 2
    found = hosts.lookup("127.0.1.1")
    assert found is not None and found.name == "fe01"
    assert hosts.check("127.0.1.1", "INVITE") is None
    assert hosts.check("0:0:0:0:0:0:0:1", "MESSAGE") is None  # same IPv6 address
    assert hosts.check("::ffff:127.0.1.1", "INVITE") is None  # IPv4-mapped


def test_untrusted_host_gets_403_with_reason_and_is_logged(
    hosts: TrustedHosts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.trusted"):
        refusal = hosts.check("127.0.9.9", "INVITE")
    assert refusal is not None
    assert refusal.status == 403
    assert refusal.reason == "Forbidden: 127.0.9.9 is not a trusted host"
    assert refusal.answer
    assert "127.0.9.9" in caplog.text and "INVITE" in caplog.text


def test_untrusted_ack_is_dropped_not_answered(hosts: TrustedHosts) -> None:
    refusal = hosts.check("127.0.1.2", "ACK")
    assert refusal is not None and not refusal.answer


def test_garbage_source_is_not_trusted(hosts: TrustedHosts) -> None:
    assert hosts.check("fe01.example.com", "INVITE") is not None
    assert hosts.check("", "INVITE") is not None
    assert normalise_address("not an ip") is None


def test_no_trusted_hosts_refuses_everything() -> None:
    empty = TrustedHosts([])
    assert empty.check("127.0.1.1", "INVITE") is not None
    assert TrustedHosts([TrustedHost("127.0.1.1")]).check("127.0.1.1", "INVITE") is None
