"""The simulated Lync client against another one through the FE, on loopback: the offer's
shape (multipart ICE draft-6 + RFC 5245, Microsoft attributes, SRTP keys with and without
MKI), ICE + SRTP media both ways with each key kind, states, hold/resume, voice -> video,
CANCEL, and the `gateway lync-client --call` CLI."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from certs.pki import LabPKI
from lab.lync.client import CallRefused, LyncCall, LyncClient
from lab.lync.offer import FALLBACK_DISPOSITION
from lab.lync.topology import MicrosoftSide
from media.ms_dialect import (
    IceVersion,
    ice_version_of,
    parse_legacy_candidate,
    read_stream,
)
from media.sdp import parse_sdp
from sip.multipart import parse_multipart

CONFIGS = Path(__file__).resolve().parents[2] / "lab" / "configs"


async def connected_pair(side: MicrosoftSide, *, video: bool = True, **callee: object
                         ) -> tuple[LyncClient, LyncClient, LyncCall, LyncCall]:
    alice = await side.client("alice", video=video)
    bob = await side.client("david", video=video, **callee)  # internal: registered to the FE
    call = await alice.call("david.jones@example.com")
    incoming = await asyncio.wait_for(bob.incoming_calls.get(), 10)
    await call.wait_connected()
    return alice, bob, call, incoming


async def test_offer_is_multipart_with_both_ice_versions_and_both_key_kinds(
        pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice")
        call = await alice.call("nobody@example.com")
        assert call.invite is not None
        invite = call.invite.request
        with pytest.raises(CallRefused):
            await call.wait_connected()
    parts = parse_multipart(invite.content_type or "", invite.body)
    assert [p.content_type for p in parts] == ["application/sdp", "application/sdp"]
    assert parts[0].disposition == FALLBACK_DISPOSITION
    assert "ms-proxy-2007fallback" not in (parts[1].disposition or "")
    draft6, rfc5245 = parse_sdp(parts[0].body), parse_sdp(parts[1].body)
    assert ice_version_of(draft6) is IceVersion.DRAFT6
    assert ice_version_of(rfc5245) is IceVersion.RFC5245
    for value in draft6.media[0].get_all("candidate"):
        assert parse_legacy_candidate(value).address == "127.0.1.10"
    assert [m.kind for m in rfc5245.media] == ["audio", "video"]
    for index, media in enumerate(rfc5245.media):
        stream = read_stream(rfc5245, index)
        assert stream.ice_ufrag and stream.ice_pwd
        assert {c.component for c in stream.candidates} == {1, 2}
        assert all(c.address == "127.0.1.10" for c in stream.candidates)
        assert [c.mki for c in stream.cryptos] == [(1, 1), None]  # with and without MKI
        assert stream.ssrc_range is not None
        assert stream.label == f"main-{media.kind}" and stream.x_source == stream.label
        assert media.get("rtcp-fb", ) is not None and "x-message" in (media.get("rtcp-fb") or "")
        assert media.get("encryption") == "required"
        assert media.proto == "RTP/SAVP"
    names = {c.name for c in rfc5245.media[0].codecs()}
    assert {"G722", "PCMU", "SIREN", "x-msrta"} <= names
    assert {"X-H264UC", "H264"} <= {c.name for c in rfc5245.media[1].codecs()}


@pytest.mark.parametrize("answer_mki", [True, False], ids=["mki", "no-mki"])
async def test_call_through_the_fe_has_srtp_media_both_ways(
        pki: LabPKI, answer_mki: bool) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        _, _, call, incoming = await connected_pair(side, answer_mki=answer_mki)
        assert call.state in ("connected", "media")
        report = await call.wait_media(both_ways=True, min_packets=20)
        assert report.packets_received >= 20 and report.packets_sent >= 20
        assert set(report.streams) == {"audio", "video"}
        assert report.ice_pair == "host/host"
        assert call.state == "media"
        other = await incoming.wait_media(both_ways=True, min_packets=20)
        assert other.packets_received >= 20
        # Every packet authenticated: nothing failed SRTP, keys as negotiated.
        for stream in [*call.streams, *incoming.streams]:
            assert stream.counters.bad == 0
            assert stream.counters.last_seq is not None
        answered = incoming.streams[0].cryptos[0]
        assert (answered.mki is not None) is answer_mki
        await call.hangup()
        await asyncio.wait_for(incoming.ended.wait(), 5)
        assert call.state == "ended" and incoming.state == "ended"


async def test_state_stays_connected_until_rtp_arrives(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        await side.client("david", video=False, auto_answer=False)
        call = await alice.call("david.jones@example.com")
        assert call.state == "connecting"
        await asyncio.wait_for(_until(lambda: call.state == "ringing", call), 10)
        await call.hangup()  # CANCEL before the answer
        assert call.state == "ended"
        with pytest.raises(CallRefused) as refused:
            await call.wait_connected()
        assert refused.value.status == 487


async def test_callee_sees_the_cancel(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        alice = await side.client("alice", video=False)
        bob = await side.client("david", video=False, auto_answer=False)
        call = await alice.call("david.jones@example.com")
        incoming = await asyncio.wait_for(bob.incoming_calls.get(), 10)
        assert incoming.state == "ringing"
        await call.hangup()
        await asyncio.wait_for(incoming.ended.wait(), 5)
        assert incoming.result == "cancelled by caller"


async def test_hold_and_resume(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        _, _, call, incoming = await connected_pair(side, video=False)
        await call.wait_media(both_ways=True, min_packets=10)
        await call.hold()
        assert [s.direction for s in call.streams] == ["sendonly"]
        assert [s.direction for s in incoming.streams] == ["recvonly"]
        assert not incoming.streams[0].sending  # the held side is silent
        assert call.streams[0].sending
        await call.resume()
        assert [s.direction for s in incoming.streams] == ["sendrecv"]
        assert incoming.streams[0].sending
        before = call.media().packets_received
        report = await call.wait_media(both_ways=True, min_packets=before + 10)
        assert report.packets_received >= before + 10


async def test_both_on_hold_is_inactive_until_each_resumes(pki: LabPKI) -> None:
    """A client already holding answers the other side's hold (sendonly) with inactive,
    not recvonly (which would take it off hold)."""
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        _, _, call, incoming = await connected_pair(side, video=False)
        await call.wait_media(both_ways=True, min_packets=5)
        await call.hold()
        await incoming.hold()
        assert [s.direction for s in incoming.streams] == ["sendonly"]
        assert [s.direction for s in call.streams] == ["inactive"]
        assert not call.streams[0].sending
        await incoming.resume()
        assert [s.direction for s in call.streams] == ["sendonly"]  # still holding
        assert call.streams[0].sending and not incoming.streams[0].sending
        await call.resume()
        assert [s.direction for s in incoming.streams] == ["sendrecv"]


async def test_voice_call_upgraded_to_video(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        _, _, call, incoming = await connected_pair(side, video=False)
        await call.wait_media(both_ways=True, min_packets=5)
        assert [s.kind for s in incoming.streams] == ["audio"]
        await call.add_video()
        assert [s.kind for s in incoming.streams] == ["audio", "video"]
        await asyncio.wait_for(
            _until(lambda: all(s.counters.received >= 10 for s in call.streams), call), 10)
        assert set(call.media().streams) == {"audio", "video"}


async def _until(predicate: object, call: LyncCall) -> None:
    """Wait on the call's change notifications until ``predicate()`` holds."""
    assert callable(predicate)
    while not predicate():
        call._changed.clear()
        await call._changed.wait()


async def test_cli_places_a_call_and_reports_json(pki: LabPKI) -> None:
    async with MicrosoftSide.run(pki, with_edge=False) as side:
        await side.client("david", video=False)
        fe = side.fe.listener
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "lync-client",
            "--config", str(CONFIGS / "lync-client-alice.toml"),
            "--set", f"certs={pki.directory}", "--set", f"registrar=tls:{fe.host}:{fe.port}",
            "--call", "david.jones@example.com", "--no-video", "--duration", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 40)
    assert process.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["result"] == "passed"
    assert report["ice_pair"] == "host/host"
    assert report["packets"]["received"] >= 10
    assert "ready" in err.decode()


def test_client_configs_check() -> None:
    from lab.lync.cli import client_main

    for name in ("lync-client-alice.toml", "lync-client-david.toml"):
        assert client_main(["--check-config", str(CONFIGS / name)]) == 0
    assert client_main(["--check-config", str(CONFIGS / "lync-client-alice.toml"),
                        "--set", "aor=nobody"]) == 1
