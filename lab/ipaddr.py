"""Give a container a second address on one of its networks, then run a command unprivileged.

docker-compose gives a container one address per network, but a real Lync Edge has two on
its external side: the Access Edge's and the A/V Edge's, both serving 443. The lab's
``lync-edge`` service therefore starts as root with CAP_NET_ADMIN, adds the A/V Edge's
address on the interface that holds the Access Edge's, drops to the ``gateway`` user and
execs the Edge::

    python -m lab.ipaddr --add 172.28.5.13/24 --beside 172.28.5.12 --user gateway \\
        -- gateway lync-edge --config lab/configs/docker/lync-edge.toml

Hand-written rtnetlink (one RTM_NEWADDR): the image has neither iproute2 nor pyroute2, and
this is all the lab needs of them.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import ipaddress
import os
import pwd
import socket
import struct
import sys
from collections.abc import Sequence

RTM_NEWADDR = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
SIOCGIFADDR = 0x8915
_NLMSG = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")


class AddressError(Exception):
    """The address could not be added (message names what and why)."""


def interface_with(address: str) -> int:
    """Index of the interface whose (primary) IPv4 address is ``address``."""
    for index, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
        if socket.inet_ntoa(raw[20:24]) == address:
            return index
    raise AddressError(f"no interface has the address {address}")


def new_address_message(index: int, interface: ipaddress.IPv4Interface, seq: int = 1) -> bytes:
    """RTM_NEWADDR for ``interface`` (address/prefix) on interface ``index``."""
    packed = interface.ip.packed
    attrs = b"".join(struct.pack("=HH", 4 + len(packed), kind) + packed
                     for kind in (IFA_LOCAL, IFA_ADDRESS))
    body = _IFADDRMSG.pack(socket.AF_INET, interface.network.prefixlen, 0, 0, index) + attrs
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_NEWADDR, flags, seq, 0) + body


def add_address(interface: ipaddress.IPv4Interface, beside: str) -> bool:
    """Add ``interface`` where ``beside`` is; False when it was already there."""
    index = interface_with(beside)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.bind((0, 0))
        s.send(new_address_message(index, interface))
        reply = s.recv(65536)
    _, kind, _, _, _ = _NLMSG.unpack_from(reply)
    if kind != NLMSG_ERROR:
        raise AddressError(f"unexpected netlink answer type {kind}")
    code = -struct.unpack_from("=i", reply, _NLMSG.size)[0]
    if code == errno.EEXIST:
        return False  # a restarted container keeps its network namespace
    if code:
        raise AddressError(f"adding {interface}: {os.strerror(code)}")
    return True


def drop_to(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.ipaddr", description=__doc__.split("\n")[0])
    p.add_argument("--add", required=True, type=ipaddress.IPv4Interface,
                   help="address/prefix to add (e.g. 172.28.5.13/24)")
    p.add_argument("--beside", required=True,
                   help="an address the interface to add it to already has")
    p.add_argument("--user", help="run the command as this user (from root)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to exec")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        added = add_address(args.add, args.beside)
    except (AddressError, OSError) as error:
        sys.stderr.write(f"lab.ipaddr: {error}\n")
        return 1
    sys.stderr.write(f"lab.ipaddr: {args.add} {'added' if added else 'already present'} "
                     f"beside {args.beside}\n")
    if args.user:
        drop_to(args.user)
    if command:
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
