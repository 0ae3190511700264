"""Shutdown: a draining gateway refuses new INVITEs with 503 and BYEs its calls; ``gateway run``
drains on SIGTERM and exits 0 (a real subprocess, with ``--set`` overriding the config)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from certs.pki import LabPKI
from sip.stack import Hop
from sip.transport import Transport
from tests.gateway.test_runtime import (
    GATEWAY_HOST,
    GATEWAY_NAME,
    WAIT,
    FrontEnd,
    Lab,
    endpoint_port,
    lab_toml,
    make_lab,
    only_call,
    start_endpoint,
)
from tests.peers.procs import random_free_port

__all__ = ["make_lab"]

ROOT = Path(__file__).resolve().parent.parent.parent
LISTENING = re.compile(r"listening on (udp|tcp|tls):([\d.]+):(\d+)")


async def test_drain_byes_calls_and_refuses_new_invites(make_lab: Any) -> None:
    lab: Lab = await make_lab()
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    video_call = only_call(lab.endpoint)
    assert await asyncio.wait_for(lab.gateway.drain(5.0), WAIT)
    await asyncio.wait_for(call.ended.wait(), WAIT)
    await asyncio.wait_for(video_call.ended.wait(), WAIT)
    assert call.bye is not None and "gateway shutting down" in (call.bye.headers.get("Reason")
                                                                 or "")
    assert lab.gateway.pool.ports_in_use == 0
    _, refused = await lab.fe.call("3001@video.example.com")
    assert refused.status == 503 and "shutting down" in refused.reason
    assert lab.gateway.status(0.0).system.draining
    assert 'reason="draining"} 1.0' in lab.gateway.metrics.render().decode()


async def test_gateway_run_drains_on_sigterm_and_exits_0(pki: LabPKI, tmp_path: Path) -> None:
    endpoint = await start_endpoint(pki)
    fe = await FrontEnd.start(pki)
    try:
        text = lab_toml(pki, endpoint_port=endpoint_port(endpoint), fe_port=fe.port)
        config = tmp_path / "gateway.toml"
        config.write_text(text)
        management = random_free_port("127.0.0.1", socket.SOCK_STREAM)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "run", "--config", str(config),
            "--set", f"system.management=127.0.0.1:{management}",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        seen: dict[tuple[str, str, int], str] = {}
        lines: list[str] = []
        try:
            async with asyncio.timeout(20):
                while ("http", "127.0.0.1", management) not in seen or len(seen) < 4:
                    raw = await proc.stderr.readline()
                    assert raw, "gateway exited early:\n" + "".join(lines)
                    line = raw.decode()
                    lines.append(line)
                    match = LISTENING.search(line)
                    if match:
                        seen[(match[1], match[2], int(match[3]))] = line
                    if "listening on http:" in line:
                        seen[("http", "127.0.0.1", int(line.rsplit(":", 1)[1]))] = line
            listen = [port for kind, host, port in seen if kind == "tls" and host == GATEWAY_HOST]
            assert listen, lines
            fe.gateway = Hop(Transport.TLS, GATEWAY_HOST, listen[0],
                             server_hostname=GATEWAY_NAME)
            call, response = await fe.call("3001@video.example.com")
            assert response.status == 200 and call is not None
            video_call = only_call(endpoint)
            await asyncio.wait_for(video_call.confirmed.wait(), WAIT)

            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(call.ended.wait(), WAIT)
            await asyncio.wait_for(video_call.ended.wait(), WAIT)
            assert "gateway shutting down" in (call.bye.headers.get("Reason") or "")  # type: ignore[union-attr]
            rest = await asyncio.wait_for(proc.stderr.read(), WAIT)
            code = await asyncio.wait_for(proc.wait(), WAIT)
            log = "".join(lines) + rest.decode()
            assert code == 0, log
            assert "draining 1 calls" in log and "stopped" in log
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await fe.stack.close()
        await endpoint.close()
