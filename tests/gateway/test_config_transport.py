"""``[transport]``: the SIP listener limits reach the gateway's stacks; the defaults are
the transport's own (which every lab role uses); 0 turns a limit off; bad values name
the key."""

from __future__ import annotations

import pytest

from gateway import config as cfg
from gateway.config import ConfigError, TransportLimitsConfig
from sip.transport import TransportSettings


def test_defaults_are_the_transports_own() -> None:
    settings = cfg.loads("").transport.settings()
    default = TransportSettings()
    for name in (
        "max_connections",
        "max_connections_per_source",
        "message_timeout",
        "idle_timeout",
        "max_unsent_bytes",
        "max_message_size",
        "tls_handshake_timeout",
    ):
        assert getattr(settings, name) == getattr(default, name), name
    assert TransportLimitsConfig().max_connections == 2048


def test_file_environment_and_flags_set_the_limits() -> None:
    config = cfg.loads(
        "[transport]\nmax_connections = 300\nmessage_timeout = 5.0\nmax_unsent_bytes = 0\n",
        environ={"GATEWAY_TRANSPORT_MAX_CONNECTIONS_PER_SOURCE": "30"},
        overrides=["transport.idle_timeout=0"],
    )
    settings = config.transport.settings(outbound_ports=None)
    assert settings.max_connections == 300
    assert settings.max_connections_per_source == 30
    assert settings.message_timeout == 5.0
    assert settings.max_unsent_bytes is None and settings.idle_timeout is None
    assert settings.outbound_ports is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[transport]\nmax_connections = -1\n", "transport.max_connections"),
        ("[transport]\nmax_message_size = 10\n", "transport.max_message_size"),
        ("[transport]\nmessage_timeout = 'soon'\n", "transport.message_timeout"),
        ("[transport]\nmax_conections = 5\n", "transport.max_conections"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg.loads(text)
    assert key in str(info.value)
