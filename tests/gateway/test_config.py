"""Gateway configuration: defaults, the lab file, errors naming the key, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as cfg
from gateway.addresses import HostPort, parse_host_port, parse_transport_address
from gateway.config import (
    MICROSOFT_ZONE,
    ConfigError,
    Encryption,
    GatewayConfig,
    OnMatch,
    PatternBehavior,
    RuleMode,
    RuleProtocol,
    TrustedHostType,
    UnknownKeyError,
)
from sip.port_range import PortRange
from sip.transport import Transport, TransportAddress

DATA = Path(__file__).parent.parent / "data" / "gateway"
DEFAULT_TOML = Path(cfg.__file__).with_name("default.toml")
BAD_FILES = sorted(DATA.glob("bad_*.toml"))


def error_of(text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        cfg.loads(text, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# -- defaults ------------------------------------------------------------------------------


def test_defaults_follow_the_product() -> None:
    config = cfg.loads("")
    b2bua = config.b2bua
    assert b2bua.listen == TransportAddress(Transport.TLS, "127.0.0.1", 65072)
    assert b2bua.ms_destination.transport is Transport.TLS
    assert b2bua.ms_destination.port == 5061
    assert b2bua.encryption is Encryption.REQUIRED
    assert b2bua.max_calls == 100
    assert b2bua.media_ports == PortRange(56000, 57000)
    assert len(b2bua.media_ports) == 1001
    assert b2bua.rdp_tcp_ports == PortRange(6000, 6099)
    assert b2bua.rdp_udp_ports == PortRange(6100, 6199)
    assert b2bua.offer_turn is False
    assert b2bua.broker.enabled is False and b2bua.broker.port == 5061
    assert config.system.management == HostPort("127.0.0.1", 9090)
    assert config.system.outbound_ports == PortRange(25000, 29999)
    assert config.system.cluster_fqdn == "exp01.video.example.com"
    assert {a.port for a in config.video.listen} == {5060, 5061}
    assert config.zones == () and config.search_rules == () and config.transforms == ()


def test_item_defaults() -> None:
    config = cfg.loads(
        """
        [b2bua]
        trusted_hosts = [{ address = "127.0.1.1" }]
        turn_servers = [{ address = "127.0.4.1", username = "GatewayB2BUA", password = "x" }]
        [[zones]]
        name = "tcp zone"
        peers = ["127.0.3.1"]
        [[zones]]
        name = "tls zone"
        peers = ["127.0.3.2"]
        transport = "tls"
        [[search_rules]]
        name = "r"
        pattern = "3"
        target = "tcp zone"
        [[transforms]]
        pattern = "x"
        """
    )
    host = config.b2bua.trusted_hosts[0]
    assert (host.name, host.type) == ("127.0.1.1", TrustedHostType.MICROSOFT)
    assert config.b2bua.turn_servers[0].port == 3478
    tcp, tls = config.zones
    assert (tcp.transport, tcp.port, tcp.hop_count, tcp.monitor) == (Transport.TCP, 5060, 15, True)
    assert (tls.transport, tls.port) == (Transport.TLS, 5061)
    assert tcp.monitor_interval == 30.0
    rule = config.search_rules[0]
    assert rule.priority == 100
    assert rule.source == "any"
    assert rule.protocol is RuleProtocol.ANY
    assert rule.mode is RuleMode.ALIAS_PATTERN_MATCH
    assert rule.behavior is PatternBehavior.LEAVE
    assert rule.on_match is OnMatch.STOP
    assert rule.enabled is True
    transform = config.transforms[0]
    assert transform.enabled and transform.behavior is PatternBehavior.LEAVE


# -- the lab file --------------------------------------------------------------------------


def test_shipped_default_is_the_lab_example() -> None:
    shipped = cfg.load(DEFAULT_TOML, environ={})
    assert shipped == cfg.load(DATA / "lab.toml", environ={})
    assert shipped.system.host_name == "exp01"
    assert shipped.system.cluster_fqdn == "lyncexp.video.example.com"
    assert shipped.system.certs == "certs/lab"
    assert shipped.system.management == HostPort("127.0.0.1", 9090)
    assert shipped.b2bua.listen == TransportAddress(Transport.TLS, "127.0.2.1", 65072)
    assert shipped.b2bua.ms_destination == TransportAddress(Transport.TLS, "127.0.1.1", 5061)
    assert shipped.b2bua.trusted_hosts[0].address == "127.0.1.1"
    assert shipped.b2bua.turn_servers[0].username == "GatewayB2BUA"
    assert shipped.video.listen == (
        TransportAddress(Transport.UDP, "127.0.2.1", 5060),
        TransportAddress(Transport.TCP, "127.0.2.1", 5060),
        TransportAddress(Transport.TLS, "127.0.2.1", 5061),
    )
    zone = shipped.zones[0]
    assert zone.name == "CUCM Neighbor"
    assert zone.destinations() == (TransportAddress(Transport.TLS, "127.0.3.1", 5061),)
    assert zone.tls_name == "cucm.video.example.com"
    assert shipped.b2bua.ms_tls_name == "fe.example.com"
    assert shipped.b2bua.allowed_networks == ("127.0.0.0/8", "::1/128")
    assert [r.target for r in shipped.search_rules] == [MICROSOFT_ZONE, "CUCM Neighbor"]
    assert shipped.search_rules[1].pattern == r"(3\d{3})@video\.example\.com"
    assert shipped.transforms[0].replace == r"\1"
    assert shipped.warnings == ()


def test_every_address_in_the_lab_file_is_loopback() -> None:
    shipped = cfg.load(DEFAULT_TOML, environ={})
    hosts = [shipped.b2bua.listen.host, shipped.b2bua.ms_destination.host]
    hosts += [a.host for a in shipped.video.listen]
    hosts += [h.address for h in shipped.b2bua.trusted_hosts]
    hosts += [t.address for t in shipped.b2bua.turn_servers]
    hosts += [p for z in shipped.zones for p in z.peers]
    hosts.append(shipped.system.management.host)
    assert all(host.startswith("127.") for host in hosts), hosts


# -- errors name the key -------------------------------------------------------------------


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_files_name_the_key(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# error: ")
    with pytest.raises(ConfigError) as info:
        cfg.load(path, environ={})
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[b2bua]\nmax_calls = "100"', "b2bua.max_calls: expected integer, got string"),
        ("[b2bua]\nmax_calls = true", "b2bua.max_calls: expected integer, got boolean"),
        ("[b2bua]\nmax_calls = 0", "b2bua.max_calls: must be at least 1, got 0"),
        ("[b2bua]\noffer_turn = 1", "b2bua.offer_turn: expected boolean, got integer"),
        ("[b2bua]\nlisten = 65072", "b2bua.listen: expected string, got integer"),
        ('[b2bua]\nlisten = "tls:127.0.2.1:70000"', "b2bua.listen: port 70000 out of range"),
        ('[b2bua]\nlisten = "sctp:127.0.2.1:1"', "b2bua.listen: invalid address"),
        ('[b2bua]\nmedia_ports = "57000-56000"', "b2bua.media_ports: invalid port range"),
        ('[b2bua]\nmedia_ports = "lots"', "b2bua.media_ports: invalid port range"),
        ("[b2bua]\nrdp_udp_ports = [1]", "b2bua.rdp_udp_ports: expected string, got array"),
        ('[b2bua]\nencryption = "maybe"', "b2bua.encryption: expected one of"),
        ("[b2bua]\noffer_turn = true", "b2bua.offer_turn: true but b2bua.turn_servers is empty"),
        ('[b2bua]\ntrusted_hosts = "127.0.1.1"', "b2bua.trusted_hosts: expected array, got string"),
        ("[b2bua]\ntrusted_hosts = [1]", "b2bua.trusted_hosts[0]: expected table, got integer"),
        ('[b2bua]\ntrusted_hosts = [{ name = "fe" }]', "b2bua.trusted_hosts[0].address: required"),
        (
            '[b2bua]\ntrusted_hosts = [{ address = "fe01.example.com" }]',
            "b2bua.trusted_hosts[0].address: not an IP address",
        ),
        (
            '[b2bua]\ntrusted_hosts = [{ address = "127.0.1.1", type = "cucm" }]',
            "b2bua.trusted_hosts[0].type: expected one of 'microsoft'",
        ),
        (
            '[b2bua]\ntrusted_hosts = [{ address = "127.0.1.1" }, { address = "127.0.1.1" }]',
            "b2bua.trusted_hosts[1].address: 127.0.1.1 is listed twice",
        ),
        (
            '[b2bua]\nturn_servers = [{ address = "127.0.4.1", username = "u" }]',
            "b2bua.turn_servers[0].password: required key is missing",
        ),
        (
            '[b2bua]\nturn_servers = [{ address = "127.0.4.1", username = "u", password = "p",'
            " port = 0 }]",
            "b2bua.turn_servers[0].port: must be 1 to 65535",
        ),
        ("[b2bua.broker]\nenabled = true", "b2bua.broker.destinations: the broker is enabled"),
        ("[b2bua.broker]\nport = 'x'", "b2bua.broker.port: expected integer, got string"),
        ("[b2bua.broker]\nenable = true", "unknown key 'b2bua.broker.enable'"),
        ('[system]\nmanagement = "127.0.0.1"', "system.management: invalid host:port"),
        ('[system]\nhost_name = ""', "system.host_name: must not be empty"),
        ('[system]\ndomain = "bad domain"', "system.domain: invalid host name"),
        ("[video]\nlisten = []", "video.listen: at least one listener is needed"),
        ('[video]\nlisten = ["127.0.2.1:5060"]', "video.listen[0]: invalid address"),
        ("[b2bua]\nmax_call = 1", "unknown key 'b2bua.max_call'"),
        ("[b2bu]\nmax_calls = 1", "unknown key 'b2bu'"),
        ("b2bua = 1", "b2bua: expected table, got integer"),
        ('zones = "x"', "zones: expected array of tables, got string"),
        ('[[zones]]\npeers = ["127.0.3.1"]', "zones[0].name: required key is missing"),
        ('[[zones]]\nname = "z"', "zones[0].peers: required key is missing"),
        ('[[zones]]\nname = "z"\npeers = []', "zones[0].peers: a zone needs 1 to 6"),
        ('[[zones]]\nname = "z"\npeers = ["127.0.3.1", "127.0.3.1"]', "zones[0].peers: a peer"),
        ('[[zones]]\nname = "z"\npeers = ["300.1.1.1"]', "zones[0].peers[0]: invalid IPv4"),
        ('[[zones]]\nname = "z"\npeers = [1]', "zones[0].peers[0]: expected string, got integer"),
        (
            '[[zones]]\nname = "z"\npeers = ["127.0.3.1"]\ntransport = "sctp"',
            "zones[0].transport: expected one of 'udp', 'tcp', 'tls', got 'sctp'",
        ),
        ('[[zones]]\nname = "z"\npeers = ["127.0.3.1"]\nhop_count = 0', "zones[0].hop_count"),
        ('[[zones]]\nname = "z"\npeers = ["127.0.3.1"]\nport = 65536', "zones[0].port: must be"),
        ('[[zones]]\nname = "z"\npeers = ["127.0.3.1"]\ntype = "dns"', "zones[0].type"),
        (
            '[[zones]]\nname = "z"\npeers = ["127.0.3.1"]\nmonitor = "yes"',
            "zones[0].monitor: expected boolean, got string",
        ),
        (
            f'[[zones]]\nname = "{MICROSOFT_ZONE}"\npeers = ["127.0.3.1"]',
            "zones[0].name: 'To Microsoft destination via B2BUA' is the automatic zone",
        ),
        ('[[search_rules]]\nname = "r"\npattern = "x"', "search_rules[0].target: required"),
        (
            f'[[search_rules]]\nname = "r"\ntarget = "{MICROSOFT_ZONE}"',
            "search_rules[0].pattern: must not be empty in rule 'r'",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            "priority = 0",
            "search_rules[0].priority: must be 1 to 65534, got 0",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            'pattern_type = "glob"',
            "search_rules[0].pattern_type: expected one of 'regex', 'prefix', 'suffix', 'exact'",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            'behavior = "replace"',
            "search_rules[0].replace: required in rule 'r' (behavior is 'replace')",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            'pattern_type = "regex"\nbehavior = "strip"',
            "search_rules[0].behavior: 'strip' needs pattern_type prefix or suffix in rule 'r'",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "(x)"\ntarget = "{MICROSOFT_ZONE}"\n'
            'pattern_type = "regex"\nbehavior = "replace"\nreplace = \'\\2\'',
            "search_rules[0].replace: invalid replacement in rule 'r'",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            'on_match = "halt"',
            "search_rules[0].on_match: expected one of 'stop', 'continue'",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            'source = "Nowhere"',
            "search_rules[0].source: rule 'r': source must be 'any' or a zone name",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            f'[[search_rules]]\nname = "r"\npattern = "y"\ntarget = "{MICROSOFT_ZONE}"',
            "search_rules[1].name: duplicate search rule name 'r'",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\n'
            "enabled = 1",
            "search_rules[0].enabled: expected boolean, got integer",
        ),
        (
            f'[[search_rules]]\nname = "r"\npattern = "x"\ntarget = "{MICROSOFT_ZONE}"\ncolour = 1',
            "unknown key 'search_rules[0].colour'",
        ),
        ('[[transforms]]\npattern_type = "regex"\npattern = "[x"', "transforms[0].pattern: inval"),
        ("[[transforms]]\npriority = 5", "transforms[0].pattern: required key is missing"),
        ('[[transforms]]\npattern = "x"\nreplace = 5', "transforms[0].replace: expected string"),
    ],
)
def test_error_names_the_key(text: str, expected: str) -> None:
    assert expected in error_of(text, environ={})


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(UnknownKeyError) as info:
        cfg.loads("[b2bua]\nmax_call = 1")
    assert info.value.key == "b2bua.max_call"
    assert str(info.value) == "unknown key 'b2bua.max_call' (did you mean 'max_calls'?)"


def test_regex_error_names_the_rule_and_the_key() -> None:
    message = error_of((DATA / "bad_regex.toml").read_text())
    assert message.startswith("search_rules[0].pattern: ")
    assert "'Broken rule'" in message


def test_dataclasses_validate_when_built_directly() -> None:
    with pytest.raises(ConfigError, match="max_calls"):
        cfg.B2buaConfig(max_calls=-1)
    with pytest.raises(ConfigError, match="peers"):
        cfg.ZoneConfig("z", peers=())


def test_config_is_frozen() -> None:
    config = cfg.loads("")
    with pytest.raises(AttributeError):
        config.b2bua.max_calls = 5  # type: ignore[misc]


def test_enum_values_are_case_and_space_insensitive() -> None:
    config = cfg.loads(
        f"""
        [b2bua]
        encryption = "Supported"
        [[search_rules]]
        name = "all"
        mode = "Any  Alias"
        target = "{MICROSOFT_ZONE}"
        """
    )
    assert config.b2bua.encryption is Encryption.SUPPORTED
    assert config.search_rules[0].mode is RuleMode.ANY_ALIAS


# -- warnings ------------------------------------------------------------------------------


def test_more_than_25_trusted_hosts_is_an_alarm_not_an_error() -> None:
    def hosts(count: int) -> str:
        items = ", ".join(f'{{ address = "127.0.1.{i + 1}" }}' for i in range(count))
        return f"[b2bua]\ntrusted_hosts = [{items}]"

    assert cfg.loads(hosts(25)).warnings == ()
    warnings = cfg.loads(hosts(26)).warnings
    assert len(warnings) == 1
    assert warnings[0].startswith("b2bua.trusted_hosts: 26 trusted hosts exceed")


def test_required_encryption_over_tcp_warns() -> None:
    text = '[b2bua]\nms_destination = "tcp:127.0.1.1:5060"\ntrusted_hosts = [{address="127.0.1.1"}]'
    assert any("b2bua.encryption" in w for w in cfg.loads(text).warnings)


# -- precedence: defaults < file < environment < flags -------------------------------------


def test_precedence() -> None:
    text = "[b2bua]\nmax_calls = 50"
    assert cfg.loads("").b2bua.max_calls == 100
    assert cfg.loads(text).b2bua.max_calls == 50
    env = {"GATEWAY_B2BUA_MAX_CALLS": "60"}
    assert cfg.loads(text, environ=env).b2bua.max_calls == 60
    assert cfg.loads(text, environ=env, overrides=["b2bua.max_calls=70"]).b2bua.max_calls == 70


def test_environment_values_take_the_field_type() -> None:
    config = cfg.loads(
        "",
        environ={
            "GATEWAY_B2BUA_LISTEN": "tls:127.0.2.9:65072",
            "GATEWAY_B2BUA_OFFER_TURN": "false",
            "GATEWAY_B2BUA_ENCRYPTION": "off",
            "GATEWAY_B2BUA_MEDIA_PORTS": "40000-40100",
            "GATEWAY_SYSTEM_HOST_NAME": "exp02",
            "GATEWAY_SYSTEM_MANAGEMENT": "127.0.0.2:9191",
            "GATEWAY_SYSTEM_DRAIN_TIMEOUT": "2",
            "GATEWAY_OTHER_THING": "ignored",
            "PATH": "/usr/bin",
        },
    )
    assert config.b2bua.listen == TransportAddress(Transport.TLS, "127.0.2.9", 65072)
    assert config.b2bua.encryption is Encryption.OFF
    assert config.b2bua.media_ports == PortRange(40000, 40100)
    assert config.system.host_name == "exp02"
    assert config.system.management == HostPort("127.0.0.2", 9191)
    assert config.system.drain_timeout == 2.0


def test_environment_errors_name_the_variable() -> None:
    message = error_of("", environ={"GATEWAY_B2BUA_MAX_CALLS": "lots"})
    assert message == (
        "b2bua.max_calls: expected integer, got string (from GATEWAY_B2BUA_MAX_CALLS)"
    )
    message = error_of("", environ={"GATEWAY_B2BUA_MAX_CALL": "5"})
    assert message == "unknown key 'b2bua.max_call' (from GATEWAY_B2BUA_MAX_CALL)"


def test_flag_overrides() -> None:
    config = cfg.loads(
        "", overrides=["b2bua.broker.enabled=true", 'b2bua.broker.destinations=["127.0.5.1"]']
    )
    assert config.b2bua.broker.enabled
    assert config.b2bua.broker.targets() == (HostPort("127.0.5.1", 5061),)
    assert "expected section.key=value" in error_of("", overrides=["b2bua.max_calls"])
    assert "unknown key 'b2bua.nope'" in error_of("", overrides=["b2bua.nope=1"])
    only = "only [system], [b2bua], [video] and [transport]"
    assert only in error_of("", overrides=["zones.name=x"])
    message = error_of("", overrides=["b2bua.max_calls=0"])
    assert message == "b2bua.max_calls: must be at least 1, got 0 (from --set b2bua.max_calls)"


def test_load_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        cfg.load(DATA / "does-not-exist.toml")


def test_gateway_config_constructed_in_code() -> None:
    zone = cfg.ZoneConfig("CUCM", peers=("127.0.3.1",))
    rule = cfg.SearchRuleConfig("r", target="CUCM", pattern="3")
    config = GatewayConfig(zones=(zone,), search_rules=(rule,))
    assert config.zone("CUCM") is zone and config.zone("x") is None
    with pytest.raises(ConfigError, match=r"search_rules\[0\].target"):
        GatewayConfig(search_rules=(rule,))


# -- address strings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls:127.0.2.1:65072", TransportAddress(Transport.TLS, "127.0.2.1", 65072)),
        ("UDP:127.0.2.1:5060", TransportAddress(Transport.UDP, "127.0.2.1", 5060)),
        ("tcp:127.0.2.1", TransportAddress(Transport.TCP, "127.0.2.1", 5060)),
        ("tls:127.0.2.1", TransportAddress(Transport.TLS, "127.0.2.1", 5061)),
        ("tls:[::1]:65072", TransportAddress(Transport.TLS, "::1", 65072)),
        ("udp:::1", TransportAddress(Transport.UDP, "::1", 5060)),
        ("tls:FE01.Example.com:5061", TransportAddress(Transport.TLS, "fe01.example.com", 5061)),
    ],
)
def test_transport_address(text: str, expected: TransportAddress) -> None:
    assert parse_transport_address(text) == expected


def test_transport_address_defaults() -> None:
    parsed = parse_transport_address("127.0.1.1", default_transport=Transport.TLS, default_port=1)
    assert parsed == TransportAddress(Transport.TLS, "127.0.1.1", 1)


@pytest.mark.parametrize(
    "text",
    ["", "tls:", "tls:127.0.2.1:0", "tls:127.0.2.1:x", "ws:127.0.0.1:80", "127.0.0.1", "a b"],
)
def test_bad_transport_address(text: str) -> None:
    with pytest.raises(ValueError):
        parse_transport_address(text)


def test_host_port() -> None:
    assert parse_host_port("127.0.0.1:9090") == HostPort("127.0.0.1", 9090)
    assert str(parse_host_port("[::1]:9090")) == "[::1]:9090"
    assert parse_host_port("localhost", default_port=1) == HostPort("localhost", 1)
    with pytest.raises(ValueError, match="no transport"):
        parse_host_port("tcp:127.0.0.1:9090")


# -- off-loopback settings: allowed_networks, ms_tls_name, zone tls_name -------------------


def test_allowed_networks_default_to_loopback_and_are_normalised() -> None:
    assert cfg.loads("").b2bua.allowed_networks == ("127.0.0.0/8", "::1/128")
    config = cfg.loads('[b2bua]\nallowed_networks = ["172.28.1.0/24", " 10.201.0.0/16",'
                       ' "FD00::/8"]\n')
    assert config.b2bua.allowed_networks == ("172.28.1.0/24", "10.201.0.0/16", "fd00::/8")
    assert not any("allowed_networks" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["127.0.0.0/8", "10.0.0.1/8"]', "b2bua.allowed_networks[1]: not a network in CIDR"
                                          " form: 10.0.0.1/8 has host bits set"),
        ('["lab"]', "b2bua.allowed_networks[0]: not a network in CIDR form"),
        ('["127.0.0.0/33"]', "b2bua.allowed_networks[0]"),
        ("[]", "b2bua.allowed_networks: empty"),
        ('"10.0.0.0/8"', "b2bua.allowed_networks: expected array, got string"),
        ("[8]", "b2bua.allowed_networks[0]: expected string, got integer"),
    ],
)
def test_bad_allowed_networks_name_the_item(value: str, expected: str) -> None:
    assert error_of(f"[b2bua]\nallowed_networks = {value}\n").startswith(expected)


def test_public_allowed_networks_are_an_alarm() -> None:
    config = cfg.loads('[b2bua]\nallowed_networks = ["127.0.0.0/8", "0.0.0.0/0", "8.8.8.0/24"]')
    alarms = [w for w in config.warnings if w.startswith("b2bua.allowed_networks")]
    assert [w.split(":")[0] for w in alarms] == ["b2bua.allowed_networks[1]",
                                                 "b2bua.allowed_networks[2]"]


def test_allowed_networks_from_set_and_environment() -> None:
    config = cfg.loads("", overrides=['b2bua.allowed_networks=["10.201.0.0/16"]'])
    assert config.b2bua.allowed_networks == ("10.201.0.0/16",)
    env = {"GATEWAY_B2BUA_ALLOWED_NETWORKS": '["172.28.0.0/16", "bad"]'}
    assert error_of("", environ=env) == (
        "b2bua.allowed_networks[1]: not a network in CIDR form: 'bad' does not appear to be"
        " an IPv4 or IPv6 network (from GATEWAY_B2BUA_ALLOWED_NETWORKS)")


def test_tls_names() -> None:
    assert cfg.loads("").b2bua.ms_tls_name is None
    text = ('[b2bua]\nms_tls_name = "FE.Example.com"\n[[zones]]\nname = "CUCM"\n'
            'peers = ["127.0.3.1"]\ntransport = "tls"\ntls_name = "cucm.video.example.com"\n'
            '[[zones]]\nname = "Other"\npeers = ["127.0.3.9"]\n')
    config = cfg.loads(text)
    assert config.b2bua.ms_tls_name == "fe.example.com"
    assert [z.tls_name for z in config.zones] == ["cucm.video.example.com", None]
    assert config.zones[0].port == 5061
    assert cfg.loads("", overrides=["b2bua.ms_tls_name=pool.example.com"]).b2bua.ms_tls_name \
        == "pool.example.com"
    assert error_of('[b2bua]\nms_tls_name = ""').startswith("b2bua.ms_tls_name: must not be empty")
    assert error_of('[b2bua]\nms_tls_name = "fe example"').startswith(
        "b2bua.ms_tls_name: invalid host name")
    assert error_of('[[zones]]\nname = "Z"\npeers = ["127.0.3.1"]\ntls_name = 5').startswith(
        "zones[0].tls_name: expected string, got integer")
    assert error_of('[[zones]]\nname = "Z"\npeers = ["127.0.3.1"]\ntls_name = "a..b"').startswith(
        "zones[0].tls_name: invalid host name")


def test_tls_names_without_tls_are_an_alarm() -> None:
    text = ('[b2bua]\nms_destination = "tcp:127.0.1.1:5060"\nms_tls_name = "fe.example.com"\n'
            '[[zones]]\nname = "CUCM"\npeers = ["127.0.3.1"]\ntls_name = "cucm.example.com"\n')
    warnings = cfg.loads(text).warnings
    assert any(w.startswith("b2bua.ms_tls_name: set but") for w in warnings)
    assert any(w.startswith("zones[0].tls_name: set but zone 'CUCM' is not TLS") for w in warnings)


def test_media_latching_keys() -> None:
    """Issue 12: latching is chosen per B2BUA, overridden per zone; safe default STRICT."""
    config = cfg.loads("")
    assert config.b2bua.media_latching is cfg.MediaLatching.STRICT
    assert config.b2bua.media_relatch_after == 5.0
    assert config.b2bua.turn_client_ports is None
    ranged = cfg.loads('[b2bua]\nturn_client_ports = "57002-57801"')
    assert ranged.b2bua.turn_client_ports == PortRange(57002, 57801)
    config = cfg.loads(
        '[b2bua]\nmedia_latching = "nat"\nmedia_relatch_after = 2.5\n'
        '[[zones]]\nname = "CUCM"\npeers = ["127.0.3.1"]\nmedia_latching = "strict"\n'
        '[[zones]]\nname = "Other"\npeers = ["127.0.3.2"]\n'
    )
    assert config.b2bua.media_latching is cfg.MediaLatching.NAT
    assert config.b2bua.media_relatch_after == 2.5
    assert [z.media_latching for z in config.zones] == [cfg.MediaLatching.STRICT, None]


@pytest.mark.parametrize("text, expected", [
    ('[b2bua]\nmedia_latching = "follow"', "b2bua.media_latching"),
    ("[b2bua]\nmedia_relatch_after = 0", "b2bua.media_relatch_after"),
    ('[b2bua]\nturn_client_ports = "56500-57500"', "b2bua.turn_client_ports"),
    ('[[zones]]\nname = "Z"\npeers = ["127.0.3.1"]\nmedia_latching = "any"',
     "media_latching"),
])
def test_media_latching_errors_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(cfg.ConfigError, match=expected.replace(".", r"\.")):
        cfg.loads(text)
