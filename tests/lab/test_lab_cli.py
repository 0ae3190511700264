"""`gateway lab` run as a subprocess: PKI, two endpoints, a call per transport, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_lab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "lab",
            "--certs",
            str(tmp_path / "pki"),
            "--sip-port",
            "0",
            "--tls-port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lab_json_reports_a_passing_call_per_transport(tmp_path: Path) -> None:
    result = run_lab(tmp_path, "--json", "--duration", "0.05")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["passed"], report["failed"]) == (3, 0)
    assert [c["transport"] for c in report["calls"]] == ["udp", "tcp", "tls"]
    for call in report["calls"]:
        assert call["passed"] is True and call["result"] == "completed"
        assert call["setup_ms"] >= 0 and call["call_id"].endswith("@127.0.3.11")
        # Both endpoints log one line for the call, naming its Call-ID.
        assert result.stderr.count(call["call_id"]) == 2
    assert (tmp_path / "pki" / "endpoint.pem").exists()  # the lab PKI was made


def test_lab_table_output(tmp_path: Path) -> None:
    result = run_lab(tmp_path, "--duration", "0")
    assert result.returncode == 0, result.stderr
    for word in ("udp", "tcp", "tls", "PASS", "setup ms"):
        assert word in result.stdout
    assert "FAIL" not in result.stdout


def test_lab_fails_cleanly_when_its_ports_are_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.3.11", 0))
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "lab",
                "--certs",
                str(tmp_path / "pki"),
                "--sip-port",
                str(port),
                "--tls-port",
                "0",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "gateway lab:" in result.stderr and "Traceback" not in result.stderr
