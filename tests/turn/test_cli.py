"""`python -m turn` / `gateway turn` as a process: logs, SIGUSR1 stats, clean SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from .helpers import relay_range

ROOT = Path(__file__).resolve().parents[2]


async def wait_line(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    while True:
        raw = await asyncio.wait_for(stream.readline(), 10)
        assert raw, f"process ended before {needle!r}: {seen}"
        line = raw.decode()
        seen.append(line)
        if needle in line:
            return line


async def test_python_m_turn_logs_listening_stats_on_sigusr1_and_exits_on_sigterm() -> None:
    low, high = relay_range()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turn",
        "--listen",
        "127.0.0.1",
        "--ports",
        "0",
        "--relay-ports",
        f"{low}-{high}",
        "--realm",
        "example.com",
        "--user",
        "GatewayB2BUA:secret",
        "--allow-peer",
        "127.0.0.0/8",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        udp = await wait_line(proc.stderr, "TURN listening on udp 127.0.0.1:", seen)
        await wait_line(proc.stderr, "TURN listening on tcp 127.0.0.1:", seen)
        port = int(udp.rsplit(":", 1)[1])
        assert port > 0
        proc.send_signal(signal.SIGUSR1)
        stats = await wait_line(proc.stderr, "TURN stats:", seen)
        assert "allocations=0" in stats
        proc.send_signal(signal.SIGTERM)
        await wait_line(proc.stderr, "TURN stopped:", seen)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not any("secret" in line for line in seen)


async def test_gateway_turn_rejects_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "turn.toml"
    config.write_text('relay_portz = "1-2"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "turn",
        "--config",
        str(config),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"relay_portz" in err
