"""The `gateway` command: one entry point, one subcommand per role.

Each subcommand lives in the package that owns it and exposes `main(argv) -> int`
(or the function named after a colon: "lab.lync.cli:fe_main").
Modules are imported only when their subcommand runs, so a role never pays for the
imports of another (the TURN server does not load aiortc).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module holding `main(argv) -> int`, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "certs": ("certs.cli", "make the lab PKI (CA, server and client certificates)"),
    "endpoint": ("lab.endpoint.cli", "a simulated SIP endpoint (answers or places calls)"),
    "turn": ("turn.cli", "the DMZ TURN server (RFC 8656)"),
    "sdp": ("media.cli", "rewrite an SDP body Microsoft <-> standard"),
    "run": ("gateway.run", "run the gateway B2BUA from a config file"),
    "lab": ("lab.cli", "start the whole lab topology on loopback and place demo calls"),
    "lync-fe": ("lab.lync.cli:fe_main", "a simulated Lync Front End (registrar, static routes)"),
    "lync-edge": ("lab.lync.cli:edge_main", "a simulated Lync Edge (Access Edge + A/V TURN)"),
    "lync-client": ("lab.lync.cli:client_main", "a simulated Lync / SfB client"),
    "cucm": ("lab.cisco.cli:cucm_main", "a simulated Unified CM (trunk, registrar, proxy)"),
    "imp": ("lab.cisco.cli:imp_main", "a simulated IM&P node (MESSAGE/SUBSCRIBE/...)"),
    "probe": ("lab.probe", "health check of a lab role over its real transport (exit 0/1)"),
    "demo": ("lab.docker_demo", "the demo matrix between running lab containers"),
}


def usage() -> str:
    lines = ["usage: gateway <command> [options]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append("")
    lines.append("`gateway <command> --help` describes a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage() + "\n")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"gateway: unknown command {name!r}\n\n{usage()}\n")
        return 2
    target, _ = COMMANDS[name]
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            sys.stderr.write(f"gateway: command {name!r} is not available in this build\n")
            return 2
        raise
    result: int = getattr(module, function or "main")(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
