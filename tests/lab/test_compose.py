"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the file parses,
every service runs an existing `gateway <role>` whose config exists and passes
`--check-config`, listeners sit on the service's own addresses, the exposed ports are the
spec's (SPEC §2) and agree with the configs, a `certs` one-shot runs first, every
long-running service has a real health probe (`gateway probe` over its transport, parties
by their registration), the demo one-shot reaches every party's control port, the image is
layered (pinned dependencies before the source, non-root) and no key can reach it.
tests/lab/test_docker.py runs the same file on a real engine."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import COMMANDS
from gateway.cli import main as gateway_main
from tests.peers.procs import gateway_executable
from turn.config import load as load_turn_config

yaml = pytest.importorskip("yaml", reason="PyYAML (test extra) parses docker-compose.yml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
APP_DIR = "/app"  # the image's working directory: config paths are relative to the repo

# SPEC §2 (and docs/lab-topology.md): what each host must expose.
SPEC_PORTS: dict[str, set[str]] = {
    "gateway": {"65072/tcp", "5060/udp", "5060/tcp", "5061/tcp", "56000-57000/udp"},
    "turn": {"3478/udp", "3478/tcp", "24000-29999/udp", "24000-29999/tcp"},
    "lync-fe": {"5061/tcp"},
    "lync-edge": {"5061/tcp", "443/tcp", "3478/udp", "3478/tcp", "50000-59999/udp"},
    "cucm": {"5060/udp", "5060/tcp", "5061/tcp"},
    "imp": {"5060/tcp", "5061/tcp"},
    "endpoint-3001": {"5060/udp", "5060/tcp", "5061/tcp", "16384-32766/udp"},
    "endpoint-3002": {"5060/udp", "5060/tcp", "5061/tcp", "16384-32766/udp"},
}
SUBNETS = {"internal", "dmz", "external", "video"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


ONE_SHOTS = {"certs", "demo"}


def roles(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every long-running service (all but the certs and demo one-shots)."""
    for name, service in compose["services"].items():
        if name not in ONE_SHOTS:
            yield name, service


IPADDR = ["python", "-m", "lab.ipaddr"]
"""The wrapper that gives the Edge its second external address, then execs its role."""


def gateway_command(command: list[str]) -> list[str]:
    """The `gateway ...` command a service runs (after lab.ipaddr's `--`, if wrapped)."""
    if command[:3] == IPADDR:
        return command[command.index("--") + 1:]
    return command


def config_path(service: dict[str, Any]) -> Path:
    command = gateway_command(service["command"])
    path = command[command.index("--config") + 1]
    return ROOT / str(path)


def addresses(service: dict[str, Any]) -> set[str]:
    """The service's network addresses, and the one lab.ipaddr adds (the A/V Edge's)."""
    found = {net["ipv4_address"] for net in service["networks"].values()}
    command = service.get("command") or []
    if command[:3] == IPADDR:
        found.add(command[command.index("--add") + 1].split("/")[0])
    return found


def test_services_are_the_lab_hosts(compose: dict[str, Any]) -> None:
    names = set(compose["services"])
    assert {"certs", "gateway", "turn", "lync-fe", "lync-edge", "cucm", "imp"} <= names
    assert any(n.startswith("lync-client") for n in names)
    assert any(n.startswith("endpoint") for n in names)
    assert set(compose["networks"]) == SUBNETS


def test_every_command_is_an_existing_gateway_role(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for name, service in compose["services"].items():
        command = service.get("entrypoint", service.get("command"))
        assert isinstance(command, list), f"{name}: command must be an exec-form list"
        command = gateway_command(command)
        assert command[0] == "gateway", f"{name}: {command}"
        assert command[1] in COMMANDS, f"{name}: unknown role {command[1]!r}"
        used.add(command[1])
    # The real executable, not just the table: each role's --help runs and exits 0.
    exe = gateway_executable()
    procs = {role: subprocess.Popen([exe, role, "--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for role in sorted(used)}
    for role, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"gateway {role} --help: {err.decode()}"
        assert b"usage: gateway" in out


def test_every_config_exists_and_passes_check_config(
    compose: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    for name, service in roles(compose):
        role = gateway_command(service["command"])[1]
        path = config_path(service)
        assert path.is_file(), f"{name}: {path} missing"
        assert service.get("working_dir") == APP_DIR
        status = gateway_main([role, "--check-config", str(path)])
        output = capsys.readouterr()
        assert status == 0, f"{name}: {role} --check-config {path}: {output.err}"


def test_a_broken_config_fails_the_check(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The check above can fail: an unknown key is refused by every role it uses."""
    for role, source in (("lync-fe", "lync-fe"), ("cucm", "cucm"), ("run", "gateway")):
        bad = tmp_path / f"{source}.toml"
        text = (ROOT / "lab/configs/docker" / f"{source}.toml").read_text()
        bad.write_text("no_such_key = 1\n" + text)
        assert gateway_main([role, "--check-config", str(bad)]) != 0, role
    capsys.readouterr()


def test_certs_one_shot_runs_before_every_role(compose: dict[str, Any]) -> None:
    certs = compose["services"]["certs"]
    assert certs["command"] == ["gateway", "certs", "init", "--dir", "/certs"]
    assert "certs:/certs" in certs["volumes"]
    for name, service in roles(compose):
        assert service["depends_on"]["certs"] == {
            "condition": "service_completed_successfully"}, name
        assert "certs:/certs" in service["volumes"], name
        text = config_path(service).read_text()
        if "certs" in tomllib.loads(text) or "[system]" in text:
            assert '"/certs"' in text, f"{name}: its config must use the /certs volume"


def test_every_role_has_a_real_health_probe(compose: dict[str, Any]) -> None:
    from lab.docker_demo import PARTIES

    parties = {f"endpoint-{n}" if n.isdigit() else f"lync-client-{n}": a
               for n, a in PARTIES.items()}
    for name, service in roles(compose):
        check = service.get("healthcheck")
        assert check is not None, f"{name} has no healthcheck"
        test = check["test"]
        assert test[0] == "CMD", name
        if name == "gateway":  # its own status command
            assert "/healthz" in " ".join(test[1:])
            continue
        assert test[1:3] == ["gateway", "probe"], f"{name}: {test}"
        scheme, host, _ = test[3].split(":")
        assert host in addresses(service), f"{name}: probes {host}, not itself"
        if name in parties:  # healthy only while registered
            assert test[3] == f"control:{parties[name]}", name
            assert test[3].removeprefix("control:") in " ".join(service["command"]), name
        elif scheme == "tls":  # a real handshake: the lab CA and the name to check
            assert "--tls-name" in test and "--certs" in test, name
        else:
            assert scheme in ("tcp", "udp", "stun"), f"{name}: {test}"
    assert set(parties) <= {name for name, _ in roles(compose)}


def test_demo_one_shot_reaches_every_party(compose: dict[str, Any]) -> None:
    from lab.docker_demo import PARTIES

    demo = compose["services"]["demo"]
    assert demo["profiles"] == ["demo"] and demo["entrypoint"] == ["gateway", "demo"]
    subnets = {name: ipaddress.ip_network(net["ipam"]["config"][0]["subnet"])
               for name, net in compose["networks"].items()}
    reachable = [subnets[net] for net in demo["networks"]]
    for party, address in PARTIES.items():
        host = ipaddress.ip_address(address.split(":")[0])
        assert any(host in net for net in reachable), f"demo cannot reach {party}"


def test_av_edge_has_its_own_external_address(compose: dict[str, Any]) -> None:
    """A real Edge's Access Edge and A/V Edge each have an external IP (both with 443): the
    Edge adds the A/V Edge's beside the Access Edge's, where the A/V Edge listens, MRAS
    points and david allocates; only the Edge gets root, NET_ADMIN and the wrapper."""
    services = compose["services"]
    edge = services["lync-edge"]
    command = edge["command"]
    assert command[:3] == IPADDR and edge["cap_add"] == ["NET_ADMIN"]
    av = ipaddress.ip_interface(command[command.index("--add") + 1])
    access = command[command.index("--beside") + 1]
    assert command[command.index("--user") + 1] == "gateway"
    external = ipaddress.ip_network(
        compose["networks"]["external"]["ipam"]["config"][0]["subnet"])
    assert access == edge["networks"]["external"]["ipv4_address"]
    assert av.network == external and str(av.ip) != access
    others = {a for n, s in roles(compose) if n != "lync-edge" for a in addresses(s)}
    assert str(av.ip) not in others
    config = tomllib.loads(config_path(edge).read_text())
    assert config["listen"].split(":")[1] == access and 443 in config["extra_ports"]
    assert config["turn"]["listen"] == str(av.ip) and config["turn"]["tcp_ports"] == [443]
    fe = tomllib.loads(config_path(services["lync-fe"]).read_text())
    assert (fe["turn_host"], fe["turn_tcp_port"]) == (str(av.ip), 443)
    david = tomllib.loads(config_path(services["lync-client-david"]).read_text())
    assert david["turn"].split(":")[0] == david["stun"].split(":")[0] == str(av.ip)
    assert [n for n, s in roles(compose) if s.get("cap_add") or s.get("user")] == ["lync-edge"]


def test_edge_sends_to_the_fe_from_its_internal_leg(compose: dict[str, Any]) -> None:
    services = compose["services"]
    edge = tomllib.loads(config_path(services["lync-edge"]).read_text())
    fe_host = edge["front_end"].split(":")[1]
    internal = ipaddress.ip_network(
        compose["networks"]["internal"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(fe_host) in internal
    assert edge["internal_source"] == services["lync-edge"]["networks"]["internal"][
        "ipv4_address"]


def test_exposed_ports_are_the_spec_ports(compose: dict[str, Any]) -> None:
    for name, wanted in SPEC_PORTS.items():
        exposed = set(compose["services"][name].get("expose", []))
        assert wanted <= exposed, f"{name}: missing {sorted(wanted - exposed)}"
    gateway = compose["services"]["gateway"]
    # Management on host loopback only, the host port configurable.
    assert gateway["ports"] == ["127.0.0.1:${GATEWAY_STATUS_PORT:-9090}:9090"]


def test_configs_agree_with_the_compose_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gw = tomllib.loads(config_path(services["gateway"]).read_text())
    assert gw["b2bua"]["listen"] == "tls:172.28.1.2:65072"
    assert f"{gw['b2bua']['media_ports']}/udp" in services["gateway"]["expose"]
    turn = load_turn_config(config_path(services["turn"]))
    relays = f"{turn.relay_ports[0]}-{turn.relay_ports[1]}"
    assert f"{relays}/udp" in services["turn"]["expose"]
    assert f"{turn.ports[0]}/udp" in services["turn"]["expose"]
    edge = tomllib.loads(config_path(services["lync-edge"]).read_text())
    assert f"{edge['turn']['relay_ports']}/udp" in services["lync-edge"]["expose"]


def test_listeners_are_on_the_services_own_addresses(compose: dict[str, Any]) -> None:
    subnets = {name: ipaddress.ip_network(net["ipam"]["config"][0]["subnet"])
               for name, net in compose["networks"].items()}
    owner: dict[str, str] = {}
    for name, service in compose["services"].items():
        for net, spec in (service.get("networks") or {}).items():
            address = ipaddress.ip_address(spec["ipv4_address"])
            assert address in subnets[net], f"{name}: {address} not in {net}"
            assert str(address) not in owner, f"{address} given to {owner.get(str(address))}"
            owner[str(address)] = name
        for extra in addresses(service) if "networks" in service else ():
            owner.setdefault(extra, name)
    for name, service in roles(compose):
        text = config_path(service).read_text()
        data = tomllib.loads(text)
        listens: list[str] = []
        tables = [data] + [data[k] for k in ("b2bua", "video", "turn")
                           if isinstance(data.get(k), dict)]
        for table in tables:
            value = table.get("listen", table.get("host"))
            listens += [value] if isinstance(value, str) else list(value or [])
        hosts = {item.split(":")[1] if ":" in item else item for item in listens}
        wildcard = "0.0.0.0" in hosts  # the DMZ TURN listens on each of its legs
        hosts.discard("0.0.0.0")
        assert hosts or wildcard, f"{name}: no listener in {config_path(service)}"
        assert hosts <= addresses(service), f"{name}: {hosts} vs {addresses(service)}"
        # Every other container address the config names belongs to some service.
        for found in re.finditer(r"\b172\.28\.\d+\.\d+\b(?!/)", text):
            assert found.group() in owner, f"{name}: {found.group()} is nobody's address"


def test_no_key_reaches_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"certs/lab", "**/*.key", ".venv", ".git"} <= set(ignored)
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines()
              if line.startswith("COPY ") and "--from=" not in line]
    for sources in copied:
        for source in sources:
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", source)  # the default of an ARG
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_image_layers_pinned_dependencies_before_the_source() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.index("--requirement /build/constraints.txt") < dockerfile.index(
        "COPY gateway")
    # Every requirement pinned to one version; the project's own dependencies all there.
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not pinned"
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
    assert {"setuptools", "wheel"} <= set(pins)  # the build backend, for --no-index builds
    # Build arguments with the documented defaults; offline means --no-index.
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert "--no-index --find-links /build/wheels" in dockerfile
    final = dockerfile[dockerfile.rindex("\nFROM "):]
    assert "USER gateway" in final and "/build" not in final.replace("--from=", "")


def test_compose_passes_the_build_arguments(compose: dict[str, Any]) -> None:
    builders = {name: s["build"] for name, s in compose["services"].items() if "build" in s}
    assert list(builders) == ["certs"], "one service builds the image, the others run it"
    args = builders["certs"]["args"]
    assert args == {"BASE_IMAGE": "${BASE_IMAGE:-python:3.11-slim}",
                    "PIP_WHEELS": "${PIP_WHEELS:-}"}
    images = {s["image"] for s in compose["services"].values()}
    assert images == {"gateway-emulator:lab"}
