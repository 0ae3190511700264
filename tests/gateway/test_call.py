"""The From rewrite of calls toward Microsoft, without sockets."""

from __future__ import annotations

import pytest

from gateway.calls.refusals import rewrite_ip_from
from sip.headers import Address


@pytest.mark.parametrize(("text", "expected"), [
    ("<sip:10.10.2.1>", "sip:10.10.2.1@video.example.com"),
    ("<sip:10.10.2.1:5060;transport=tcp>;tag=x", "sip:10.10.2.1@video.example.com"),
    # ":" is not unreserved in a user part (RFC 3261 §25.1): escaped.
    ('"Room" <sip:[2001:db8::1]>', "sip:2001%3Adb8%3A%3A1@video.example.com"),
    ("<sip:3001@10.10.2.1>", "sip:3001@10.10.2.1"),  # has a user: left alone
    ("<sip:cucm.video.example.com>", "sip:cucm.video.example.com"),  # a name: routable
])
def test_from_holding_only_an_ip_address_gets_a_user_at_our_domain(
        text: str, expected: str) -> None:
    address = Address.parse(text)
    rewritten = rewrite_ip_from(address, "video.example.com")
    assert str(rewritten.uri) == expected
    assert rewritten.tag == address.tag and rewritten.display_name == address.display_name
