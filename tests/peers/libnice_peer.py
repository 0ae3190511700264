"""A real libnice ICE agent (GObject introspection) in its OC2007R2 ([MS-ICE2]) mode, driven
over stdin/stdout with JSON lines: the peer the gateway's Microsoft ICE leg meets in
pidgin-sipe.

Run with the system python3 (``gir1.2-nice-0.1`` and ``python3-gi`` are Debian packages,
not in the venv), inside a network namespace: libnice ignores loopback interfaces.

    /usr/bin/python3 libnice_peer.py --controlling|--controlled [--compatibility OC2007R2]

Out: ``{"event": "local", "sdp": ...}`` once gathered (libnice's own candidate SDP),
``{"event": "state", "component": n, "state": "READY"}`` on each state change,
``{"event": "selected", "component": n, "local": "ip:port", "remote": "ip:port"}``,
``{"event": "data", "component": n, "payload": text}`` for each datagram received, and
``{"event": "sent", "count": n}`` after sending ``n`` datagrams of its own.
In: ``{"remote_sdp": ...}`` (credentials and candidates), ``{"send": n}`` to send ``n``
datagrams ``libnice-<i>`` on component 1, ``{"quit": true}``; end of input also quits.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import threading
from typing import Any

import gi

gi.require_version("Nice", "0.1")
from gi.repository import GLib, Nice  # noqa: E402

STREAM_NAME = "audio"
RECV_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                             ctypes.c_void_p, ctypes.c_void_p)
"""NiceAgentRecvFunc (agent, stream_id, component_id, len, buf, user_data)."""


# JSON events get a private copy of stdout; fd 1 then points at stderr, where GLib's default
# log handler writes its debug lines (G_MESSAGES_DEBUG) instead of among the events.
EVENTS = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


def emit(**event: Any) -> None:
    EVENTS.write(json.dumps(event) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true")
    role.add_argument("--controlled", action="store_true")
    parser.add_argument("--compatibility", default="OC2007R2")
    args = parser.parse_args()

    context = GLib.MainContext.default()
    loop = GLib.MainLoop.new(context, False)
    agent = Nice.Agent.new(context, getattr(Nice.Compatibility, args.compatibility))
    agent.props.controlling_mode = bool(args.controlling)
    agent.props.upnp = False
    stream = agent.add_stream(2)
    agent.set_stream_name(stream, STREAM_NAME)

    def gathered(_agent: Nice.Agent, stream_id: int) -> None:
        emit(event="local", sdp=agent.generate_local_sdp())

    def state_changed(_agent: Nice.Agent, stream_id: int, component: int, state: int) -> None:
        emit(event="state", component=component,
             state=Nice.ComponentState(state).value_nick.upper())

    def selected(_agent: Nice.Agent, stream_id: int, component: int, local: Nice.Candidate,
                 remote: Nice.Candidate) -> None:
        emit(event="selected", component=component, local=_address(local),
             remote=_address(remote))

    agent.connect("candidate-gathering-done", gathered)
    agent.connect("component-state-changed", state_changed)
    agent.connect("new-selected-pair-full", selected)

    # nice_agent_attach_recv is not introspectable (its callback is not annotated) and
    # PyGObject cannot size recv_nonblocking's caller-allocated buffer: attach the receive
    # callback through ctypes, on the agent GI created.
    def received(_agent: int, stream_id: int, component: int, length: int, buf: int,
                 _data: int) -> None:
        payload = ctypes.string_at(buf, length)
        emit(event="data", component=component, payload=payload.decode("latin-1"))

    libnice = ctypes.CDLL("libnice.so.10")
    glib = ctypes.CDLL("libglib-2.0.so.0")
    glib.g_main_context_default.restype = ctypes.c_void_p
    callback = RECV_FUNC(received)
    ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
    ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    pointer = ctypes.pythonapi.PyCapsule_GetPointer(agent.__gpointer__, None)
    libnice.nice_agent_attach_recv.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint,
                                               ctypes.c_void_p, RECV_FUNC, ctypes.c_void_p]
    for component in (1, 2):
        libnice.nice_agent_attach_recv(pointer, stream, component,
                                       glib.g_main_context_default(), callback, None)

    def command(line: str) -> bool:
        request = json.loads(line)
        if "remote_sdp" in request:
            count = agent.parse_remote_sdp(request["remote_sdp"])
            emit(event="remote", candidates=count)
        if "send" in request:
            sent = 0
            for index in range(int(request["send"])):
                text = f"libnice-{index}"
                if agent.send(stream, 1, len(text), text) == len(text):
                    sent += 1
            emit(event="sent", count=sent)
        if request.get("quit"):
            loop.quit()
        return False

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                GLib.idle_add(command, line)
        GLib.idle_add(lambda: loop.quit())

    threading.Thread(target=read_stdin, daemon=True).start()
    if not agent.gather_candidates(stream):
        emit(event="error", reason="gather_candidates failed")
        return 1
    loop.run()
    agent.remove_stream(stream)
    return 0


def _address(candidate: Nice.Candidate) -> str:
    address = candidate.addr
    return f"{address.dup_string()}:{address.get_port()}"


if __name__ == "__main__":
    sys.exit(main())
