"""The lab's hosts in Linux network namespaces, routed through a namespace playing the firewalls.

Four segments (internal, dmz, video, external), each its own namespace with one veth to the
``fw`` namespace, which forwards between them. Private addresses exist only inside these
namespaces: nothing is routed to the host or beyond. Without iptables, the firewall is
policy routing in ``fw``: ``ip rule ... prohibit`` drops what a real deployment's firewalls
drop (external and video never talk to each other or external to internal directly), so an
external client's media has to go through the DMZ relays.

Roles run with :meth:`NetnsTopology.argv` (``ip netns exec NS ...``); the lab's loopback
configs are carried over with :meth:`NetnsTopology.translate`, which rewrites every lab
address (docs/lab-topology.md) into its namespace address. Needs root and ``ip``;
:func:`unavailable` says why when namespaces cannot be made.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Self

__all__ = [
    "BLOCKED",
    "LAB_HOSTS",
    "NetnsError",
    "NetnsHost",
    "NetnsTopology",
    "NetnsUnavailable",
    "SEGMENTS",
    "VethHost",
    "unavailable",
]

logger = logging.getLogger(__name__)

"""``ip netns exec NS`` bind-mounts ``/etc/netns/NS/*`` over ``/etc`` (hosts file)."""
COMMAND_TIMEOUT = 10.0

SEGMENTS: Mapping[str, int] = MappingProxyType(
    {"internal": 1, "dmz": 2, "video": 3, "external": 5}
)
"""Segment -> third octet of its /24 (the same digit as its loopback lab block)."""

BLOCKED: tuple[tuple[str, str], ...] = (
    ("external", "internal"),
    ("external", "video"),
)
"""Segment pairs the firewall drops in both directions."""


class NetnsError(RuntimeError):
    """A namespace, link, address or route could not be made."""


class NetnsUnavailable(NetnsError):
    """Not even the namespace or its veth pair could be made (no CAP_NET_ADMIN, no veth)."""


@dataclass(frozen=True, slots=True)
class NetnsHost:
    """One lab host placed in a segment."""

    name: str
    """Role name ("fe", "gateway", "alice" ...)."""
    segment: str
    """Which segment namespace it lives in."""
    host: int
    """Last octet of its address in the segment."""
    lab_address: str
    """Its loopback address in the one-process lab (docs/lab-topology.md)."""


LAB_HOSTS: tuple[NetnsHost, ...] = (
    NetnsHost("gateway", "internal", 2, "127.0.2.1"),
    NetnsHost("fe", "internal", 11, "127.0.1.1"),
    NetnsHost("alice", "internal", 21, "127.0.1.10"),
    NetnsHost("turn", "dmz", 4, "127.0.4.1"),
    NetnsHost("edge", "dmz", 12, "127.0.1.2"),
    NetnsHost("av-edge", "dmz", 13, "127.0.1.3"),  # the Edge's second address: its A/V Edge
    NetnsHost("cucm", "video", 11, "127.0.3.1"),
    NetnsHost("imp", "video", 12, "127.0.3.2"),
    NetnsHost("endpoint-3001", "video", 21, "127.0.3.11"),
    NetnsHost("endpoint-3002", "video", 22, "127.0.3.12"),
    NetnsHost("david", "external", 10, "127.0.5.10"),
)
"""The gateway sits on the internal segment, routing to video through ``fw``."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can be tried)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the iproute2 `ip` command is not installed"
    return None


def _check_prefix(prefix: str) -> None:
    # veth names are the prefix plus up to two letters: the kernel allows 15 characters.
    if not re.fullmatch(r"[a-z0-9-]{1,12}", prefix):
        raise ValueError(f"namespace prefix {prefix!r}: 1-12 of a-z 0-9 -")


def _unique_prefix(letters: str) -> str:
    """A namespace prefix no other run uses (``<letters><pid><random>-``)."""
    return f"{letters}{os.getpid() % 100000}{uuid.uuid4().hex[:3]}-"


def _delete_namespace(ns: str) -> None:
    """``ip netns del``; a failure is logged, not raised (clean-up goes on)."""
    result = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT, check=False)
    if result.returncode != 0:
        logger.warning("cannot delete namespace %s: %s", ns, result.stderr.strip())


class _Built:
    """A context manager over ``create``/``destroy``: destroyed on exit, and also when
    ``create`` fails half-way (whatever it made so far)."""

    def create(self) -> None:
        raise NotImplementedError

    def destroy(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class NetnsTopology(_Built):
    """Namespaces named ``<prefix><segment>`` and ``<prefix>fw``; a context manager.

    ``with NetnsTopology.unique() as net:`` builds everything and removes every namespace
    (and its /etc/netns entry) on exit, also after a failure half-way through building.
    """

    def __init__(
        self,
        prefix: str,
        *,
        network: str = "10.201.0.0/16",
        hosts: Sequence[NetnsHost] = LAB_HOSTS,
        blocked: Sequence[tuple[str, str]] = BLOCKED,
    ) -> None:
        _check_prefix(prefix)  # veth names: prefix + segment initial (+ "f")
        base = ipaddress.ip_network(network)
        if base.prefixlen > 16 or not base.is_private:
            raise ValueError(f"{network}: a private /16 (or larger) is needed")
        self.prefix = prefix
        self.network = str(base)
        """The whole lab network (every segment is a /24 in it)."""
        self._base = base.network_address.packed[:2]
        self.hosts: Mapping[str, NetnsHost] = MappingProxyType({h.name: h for h in hosts})
        self.blocked = tuple(blocked)
        self._made: list[str] = []

    @classmethod
    def unique(cls, **kwargs: object) -> NetnsTopology:
        """A topology whose prefix no other run uses (``gw<pid><random>-``)."""
        return cls(_unique_prefix("gw"), **kwargs)  # type: ignore[arg-type]

    # -- names and addresses ----------------------------------------------------------------

    def namespace(self, segment: str) -> str:
        """Namespace name of ``segment`` (or "fw")."""
        if segment != "fw" and segment not in SEGMENTS:
            raise KeyError(f"unknown segment {segment!r}")
        return self.prefix + segment

    def subnet(self, segment: str) -> ipaddress.IPv4Network:
        a, b = self._base
        return ipaddress.IPv4Network(f"{a}.{b}.{SEGMENTS[segment]}.0/24")

    def router(self, segment: str) -> str:
        """The firewall's address on ``segment`` (the segment's default route)."""
        return str(self.subnet(segment).network_address + 1)

    def address(self, host: str) -> str:
        """The namespace address of lab host ``host`` ("fe", "gateway" ...)."""
        spec = self.hosts[host]
        return str(self.subnet(spec.segment).network_address + spec.host)

    def segment_of(self, host: str) -> str:
        return self.hosts[host].segment

    def argv(self, host: str, command: Sequence[str]) -> list[str]:
        """``command`` run inside the namespace of lab host ``host``."""
        return ["ip", "netns", "exec", self.namespace(self.segment_of(host)), *command]

    def translate(self, text: str) -> str:
        """A loopback lab config with each lab address replaced by its namespace address."""
        table = {spec.lab_address: self.address(name) for name, spec in self.hosts.items()}
        pattern = re.compile(
            r"(?<![\d.])(" + "|".join(re.escape(a) for a in sorted(table, key=len, reverse=True))
            + r")(?![\d])")
        return pattern.sub(lambda m: table[m.group(1)], text)

    # -- building -----------------------------------------------------------------------------

    def create(self) -> None:
        """Make the namespaces, links, addresses, routes and firewall rules."""
        fw = self.namespace("fw")
        self._add_namespace(fw)
        self._ip(fw, "link", "set", "lo", "up")
        self._ip(fw, "-4", "route", "add", "unreachable", "default")
        self._sysctl(fw, "net.ipv4.ip_forward", "1")
        for segment, octet in SEGMENTS.items():
            ns = self.namespace(segment)
            self._add_namespace(ns)
            inside, outside = f"{self.prefix}{segment[0]}", f"{self.prefix}{segment[0]}f"
            self._run(["ip", "link", "add", inside, "type", "veth", "peer", "name", outside])
            self._run(["ip", "link", "set", inside, "netns", ns])
            self._run(["ip", "link", "set", outside, "netns", fw])
            subnet = self.subnet(segment)
            self._ip(fw, "addr", "add", f"{self.router(segment)}/{subnet.prefixlen}",
                     "dev", outside)
            self._ip(fw, "link", "set", outside, "up")
            self._ip(ns, "link", "set", "lo", "up")
            for name, spec in self.hosts.items():
                if spec.segment == segment:
                    self._ip(ns, "addr", "add", f"{self.address(name)}/{subnet.prefixlen}",
                             "dev", inside)
            self._ip(ns, "link", "set", inside, "up")
            self._ip(ns, "route", "add", "default", "via", self.router(segment))
            logger.debug("segment %s (%s) in namespace %s, octet %d", segment, subnet, ns, octet)
        for one, other in self.blocked:
            for src, dst in ((one, other), (other, one)):
                self._ip(fw, "rule", "add", "from", str(self.subnet(src)), "to",
                         str(self.subnet(dst)), "prohibit")

    def destroy(self) -> None:
        """Remove every namespace made (their veths go with them)."""
        for ns in reversed(self._made):
            _delete_namespace(ns)
        self._made.clear()

    def existing(self) -> list[str]:
        """Our namespaces that exist now (for checking the clean-up)."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, check=False).stdout
        return [line.split()[0] for line in listed.splitlines()
                if line.split() and line.split()[0].startswith(self.prefix)]

    # -- commands -----------------------------------------------------------------------------

    def _add_namespace(self, ns: str) -> None:
        self._run(["ip", "netns", "add", ns])
        self._made.append(ns)

    def _ip(self, ns: str, *args: str) -> None:
        self._run(["ip", "-n", ns, *args])

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        # /proc/sys/net is per network namespace: write it from inside.
        self._run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"])

    @staticmethod
    def _run(argv: list[str]) -> None:
        try:
            result = subprocess.run(argv, capture_output=True, text=True,
                                    timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NetnsError(f"{' '.join(argv)}: {error}") from error
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


# -- one namespace on a veth to the host's namespace --------------------------------------


class VethHost(_Built):
    """One namespace joined to the caller's namespace by a veth pair, from which the lab's
    loopback addresses (127.0.0.0/8 of the caller's namespace) are reachable.

    For a real peer that will not use loopback (libnice skips loopback interfaces): the peer
    runs inside (``argv``) on ``address``; the lab keeps its 127.x addresses outside. Inside,
    127.0.0.0/8 is routed over the veth (only 127.0.0.1 stays local); both veth ends accept
    127.x sources and destinations (``route_localnet``, ``accept_local``, no ``rp_filter``);
    neighbours are static because ARP will not answer for a 127.x sender. A context manager:
    the namespace (and with it both veth ends) is deleted on exit, also after a failed build.

    ``lab_loopback=False`` makes only the namespace and the addressed veth pair (a peer that
    talks to the caller's end of the veth, not to the lab's 127.x addresses).
    """

    def __init__(self, prefix: str, *, subnet: str = "10.99.0.0/24", host: int = 10,
                 lab_loopback: bool = True) -> None:
        _check_prefix(prefix)  # veth names: prefix + "h" / "n"
        net = ipaddress.IPv4Network(subnet)
        if not net.is_private or net.prefixlen > 30:
            raise ValueError(f"{subnet}: a private IPv4 network of 4 addresses or more is needed")
        self.prefix = prefix
        self.namespace = prefix + "peer"
        self.subnet = net
        self.outer = str(net.network_address + 1)
        """The caller's end (the inside's next hop toward the lab)."""
        self.address = str(net.network_address + host)
        """The inside end: the peer's address."""
        self.outer_link, self.inner_link = prefix + "h", prefix + "n"
        self.lab_loopback = lab_loopback
        self._made = False

    @classmethod
    def unique(cls, **kwargs: object) -> VethHost:
        """A veth host on a 10.99.N.0/24 no interface here uses yet, with a prefix no other
        run uses (``vh<pid><random>-``)."""
        used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, check=False).stdout
        taken = {int(m.group(1)) for m in re.finditer(r"inet 10\.99\.(\d+)\.", used)}
        free = [n for n in range(256) if n not in taken]
        if not free:
            raise NetnsError("every 10.99.N.0/24 is in use here")
        kwargs.setdefault("subnet", f"10.99.{random.choice(free)}.0/24")
        return cls(_unique_prefix("vh"), **kwargs)  # type: ignore[arg-type]

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def create(self) -> None:
        """Make the namespace, the veth pair, addresses, routes, sysctls and neighbours."""
        ns, run = self.namespace, NetnsTopology._run
        try:
            run(["ip", "netns", "add", ns])
            self._made = True
            run(["ip", "link", "add", self.outer_link, "type", "veth",
                 "peer", "name", self.inner_link])
        except NetnsError as error:
            raise NetnsUnavailable(str(error)) from error
        run(["ip", "link", "set", self.inner_link, "netns", ns])
        length = self.subnet.prefixlen
        run(["ip", "addr", "add", f"{self.outer}/{length}", "dev", self.outer_link])
        run(["ip", "-n", ns, "addr", "add", f"{self.address}/{length}", "dev", self.inner_link])
        if self.lab_loopback:
            for key, value in (("route_localnet", "1"), ("accept_local", "1"),
                               ("rp_filter", "0")):
                run(["sysctl", "-qw", f"net.ipv4.conf.{self.outer_link}.{key}={value}"])
                for device in (self.inner_link, "all"):
                    run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                         f"net.ipv4.conf.{device}.{key}={value}"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "set", self.outer_link, "up"])
        run(["ip", "-n", ns, "link", "set", self.inner_link, "up"])
        if self.lab_loopback:
            self._route_lab_loopback()
        logger.debug("veth host %s at %s (%s <-> %s)", ns, self.address, self.outer_link,
                     self.inner_link)

    def _route_lab_loopback(self) -> None:
        ns, run = self.namespace, NetnsTopology._run
        # Inside, only 127.0.0.1 stays local: the rest of 127/8 is the lab, over the veth.
        run(["ip", "-n", ns, "route", "del", "local", "127.0.0.0/8", "dev", "lo",
             "table", "local"])
        run(["ip", "-n", ns, "route", "replace", "local", "127.0.0.1", "dev", "lo",
             "table", "local"])
        run(["ip", "-n", ns, "route", "add", "127.0.0.0/8", "via", self.outer,
             "dev", self.inner_link])
        run(["ip", "-n", ns, "neigh", "replace", self.outer, "lladdr",
             self._mac(None, self.outer_link), "dev", self.inner_link, "nud", "permanent"])
        run(["ip", "neigh", "replace", self.address, "lladdr",
             self._mac(ns, self.inner_link), "dev", self.outer_link, "nud", "permanent"])

    def destroy(self) -> None:
        """Delete the namespace (both veth ends go with it)."""
        if not self._made:
            return
        self._made = False
        _delete_namespace(self.namespace)
        # A veth end left in this namespace would keep the subnet's address in use.
        subprocess.run(["ip", "link", "del", self.outer_link], capture_output=True,
                       timeout=COMMAND_TIMEOUT, check=False)

    def exists(self) -> bool:
        """Whether the namespace or the outer veth end is still there."""
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT, check=False).stdout.split()
        link = subprocess.run(["ip", "link", "show", self.outer_link], capture_output=True,
                              timeout=COMMAND_TIMEOUT, check=False)
        return self.namespace in names or link.returncode == 0

    @staticmethod
    def _mac(ns: str | None, link: str) -> str:
        argv = ["ip", *(["-n", ns] if ns else []), "-o", "link", "show", link]
        shown = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                               check=False).stdout
        match = re.search(r"link/ether ([0-9a-f:]{17})", shown)
        if match is None:
            raise NetnsError(f"no MAC address for {link}: {shown.strip()}")
        return match.group(1)
