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


def test_set_overrides_the_file_and_flags_override_set(tmp_path: Path) -> None:
    path = tmp_path / "turn.toml"
    path.write_text('realm = "file.example"\nports = 4000\n[users]\nalice = "a"\n')
    c = load(path, overrides=["realm=set.example", 'allow_peers=["10.201.0.0/16"]',
                              "users.bob=b", "udp=false", "relay_ports=30000-30099"])
    assert c.realm == "set.example" and c.ports == (4000, 4000)
    assert c.allow_peers == ("10.201.0.0/16",) and dict(c.users) == {"alice": "a", "bob": "b"}
    assert c.udp is False and c.relay_ports == (30000, 30099)
    args = build_parser().parse_args(["--config", str(path), "--set", "ports=4100",
                                      "--ports", "5000"])
    assert config_from_args(args).ports == (5000, 5000)  # flag > --set > file
    assert load(None, overrides=["listen=127.0.4.1"]).listen == "127.0.4.1"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("relay_portz=1", "relay_portz.*from --set relay_portz"),
        ("user_quota=many", "user_quota.*from --set user_quota"),
        ('allow_peers=["not a cidr"]', "allow_peers.*from --set allow_peers"),
        ("listen=example.com", "listen.*from --set listen"),
        ("realm.x=1", "realm.x"),
        ("users=bob", "users"),
        ("no-equals-sign", "--set: expected key=value"),
    ],
)
def test_bad_set_names_the_key(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, overrides=[item])


def test_summary_names_what_was_configured() -> None:
    c = TurnConfig(listen="127.0.4.1", ports=(3478, 3483), external_address="127.0.4.2",
                   users=(("GatewayB2BUA", "secret"),), allow_peers=("127.0.0.0/8",), tcp=False)
    text = c.summary()
    assert text.startswith("TURN 127.0.4.1:3478-3483 udp, relays 127.0.4.1:24000-29999")
    assert "advertised as 127.0.4.2" in text and "1 user," in text and "127.0.0.0/8" in text
    assert "secret" not in text
