"""A real libnice peer for the MS-TURN test: run by the system ``/usr/bin/python3`` (PyGObject
and ``gir1.2-nice-0.1`` from Debian), never by the venv, inside a network namespace
(libnice ignores loopback interfaces).

Two NiceAgents in one GLib main loop:

- the *Microsoft* side: ``NICE_COMPATIBILITY_OC2007R2`` (pidgin-sipe's mode for Lync), relay
  only (``force-relay``), its TURN server set with ``set_relay_info`` (UDP, TCP or pseudo-TLS):
  it allocates with MS-TURN. Over TCP its relay candidates are TCP-ACT / TCP-PASS (ICE-TCP);
- the *far* side: another OC2007R2 agent with host candidates only (TCP ones when the relay
  is reached over TCP).

Candidates and credentials are exchanged in-process; when ICE has selected a pair, each side
sends ``--packets`` datagrams and counts what arrives. One JSON line on stdout reports the
relay candidate, the selected pair and the counts; exit status 0 only when data went both ways.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time

import gi

gi.require_version("Nice", "0.1")
from gi.repository import GLib, Nice  # noqa: E402

# nice_agent_recv_nonblocking() crashes through PyGObject (its caller-allocated buffer has
# no length to give), and nice_agent_attach_recv() is not introspectable: call the C function
# with ctypes, a Python callback receiving each datagram libnice hands up.
_LIB = ctypes.CDLL("libnice.so.10")
_GLIB = ctypes.CDLL("libglib-2.0.so.0")
_RECV = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.POINTER(ctypes.c_char),
    ctypes.c_void_p,
)
_LIB.nice_agent_attach_recv.argtypes = [
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
    _RECV,
    ctypes.c_void_p,
]
_LIB.nice_agent_attach_recv.restype = ctypes.c_int
_GLIB.g_main_context_default.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_TYPES = {
    Nice.CandidateType.HOST: "host",
    Nice.CandidateType.SERVER_REFLEXIVE: "srflx",
    Nice.CandidateType.PEER_REFLEXIVE: "prflx",
    Nice.CandidateType.RELAYED: "relay",
}


_TRANSPORTS = {
    Nice.CandidateTransport.UDP: "udp",
    Nice.CandidateTransport.TCP_ACTIVE: "tcp-act",
    Nice.CandidateTransport.TCP_PASSIVE: "tcp-pass",
    Nice.CandidateTransport.TCP_SO: "tcp-so",
}


def _addr(c: Nice.Candidate) -> str:
    return f"{c.addr.dup_string()}:{c.addr.get_port()}"


def _describe(c: Nice.Candidate) -> str:
    return f"{_TYPES.get(c.type, '?')}/{_addr(c)}"


class Side:
    def __init__(self, name: str, ctx: GLib.MainContext, controlling: bool) -> None:
        self.name = name
        self.agent = Nice.Agent.new(ctx, Nice.Compatibility.OC2007R2)
        self.agent.set_property("controlling-mode", controlling)
        self.agent.set_property("ice-tcp", False)
        self.stream = self.agent.add_stream(1)
        self.gathered = False
        self.ready = False
        self.received: list[bytes] = []
        self.selected: dict[str, str] | None = None
        self.agent.connect("candidate-gathering-done", self._gathered)
        self.agent.connect("component-state-changed", self._state)
        self.agent.connect("new-selected-pair-full", self._selected)
        self._callback = _RECV(self._recv)  # kept alive as long as the agent
        pointer = ctypes.pythonapi.PyCapsule_GetPointer(self.agent.__gpointer__, None)
        if not _LIB.nice_agent_attach_recv(
            pointer, self.stream, 1, _GLIB.g_main_context_default(), self._callback, None
        ):
            raise RuntimeError("nice_agent_attach_recv failed")

    def _recv(
        self, agent: int, stream: int, component: int, length: int, buf: object, _: object
    ) -> None:
        self.received.append(ctypes.string_at(buf, length))

    def _selected(
        self,
        agent: Nice.Agent,
        stream: int,
        component: int,
        local: Nice.Candidate,
        remote: Nice.Candidate,
    ) -> None:
        self.selected = {
            "local": _describe(local),
            "remote": _describe(remote),
            "local_transport": _TRANSPORTS.get(local.transport, "?"),
            "remote_transport": _TRANSPORTS.get(remote.transport, "?"),
        }

    def _gathered(self, agent: Nice.Agent, stream: int) -> None:
        self.gathered = True

    def _state(self, agent: Nice.Agent, stream: int, component: int, state: int) -> None:
        if state == Nice.ComponentState.READY:
            self.ready = True


def _emit(report: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--turn", required=True, help="TURN server IP")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--relay-type",
        choices=("udp", "tcp", "tls"),
        default="udp",
        help="tls: libnice's pseudo-TLS (what pidgin-sipe asks for on port 443)",
    )
    p.add_argument("--username", required=True, help="MRAS username (base64, as MRAS gives it)")
    p.add_argument("--password", required=True, help="MRAS password (base64)")
    p.add_argument(
        "--gather-only",
        action="store_true",
        help="report the candidates, hold the allocation until stdin closes, then release",
    )
    p.add_argument(
        "--sipe-tls-port",
        type=int,
        help="also a TLS relay on this port, ICE-TCP left on: the relay set pidgin-sipe gives"
        " libnice for an Edge (UDP 3478, TLS 443); ICE then picks among them",
    )
    p.add_argument("--packets", type=int, default=20)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    ctx = GLib.MainContext.default()
    ms = Side("ms", ctx, controlling=True)
    far = Side("far", ctx, controlling=False)
    ms.agent.set_property("force-relay", True)
    if args.relay_type != "udp":
        # Over TCP libnice takes its relay as TCP-ACT / TCP-PASS candidates (ICE-TCP, RFC 4571
        # framing inside the relayed byte stream): the far side answers with ICE-TCP too.
        for side in (ms, far):
            side.agent.set_property("ice-tcp", True)
            side.agent.set_property("ice-udp", False)
    relay = {"udp": Nice.RelayType.UDP, "tcp": Nice.RelayType.TCP, "tls": Nice.RelayType.TLS}[
        args.relay_type
    ]
    ms.agent.set_relay_info(ms.stream, 1, args.turn, args.port, args.username, args.password, relay)
    if args.sipe_tls_port:
        ms.agent.set_property("ice-tcp", True)
        ms.agent.set_relay_info(
            ms.stream,
            1,
            args.turn,
            args.sipe_tls_port,
            args.username,
            args.password,
            Nice.RelayType.TLS,
        )
    report: dict[str, object] = {"relay_type": args.relay_type}
    deadline = time.monotonic() + args.timeout

    def spin(until: object) -> bool:
        while time.monotonic() < deadline:
            ctx.iteration(False)
            if until():  # type: ignore[operator]
                return True
            time.sleep(0.002)
        return False

    ms.agent.gather_candidates(ms.stream)
    far.agent.gather_candidates(far.stream)
    if not spin(lambda: ms.gathered and far.gathered):
        report["error"] = "candidate gathering did not finish"
        _emit(report)
        return 1
    ms_cands = ms.agent.get_local_candidates(ms.stream, 1)
    report["ms_candidates"] = [_describe(c) for c in ms_cands]
    report["far_candidates"] = [_describe(c) for c in far.agent.get_local_candidates(far.stream, 1)]
    if not any(c.type == Nice.CandidateType.RELAYED for c in ms_cands):
        report["error"] = "no relay candidate gathered"
        _emit(report)
        return 1
    if args.gather_only:
        _emit(report)
        sys.stdin.read()  # the test looks at the server meanwhile; EOF: release and go
        close(ctx, (ms, far))
        return 0
    for a, b in ((ms, far), (far, ms)):
        ok, ufrag, pwd = a.agent.get_local_credentials(a.stream)
        b.agent.set_remote_credentials(b.stream, ufrag, pwd)
        b.agent.set_remote_candidates(b.stream, 1, a.agent.get_local_candidates(a.stream, 1))
    if not spin(lambda: ms.ready and far.ready and ms.selected and far.selected):
        report["error"] = "ICE did not reach READY"
        report["ms_pair"], report["far_pair"] = ms.selected, far.selected
        _emit(report)
        return 1
    report["ms_pair"], report["far_pair"] = ms.selected, far.selected
    for i in range(args.packets):
        ms.agent.send(ms.stream, 1, len(f"ms-to-far-{i:04d}"), f"ms-to-far-{i:04d}")
        far.agent.send(far.stream, 1, len(f"far-to-ms-{i:04d}"), f"far-to-ms-{i:04d}")
        spin(lambda: True)
    spin(
        lambda: (
            sum(d.startswith(b"ms-to-far") for d in far.received) >= args.packets
            and sum(d.startswith(b"far-to-ms") for d in ms.received) >= args.packets
        )
    )
    report["far_received"] = sum(d.startswith(b"ms-to-far") for d in far.received)
    report["ms_received"] = sum(d.startswith(b"far-to-ms") for d in ms.received)
    report["sent_each_way"] = args.packets
    report["released"] = close(ctx, (ms, far))
    _emit(report)
    both = report["far_received"] and report["ms_received"]
    return 0 if both else 1


def close(ctx: GLib.MainContext, sides: tuple[Side, ...]) -> bool:
    """nice_agent_close_async: libnice deletes its TURN allocations (Allocate, LIFETIME 0)."""
    closed: list[Nice.Agent] = []
    for side in sides:
        side.agent.close_async(lambda agent, result, *_: closed.append(agent), None)
    end = time.monotonic() + 5.0
    while len(closed) < len(sides) and time.monotonic() < end:
        ctx.iteration(False)
        time.sleep(0.002)
    return len(closed) == len(sides)


if __name__ == "__main__":
    sys.exit(main())
