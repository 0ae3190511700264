"""`gateway lab` run as a subprocess on free ports (--any-port): the whole topology, the
demo matrix, JSON out (and the table), exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from certs.pki import LabPKI

EXPECTED = {
    "internal Lync -> endpoint": "host",
    "endpoint -> internal Lync": "host",
    "external Lync via Edge and TURN -> endpoint": "relay",
    "hold/resume": "host",
    "voice -> video": "host",
    "IM through the broker": None,
}


def run_lab(pki: LabPKI, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "lab", "--certs", str(pki.directory), "--any-port",
         *args],
        capture_output=True, text=True, timeout=timeout, check=False)


def test_json_demo_matrix_passes_with_media_both_ways(lab_pki: LabPKI) -> None:
    result = run_lab(lab_pki, "--json")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads(result.stdout)  # stdout holds only the JSON object
    assert (report["passed"], report["failed"]) == (6, 0)
    assert [c["name"] for c in report["calls"]] == list(EXPECTED)
    for call in report["calls"]:
        assert set(call) == {"name", "caller", "callee", "path", "ice_pair", "packets",
                             "result", "reason"}
        assert call["result"] == "passed", call
        expected = EXPECTED[call["name"]]
        if expected is None:  # the IM row: one MESSAGE delivered, one 200 back
            assert call["packets"] == {"to_callee": 1, "to_caller": 1}
            assert call["callee"] == "imp@video.example.com" and call["ice_pair"] is None
            assert "(IM session)" in call["reason"], call  # as Lync 2010+ and sipe send IM
            continue
        assert call["packets"]["to_callee"] >= 10 and call["packets"]["to_caller"] >= 10
        if expected == "relay":
            assert "relay" in call["ice_pair"].split("/"), call
        else:  # the client's host candidate, to the gateway's host or DMZ relay
            assert call["ice_pair"].split("/")[0] == "host", call
    # Progress went to stderr, a line per role.
    for role in ("dmz-turn", "gateway", "lync-fe", "lync-edge", "cucm", "imp", "alice"):
        assert f"lab: {role}: up" in result.stderr


def test_table_and_load_calls(lab_pki: LabPKI) -> None:
    result = run_lab(lab_pki, "--calls", "4", "--concurrency", "2", "--duration", "0.1")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    for word in ("call 1", "call 4", "host", "PASS"):
        assert word in result.stdout
    assert "FAIL" not in result.stdout


def test_lab_fails_cleanly_when_the_pki_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "lab", "--certs", str(blocker / "pki"), "--json",
         "--any-port"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "lab: certs: failed" in result.stderr and "gateway lab:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--calls", "0"], ["--concurrency", "-1"]])
def test_bad_numbers_are_refused(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "lab", *args],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "positive" in result.stderr
