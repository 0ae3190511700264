"""SSLKEYLOGFILE: every role's TLS context writes its keys, so tshark decrypts a capture of
the gateway's Microsoft-facing (65072) leg and shows the SIP inside."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from certs.pki import LabPKI
from sip.tls import client_context, server_context


def test_sip_tls_contexts_honour_sslkeylogfile(lab_pki: LabPKI, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keys))
    host = lab_pki.host("gateway")
    server = server_context(host.chain, host.key, ca_file=lab_pki.ca_cert)
    client = client_context(lab_pki.ca_cert)
    assert server.keylog_filename == client.keylog_filename == str(keys)
    assert lab_pki.server_context("gateway").keylog_filename == str(keys)
    monkeypatch.delenv("SSLKEYLOGFILE")
    assert client_context(lab_pki.ca_cert).keylog_filename is None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dumpcap") is None or shutil.which("tshark") is None,
                    reason="tshark/dumpcap not installed (scripts/install-peers.sh)")
async def test_tshark_decrypts_the_microsoft_leg_of_a_lab_capture(
        lab_pki: LabPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.hosts import HOSTS
    from lab.topology import Lab

    keys = tmp_path / "keys.log"
    capture = tmp_path / "lab.pcapng"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keys))
    gateway_host = HOSTS["exp01.video.example.com"]
    # Before the lab starts: the FE's TLS connection to the gateway opens at start-up and
    # tshark needs its handshake. Other labs share the address; the port picks ours later.
    dumpcap = await asyncio.create_subprocess_exec(
        "dumpcap", "-q", "-i", "lo", "-f", f"tcp and host {gateway_host}", "-w", str(capture),
        "-a", "duration:120", "-a", "filesize:200000",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert dumpcap.stderr is not None
        started = await asyncio.wait_for(dumpcap.stderr.readline(), 30)
        assert b"Capturing on" in started, started
        async with Lab(lab_pki, any_port=True, management=False) as lab:
            assert lab.gateway is not None
            from gateway.status import LegSide

            port = lab.gateway.stacks[LegSide.MICROSOFT].listeners[0].port
            alice = await lab.add_client("alice")
            call = await alice.call("3001@video.example.com", video=False)
            await call.wait_connected()
            await call.hangup()
            # dumpcap hands packets to the file a batch at a time: wait until the BYE's
            # answer is in it (decrypted), then stop.
            deadline = asyncio.get_running_loop().time() + 60
            while (not any(r[1] == "200" and r[2] == call.call_id and r[3] == "BYE"
                           for r in await asyncio.to_thread(decrypted, capture, keys, port))
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.5)
    finally:
        dumpcap.terminate()
        await asyncio.wait_for(dumpcap.wait(), 30)
    assert keys.stat().st_size > 0
    rows = decrypted(capture, keys, port)
    assert any(r[0] == "INVITE" and r[2] == call.call_id for r in rows), rows[:20]
    assert any(r[0] == "BYE" and r[2] == call.call_id for r in rows)
    # Without the keys the same capture shows no SIP on that port (it really was TLS).
    monkeypatch.delenv("SSLKEYLOGFILE")
    assert not decrypted(capture, tmp_path / "no-keys.log", port)


def decrypted(capture: Path, keys: Path, port: int) -> list[list[str]]:
    """(method, status, Call-ID, CSeq method) of each SIP message tshark finds on ``port``."""
    result = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-o", f"tls.keylog_file:{keys}",
         "-d", f"tcp.port=={port},tls", "-d", f"tls.port=={port},sip",
         "-Y", f"tcp.port=={port} && sip", "-T", "fields", "-e", "sip.Method",
         "-e", "sip.Status-Code", "-e", "sip.Call-ID", "-e", "sip.CSeq.method"],
        capture_output=True, text=True, timeout=120, check=False)
    return [line.split("\t") for line in result.stdout.splitlines() if line.strip()]
