"""`gateway probe` against real roles on loopback: a SIP OPTIONS over TLS to the FE (as the
Edge would ping it: 200, and nothing logged at WARNING by the FE), over TCP to the Unified
CM, a STUN Binding to the TURN server, a party's registration through its control port
(healthy while registered, not after the registrar is gone), and failures as exit 1."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess

import pytest

from certs.pki import LabPKI
from lab.cisco.config import CucmConfig
from lab.cisco.cucm import Cucm
from lab.control import ControlServer
from lab.endpoint import Endpoint, EndpointConfig, ListenSpec, SipTarget
from lab.endpoint.cli import _Party
from lab.lync.config import FrontEndConfig
from lab.lync.topology import MicrosoftSide
from lab.probe import ProbeFailed, probe_control, probe_sip, probe_stun
from sip.timers import TimerSettings
from sip.transport import Transport
from tests.peers.procs import gateway_executable, random_free_port
from turn.config import TurnConfig
from turn.server import TurnServer

HOST = "127.0.3.81"
EP_HOST = "127.0.3.82"
TURN_HOST = "127.0.4.81"


async def test_options_over_tls_to_the_fe_is_answered_and_logs_nothing(
        pki: LabPKI, caplog: pytest.LogCaptureFixture) -> None:
    async with MicrosoftSide.run(pki, fe=FrontEndConfig(certs=str(pki.directory)),
                                 with_edge=False) as side:
        listener = side.fe.listener
        with caplog.at_level(logging.DEBUG):
            status = await probe_sip(Transport.TLS, listener.host, listener.port,
                                     tls_name="fe.example.com", certs=pki.directory,
                                     cert="edge", timeout=5)
            await asyncio.sleep(0.2)  # the FE's side of the close, logged if it complains
        assert status == "200 OK"
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not loud, [r.getMessage() for r in loud]
        # The wrong name is a failed probe, not a pass.
        with pytest.raises(ProbeFailed):
            await probe_sip(Transport.TLS, listener.host, listener.port,
                            tls_name="cucm.video.example.com", certs=pki.directory,
                            cert="edge", timeout=5)


async def test_options_over_tcp_to_cucm_and_a_closed_port(pki: LabPKI) -> None:
    node = await Cucm.start(CucmConfig(listen=(f"tcp:{HOST}:0",), certs=str(pki.directory)))
    try:
        listener = node.stack.listener(Transport.TCP)
        assert listener is not None
        assert await probe_sip(Transport.TCP, HOST, listener.port, tls_name=None, certs=None,
                               cert=None, timeout=5) == "200 OK"
    finally:
        await node.close()
    with pytest.raises(ProbeFailed, match="no answer"):
        await probe_sip(Transport.TCP, HOST, listener.port, tls_name=None, certs=None,
                        cert=None, timeout=2)


async def test_stun_binding_to_the_turn_server() -> None:
    port = random_free_port(TURN_HOST, socket.SOCK_DGRAM, socket.SOCK_STREAM)
    server = TurnServer(TurnConfig(listen=TURN_HOST, ports=(port, port), realm="example.com"))
    await server.start()
    try:
        answer = await probe_stun(TURN_HOST, port, timeout=3)
        assert answer.startswith("STUN Binding success, mapped ('127."), answer
    finally:
        await server.stop()
    with pytest.raises(ProbeFailed, match="no STUN answer"):
        await probe_stun(TURN_HOST, port, timeout=1)


async def test_control_probe_passes_only_while_registered(pki: LabPKI) -> None:
    cucm = await Cucm.start(CucmConfig(listen=(f"tcp:{HOST}:0",), certs=str(pki.directory),
                                       t1=0.05))
    listener = cucm.stack.listener(Transport.TCP)
    assert listener is not None
    endpoint = await Endpoint.start(EndpointConfig(
        aor="3001@video.example.com", listen=(ListenSpec(Transport.TCP, EP_HOST, 0),),
        timers=TimerSettings(t1=0.05, t2=0.2, t4=0.2, timer_d=0.2),
        registrar=SipTarget(Transport.TCP, HOST, listener.port)))
    try:
        async with ControlServer(_Party(endpoint), EP_HOST, 0) as control:
            assert await probe_control(EP_HOST, control.port, timeout=3) == (
                "3001@video.example.com registered")
            await cucm.close()  # the registrar goes: the flow closes, the binding is lost
            registration = endpoint.registration
            assert registration is not None
            async with asyncio.timeout(5):
                while registration.registered.is_set():
                    await asyncio.sleep(0.05)
            with pytest.raises(ProbeFailed, match="not registered"):
                await probe_control(EP_HOST, control.port, timeout=3)
    finally:
        await endpoint.close()
        await cucm.close()


def test_cli_exit_status_and_messages() -> None:
    exe = gateway_executable()
    port = random_free_port(HOST, socket.SOCK_STREAM)
    closed = subprocess.run([exe, "probe", f"tcp:{HOST}:{port}", "--timeout", "2"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert closed.returncode == 1 and "no answer to OPTIONS" in closed.stderr
    bad = subprocess.run([exe, "probe", "ftp:host"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert bad.returncode == 2 and "needs a host and a port" in bad.stderr
    scheme = subprocess.run([exe, "probe", f"ftp:{HOST}:21"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert scheme.returncode == 1 and "scheme must be" in scheme.stderr
