"""The lab's roles as separate processes in network namespaces: calls cross real network
boundaries.

Segments internal (FE, alice, the gateway), dmz (Edge with its A/V TURN, the DMZ TURN),
video (CUCM, endpoint 3001) and external (david), each a namespace routed through a ``fw``
namespace that drops external <-> internal/video (lab/netns.py). Every role is
`gateway <role> --config ...` with the lab's own loopback configs carried over to the
namespace addresses; the namespace network is let in where the lab keeps media on loopback
(``--set b2bua.allowed_networks`` / ``allowed_networks``), and TLS peers are checked by
certificate name (``ms_tls_name``, the zone's ``tls_name``). Two calls: alice (internal, via
the FE) -> 3001 and david (external, via the Access Edge, media through the DMZ relays) ->
3001, each with media both ways; the CUCM trunk is TLS 5061 both ways, as in the lab.
Skips with the reason where namespaces cannot be made (not root, no `ip`, no netns support).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import init_pki
from lab.netns import NetnsError, NetnsTopology, unavailable
from tests.peers.procs import PeerProcess, gateway_executable, wait_for_listeners

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "lab" / "configs"
READY = 20.0
CALL_TIMEOUT = 60.0


@pytest.fixture
def net() -> Iterator[NetnsTopology]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"netns test skipped: {reason}")
    topology = NetnsTopology.unique()
    try:
        topology.create()
    except NetnsError as error:
        topology.destroy()
        pytest.skip(f"netns test skipped: cannot make network namespaces here: {error}")
    try:
        yield topology
    finally:
        topology.destroy()
        assert topology.existing() == [], "namespaces left behind"


def lab_config(net: NetnsTopology, name: str, certs: Path, *edits: tuple[str, str]) -> str:
    """A loopback lab config moved into the namespaces, plus exact-text edits."""
    text = net.translate((CONFIGS / name).read_text())
    text = re.sub(r'^certs = ".*"$', f'certs = "{certs}"', text, flags=re.M)
    for old, new in edits:
        assert old in text, f"{name}: {old!r} not found (config changed?)"
        text = text.replace(old, new)
    return text


# A lab address (not a network such as 127.0.0.0/8) that translate() did not move.
LOOPBACK_ADDRESS = re.compile(r"(?<![\d.])127\.\d+\.\d+\.\d+(?![\d/])")


def write_configs(net: NetnsTopology, directory: Path, certs: Path) -> dict[str, Path]:
    gw = net.address("gateway")
    texts = {
        "lync-fe": lab_config(
            net, "lync-fe.toml", certs,
            ('destination = "tls:lyncexp.video.example.com:65072"',
             f'destination = "tls:{gw}:65072"\ntls_name = "lyncexp.video.example.com"')),
        "lync-edge": lab_config(net, "lync-edge.toml", certs,
                                ('"127.0.0.0/8"', f'"{net.network}"')),
        "alice": lab_config(net, "lync-client-alice.toml", certs),
        "david": lab_config(net, "lync-client-david.toml", certs),
        "cucm": lab_config(net, "cucm.toml", certs),
        "endpoint-3001": lab_config(net, "endpoint-3001.toml", certs),
        "gateway": net.translate((ROOT / "gateway" / "default.toml").read_text())
        .replace('certs = "certs/lab"', f'certs = "{certs}"'),
    }
    # The gateway and CUCM dial each other by namespace address over TLS; the certificate
    # names come from the configs (ms_tls_name, zones' tls_name, the trunk's server_hostname).
    assert 'ms_tls_name = "fe.example.com"' in texts["gateway"]
    assert 'tls_name = "cucm.video.example.com"' in texts["gateway"]
    assert f'destination = "tls:{gw}:5061"' in texts["cucm"]
    paths = {}
    for name, text in texts.items():
        settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        leftover = [line for line in settings
                    if LOOPBACK_ADDRESS.search(line) and "127.0.0.1:9090" not in line]
        assert not leftover, f"{name}: loopback addresses left: {leftover}"
        paths[name] = directory / f"{name}.toml"
        paths[name].write_text(text)
    return paths


def tcp_reachable(net: NetnsTopology, source: str, address: str, port: int) -> bool:
    """Whether a TCP connection from ``source``'s namespace to address:port opens."""
    probe = ("import socket, sys\n"
             "try:\n"
             f"    socket.create_connection(({address!r}, {port}), timeout=2).close()\n"
             "except OSError:\n"
             "    sys.exit(1)\n")
    result = subprocess.run(net.argv(source, [sys.executable, "-c", probe]),
                            capture_output=True, timeout=10, check=False)
    return result.returncode == 0


def call_report(peer: PeerProcess) -> dict[str, object]:
    finished = peer.wait(CALL_TIMEOUT)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    assert lines, finished.describe()
    report: dict[str, object] = json.loads(lines[-1])
    assert finished.returncode == 0 and report["result"] == "passed", finished.describe()
    return report


