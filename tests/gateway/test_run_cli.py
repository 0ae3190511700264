"""`gateway run --check-config`: validates without starting, exit 0 / 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import run

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data" / "gateway"


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_config_of_the_shipped_default_exits_0() -> None:
    done = gateway("run", "--check-config", "gateway/default.toml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config OK: exp01.video.example.com")
    assert "1 zone, 2 search rules, 1 transform" in done.stdout


def test_check_config_of_a_broken_file_exits_1_naming_the_key() -> None:
    done = gateway("run", "--check-config", str(DATA / "bad_unknown_key.toml"))
    assert done.returncode == 1
    assert "unknown key 'b2bua.max_call'" in done.stderr
    assert done.stdout == ""


def test_check_config_reads_the_environment() -> None:
    done = gateway(
        "run", "--check-config", "gateway/default.toml", env={"GATEWAY_B2BUA_MAX_CALLS": "x"}
    )
    assert done.returncode == 1
    assert "b2bua.max_calls: expected integer, got string (from GATEWAY_B2BUA_MAX_CALLS)" in (
        done.stderr
    )


def test_check_config_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.check_config(run.DEFAULT_CONFIG, environ={}) == 0
    assert capsys.readouterr().out.startswith("config OK: ")
    assert run.check_config(DATA / "bad_wrong_type.toml", environ={}) == 1
    assert "b2bua.max_calls: expected integer, got string" in capsys.readouterr().err
    assert run.check_config(DATA / "missing.toml", environ={}) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_set_flag_beats_environment(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"GATEWAY_B2BUA_MAX_CALLS": "x"}
    status = run.check_config(run.DEFAULT_CONFIG, ["b2bua.max_calls=7"], environ=env)
    assert status == 0
    assert "max_calls 7" in capsys.readouterr().out


def test_warnings_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = ", ".join(f'{{ address = "127.0.1.{i}" }}' for i in range(1, 28))
    path = tmp_path / "many.toml"
    path.write_text(f"[b2bua]\ntrusted_hosts = [{items}]\n")
    assert run.check_config(path, environ={}) == 0
    captured = capsys.readouterr()
    assert "warning: b2bua.trusted_hosts: 27 trusted hosts exceed" in captured.err
    assert captured.out.startswith("config OK: ")


def test_parser() -> None:
    args = run.build_parser().parse_args(
        ["--config", "x.toml", "--set", "b2bua.max_calls=5", "--set", "system.host_name=e"]
    )
    assert args.config == Path("x.toml")
    assert args.check_config is None
    assert args.overrides == ["b2bua.max_calls=5", "system.host_name=e"]


def test_run_refuses_a_broken_config_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run.main(["--config", str(DATA / "bad_regex.toml")]) == 1
    assert "search_rules[0].pattern" in capsys.readouterr().err
