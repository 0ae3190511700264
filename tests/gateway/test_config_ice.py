"""``[b2bua] ice_stun_dialect``: the STUN dialect of the ICE legs toward Microsoft, from the
configuration file to the legs the runtime makes."""

from __future__ import annotations

import pytest

from gateway import config as cfg
from gateway.runtime import Gateway, RuntimeOptions
from media.ice_leg import IceLeg
from media.ms_stun import StunDialect


def leg_of(text: str) -> IceLeg:
    gateway = Gateway(cfg.loads(text), RuntimeOptions(management=False))
    return IceLeg("127.0.2.1", 0, gateway.media_settings.ice, ufrag="abcd", pwd="p" * 22)


def test_the_default_follows_the_peer() -> None:
    assert cfg.loads("").b2bua.ice_stun_dialect is cfg.IceStunDialect.AUTO
    policy = leg_of("").stun_policy
    assert policy.accept == frozenset(StunDialect)


@pytest.mark.parametrize("value, dialect", [("ms-ice2", StunDialect.MS_ICE2),
                                            ("rfc5389", StunDialect.RFC5389)])
def test_a_pinned_dialect_reaches_the_ice_legs(value: str, dialect: StunDialect) -> None:
    text = f'[b2bua]\nice_stun_dialect = "{value}"\n'
    assert cfg.loads(text).b2bua.ice_stun_dialect is cfg.IceStunDialect(value)
    policy = leg_of(text).stun_policy
    assert policy.accept == frozenset({dialect}) and policy.prefer is dialect


def test_an_unknown_dialect_names_the_key() -> None:
    with pytest.raises(cfg.ConfigError, match=r"b2bua\.ice_stun_dialect"):
        cfg.loads('[b2bua]\nice_stun_dialect = "ms-ice1"\n')