def test_calls_cross_the_namespaces(net: NetnsTopology, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_pki(certs)
    configs = write_configs(net, tmp_path, certs)
    exe = gateway_executable()
    # Media (ICE checks, RTP) may go to the namespaces' network, not only to loopback.
    media_to_lab = {"run": f'b2bua.allowed_networks=["{net.network}"]',
                    "lync-client": f'allowed_networks=["{net.network}"]'}

    with contextlib.ExitStack() as stack:
        def start(host: str, *args: str) -> PeerProcess:
            command = [exe, *args]
            if args[0] in media_to_lab:
                command += ["--set", media_to_lab[args[0]]]
            peer = PeerProcess(net.argv(host, command), cwd=tmp_path, name=host)
            stack.callback(peer.stop)
            return peer

        turn = start("turn", "turn", "--listen", net.address("turn"),
                     "--user", "GatewayB2BUA:secret", "--allow-peer", net.network)
        fe = start("fe", "lync-fe", "--config", str(configs["lync-fe"]))
        cucm = start("cucm", "cucm", "--config", str(configs["cucm"]))
        turn.wait_for_line(r"TURN listening on udp", READY)
        wait_for_listeners(fe, ["tls"], READY)
        wait_for_listeners(cucm, ["udp", "tcp", "tls"], READY)
        edge = start("edge", "lync-edge", "--config", str(configs["lync-edge"]))
        gateway = start("gateway", "run", "--config", str(configs["gateway"]))
        endpoint = start("endpoint-3001", "endpoint", "--config", str(configs["endpoint-3001"]))
        wait_for_listeners(edge, ["tls"], READY)
        wait_for_listeners(gateway, ["tls", "tcp"], READY)
        endpoint.wait_for_line(r"registered at", READY)

        # The firewall namespace really separates the segments.
        assert tcp_reachable(net, "david", net.address("edge"), 5061)
        assert not tcp_reachable(net, "david", net.address("fe"), 5061)
        assert not tcp_reachable(net, "david", net.address("gateway"), 65072)
        assert tcp_reachable(net, "gateway", net.address("cucm"), 5061)

        alice = start("alice", "lync-client", "--config", str(configs["alice"]),
                      "--call", "3001@video.example.com", "--duration", "1")
        david = start("david", "lync-client", "--config", str(configs["david"]),
                      "--call", "3001@video.example.com", "--duration", "1")
        internal, external = call_report(alice), call_report(david)

    for report in (internal, external):
        assert report["streams"] == ["audio", "video"], report
        packets = report["packets"]
        assert isinstance(packets, dict)
        for direction in ("sent", "received"):
            counts = packets[direction]
            values = counts.values() if isinstance(counts, dict) else [counts]
            assert all(isinstance(v, int) and v >= 10 for v in values), report
    # david cannot reach the gateway's host address: his media goes through a DMZ relay.
    assert "relay" in str(external["ice_pair"]), external
    assert internal["ice_pair"] == "host/host", internal


# -- the helpers, without root ---------------------------------------------------------------


def test_translate_moves_every_lab_address_and_nothing_else() -> None:
    net = NetnsTopology("gwt-")
    text = ('registrar = "tls:127.0.1.1:5061"\nhost = "127.0.1.10"\n'
            'allow = ["127.0.0.0/8"]\nmgmt = "127.0.0.1:9090"\nep = "udp:127.0.3.11:5060"\n')
    assert net.translate(text) == (
        'registrar = "tls:10.201.1.11:5061"\nhost = "10.201.1.21"\n'
        'allow = ["127.0.0.0/8"]\nmgmt = "127.0.0.1:9090"\nep = "udp:10.201.3.21:5060"\n')
    assert net.address("gateway") == "10.201.1.2" and net.router("video") == "10.201.3.1"
    assert net.argv("david", ["true"]) == ["ip", "netns", "exec", "gwt-external", "true"]


def test_names_and_networks_are_checked() -> None:
    with pytest.raises(ValueError):
        NetnsTopology("much-too-long-prefix")  # veth names would pass 15 characters
    with pytest.raises(ValueError):
        NetnsTopology("gwt-", network="8.8.0.0/16")  # never a public network
    with pytest.raises(KeyError):
        NetnsTopology("gwt-").namespace("lobby")
    assert NetnsTopology.unique().prefix != NetnsTopology.unique().prefix


def test_a_failed_build_leaves_no_namespace_behind() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"netns test skipped: {reason}")
    net = NetnsTopology.unique()
    blocker = net.namespace("dmz")  # taken already: the build fails half-way
    made = subprocess.run(["ip", "netns", "add", blocker], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"netns test skipped: ip netns add failed: {made.stderr.decode().strip()}")
    try:
        with pytest.raises(NetnsError, match="dmz"), net:
            pass
        assert net.existing() == [blocker]  # fw and internal were made, then removed
    finally:
        subprocess.run(["ip", "netns", "del", blocker], capture_output=True, check=False)
    assert net.existing() == []
