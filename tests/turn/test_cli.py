"""`python -m turn` / `gateway turn` as a process: logs, SIGUSR1 stats, clean SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

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


def test_check_config_valid_invalid_and_with_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main as gateway_main

    good = tmp_path / "turn.toml"
    good.write_text('listen = "127.0.4.1"\nallow_peers = ["127.0.0.0/8"]\n[users]\nGw = "pw"\n')
    assert gateway_main(["turn", "--check-config", str(good)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"config OK: {good}: TURN 127.0.4.1:3478") and "pw" not in out.out
    # --set and the other flags are validated with the file.
    status = gateway_main(["turn", "--check-config", str(good), "--set",
                           'allow_peers=["10.201.0.0/16"]', "--ports", "3479"])
    out = capsys.readouterr()
    assert status == 0 and "10.201.0.0/16" in out.out and ":3479 " in out.out
    for argv, key in (
        (["--set", "relay_ports=9-1"], "relay_ports"),
        (["--set", "lisen=127.0.0.1"], "lisen"),
        (["--ports", "x"], "--ports"),
    ):
        assert gateway_main(["turn", "--check-config", str(good), *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"config error: {good}: ") and key in err, err
    bad = tmp_path / "bad.toml"
    bad.write_text('realm = "example.com"\nuser_quota = "ten"\n')
    assert gateway_main(["turn", "--check-config", str(bad)]) == 1
    assert "user_quota" in capsys.readouterr().err
    assert gateway_main(["turn", "--check-config", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    # No accounts: valid, with a warning.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert gateway_main(["turn", "--check-config", str(empty)]) == 0
    assert "warning: no users" in capsys.readouterr().err
