"""Configuration: TOML loading, errors naming the key, defaults < file < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from turn.cli import build_parser, config_from_args
from turn.config import ConfigError, TurnConfig, load, parse_port_range


def test_defaults_match_the_spec() -> None:
    c = TurnConfig()
    assert c.ports == (3478, 3478) and c.relay_ports == (24000, 29999)
    assert (c.default_lifetime, c.max_lifetime, c.permission_lifetime, c.channel_lifetime) == (
        600,
        3600,
        300,
        600,
    )


def test_port_ranges() -> None:
    assert parse_port_range("3478-3483") == (3478, 3483)
    assert parse_port_range(3478) == (3478, 3478)
    with pytest.raises(ConfigError, match="relay_ports"):
        parse_port_range("30000-20000", "relay_ports")


def test_load_toml_with_turn_table(tmp_path: Path) -> None:
    path = tmp_path / "turn.toml"
    path.write_text(
        '[turn]\nlisten = "127.0.4.1"\nports = "3478-3483"\nallow_peers = ["127.0.0.0/8"]\n'
        'user_quota = 3\n[turn.users]\nGatewayB2BUA = "secret"\n'
    )
    c = load(path)
    assert c.listen == "127.0.4.1" and c.ports == (3478, 3483) and c.user_quota == 3
    assert c.users == (("GatewayB2BUA", "secret"),) and c.allow_peers == ("127.0.0.0/8",)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('lisen = "127.0.0.1"\n', "lisen"),
        ('user_quota = "ten"\n', "user_quota"),
        ("udp = 1\n", "udp"),
        ('tcp = "yes"\n', "tcp"),
        ('listen = "not-an-ip"\n', "listen"),
        ('allow_peers = "127.0.0.0/8"\n', "allow_peers"),
        ("max_lifetime = 0\n", "max_lifetime"),
    ],
)
def test_bad_keys_and_types_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "turn.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load(path)


def test_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "turn.toml"
    path.write_text('realm = "file.example"\nports = 4000\n[users]\nalice = "a"\n')
    args = build_parser().parse_args(
        [
            "--config",
            str(path),
            "--ports",
            "5000-5001",
            "--user",
            "bob:b",
            "--allow-peer",
            "127.0.0.0/8",
        ]
    )
    c = config_from_args(args)
    assert c.realm == "file.example"  # from the file
    assert c.ports == (5000, 5001)  # flag wins
    assert dict(c.users) == {"alice": "a", "bob": "b"}
    assert c.allow_peers == ("127.0.0.0/8",)
    with pytest.raises(ConfigError, match="--user"):
        config_from_args(build_parser().parse_args(["--user", "nopassword"]))
