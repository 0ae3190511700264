"""lab.ipaddr (the Docker Edge's second external address) in a network namespace of its own:
the address is added beside the existing one (again: no error), the command then runs as
the given user, and bad input is a message, not a traceback."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab.ipaddr import IFA_LOCAL, RTM_NEWADDR, new_address_message
from lab.netns import NetnsError, VethHost, unavailable


@pytest.fixture
def host() -> Iterator[VethHost]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    veth = VethHost.unique(lab_loopback=False)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(veth)
        except NetnsError as error:
            pytest.skip(f"cannot make network namespaces here: {error}")
        yield veth


def run(host: VethHost, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", host.namespace, sys.executable, "-m",
                           "lab.ipaddr", *args], capture_output=True, text=True, timeout=30,
                          check=False)


def test_the_message_is_one_rtm_newaddr_with_local_and_address() -> None:
    message = new_address_message(7, ipaddress.IPv4Interface("172.28.5.13/24"))
    assert int.from_bytes(message[:4], "little") == len(message) == 16 + 8 + 8 + 8
    assert int.from_bytes(message[4:6], "little") == RTM_NEWADDR
    assert message[16:18] == bytes([2, 24])  # AF_INET, /24
    assert int.from_bytes(message[20:24], "little") == 7  # interface index
    assert int.from_bytes(message[26:28], "little") == IFA_LOCAL
    assert message[28:32] == message[36:40] == bytes([172, 28, 5, 13])


def test_adds_the_address_beside_the_existing_one_then_runs_as_the_user(
        host: VethHost) -> None:
    second = str(ipaddress.IPv4Address(host.address) + 1)
    done = run(host, "--add", f"{second}/24", "--beside", host.address, "--user", "nobody",
               "--", "id", "-un")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "nobody" and "added" in done.stderr
    shown = subprocess.run(["ip", "-n", host.namespace, "-4", "addr"], capture_output=True,
                           text=True, check=True).stdout
    assert f"inet {host.address}/" in shown and f"inet {second}/24" in shown
    again = run(host, "--add", f"{second}/24", "--beside", host.address)  # a restart
    assert again.returncode == 0 and "already present" in again.stderr


def test_no_interface_with_that_address_is_a_message(host: VethHost) -> None:
    done = run(host, "--add", "10.250.0.2/24", "--beside", "10.250.0.1", "--", "true")
    assert done.returncode == 1 and "no interface has the address 10.250.0.1" in done.stderr
    assert "Traceback" not in done.stderr
