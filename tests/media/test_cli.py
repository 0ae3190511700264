"""`gateway sdp`: rewrite bodies from stdin, errors on stderr with status 1."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from media import cli
from media.ms_dialect import read_microsoft
from media.sdp import parse_sdp

from .conftest import DATA, load_mime, load_sdp


def run(monkeypatch, capsys, data: bytes, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_multipart_lync_offer_to_standard(monkeypatch, capsys) -> None:
    content_type, body = load_mime("lync2013_av_offer.mime")
    code, out, err = run(monkeypatch, capsys, body, "--to", "standard",
                         "--content-type", content_type)
    assert (code, err) == (0, "")
    sdp = parse_sdp(out)
    assert sdp.connection.address == cli.DEMO_VIDEO_SIDE
    assert [m.kind for m in sdp.media] == ["audio", "video"]
    assert "candidate" not in out and "X-H264UC" not in out


def test_multipart_boundary_sniffed_without_content_type(monkeypatch, capsys) -> None:
    _, body = load_mime("lync2013_av_offer.mime")
    code, out, _ = run(monkeypatch, capsys, body, "--to", "standard")
    assert code == 0 and "m=video 56002 RTP/AVP 122" in out


def test_endpoint_offer_to_microsoft(monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, load_sdp("video_endpoint_offer.sdp"),
                       "--to", "microsoft")
    assert code == 0
    audio, video = read_microsoft(parse_sdp(out))
    assert audio.media.proto == "RTP/SAVP" and audio.cryptos[0].mki is None
    assert len(audio.candidates) == 6 and audio.ice_ufrag == cli.DEMO_UFRAG


def test_errors_go_to_stderr(monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, b"not sdp", "--to", "standard")
    assert (code, out) == (1, "")
    assert err.startswith("gateway sdp: error:") and "(SIP 400)" in err
    code, _, err = run(monkeypatch, capsys, load_sdp("lync_draft6_audio_offer.sdp").replace(
        b"optional", b"required"), "--to", "standard", "--encryption", "none")
    assert code == 1 and "(SIP 488)" in err


def test_bad_arguments_exit_2(monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run(monkeypatch, capsys, b"", "--to", "sideways")
    assert info.value.code == 2


def test_through_the_gateway_dispatcher() -> None:
    body = (DATA / "video_endpoint_offer.sdp").read_bytes()
    done = subprocess.run([sys.executable, "-m", "gateway", "sdp", "--to", "microsoft",
                           "--encryption", "none"], input=body, capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert b"m=audio 56000 RTP/AVP" in done.stdout and b"a=encryption:rejected" in done.stdout
