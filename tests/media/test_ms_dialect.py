"""Reading the Microsoft dialect ([MS-SDPEXT], [MS-ICE], RFC 4568, RFC 5245) from Lync samples."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.ms_dialect import (
    Candidate,
    CandidateTransport,
    CandidateType,
    Crypto,
    EncryptionLevel,
    EncryptionMismatch,
    EncryptionPolicy,
    IceVersion,
    SsrcRange,
    ice_version_of,
    negotiate_encryption,
    offered_encryption,
    parse_candidate,
    parse_legacy_candidate,
    pick_sdp,
    pick_sdp_body,
    read_microsoft,
)
from media.sdp import Media, SdpError, parse_sdp

from .conftest import load_mime, load_sdp


def test_v19_stream_facts(lync_v19: bytes) -> None:
    audio, video = read_microsoft(parse_sdp(lync_v19))
    assert audio.ice_version is IceVersion.RFC5245
    assert (audio.ice_ufrag, audio.ice_pwd) == ("c8Kx", "Hb4ho4Jaqa0wIo3fpF9Q3Mp2")
    assert audio.address == "198.51.100.7"
    assert audio.rtcp_port == 53011
    assert audio.ssrc_range == SsrcRange(2921862401, 2921862401)
    assert video.ssrc_range == SsrcRange(2921862402, 2921862501)
    assert (audio.label, audio.x_source, video.label) == ("main-audio", "main-audio",
                                                          "main-video")
    assert audio.encryption is EncryptionLevel.REQUIRED
    transports = {c.transport for c in audio.candidates}
    assert transports == {CandidateTransport.UDP, CandidateTransport.TCP_ACT,
                          CandidateTransport.TCP_PASS}
    ipv6 = [c for c in audio.candidates if c.is_ipv6]
    assert [(c.address, c.port) for c in ipv6] == [("2001:db8::21", 50014),
                                                  ("2001:db8::21", 50015)]
    assert not audio.legacy_candidates
    # a=cryptoscale is not an a=crypto; the two crypto lines: with and without MKI
    assert [(c.tag, c.mki, c.lifetime) for c in audio.cryptos] == [
        (2, (1, 1), "2^31"), (3, None, "2^31")]


def test_v6_stream_facts(lync_v6: bytes) -> None:
    sdp = parse_sdp(lync_v6)
    assert ice_version_of(sdp) is IceVersion.DRAFT6
    audio, video = read_microsoft(sdp)
    assert audio.ice_version is IceVersion.DRAFT6 and not audio.candidates
    first = audio.legacy_candidates[0]
    assert first.username == "kOc/wXjmKwqnFINRmwzZTljSni9+ghGgWrWlPLiDRUk"
    assert first.password == "eI4zcatVFnaMF02oYpjU/g"
    assert (first.component, first.transport, first.quality) == (1, CandidateTransport.UDP,
                                                                 "0.830")
    assert [(c.address, c.port) for c in audio.legacy_candidates] == [
        ("10.0.0.21", 50012), ("10.0.0.21", 50013), ("198.51.100.7", 53008),
        ("198.51.100.7", 53009)]
    assert len(video.legacy_candidates) == 2


def test_draft6_only_offer_with_tcp_pass_and_optional_encryption() -> None:
    (audio,) = read_microsoft(parse_sdp(load_sdp("lync_draft6_audio_offer.sdp")))
    assert audio.ice_version is IceVersion.DRAFT6
    assert audio.legacy_candidates[2].transport is CandidateTransport.TCP_PASS
    assert audio.encryption is EncryptionLevel.OPTIONAL
    assert audio.cryptos[0].mki == (1, 1)


def test_candidate_parse_and_write_round_trip() -> None:
    value = "3 1 TCP-PASS 174455807 198.51.100.7 54012 typ relay raddr 203.0.113.40 rport 50016"
    cand = parse_candidate(value)
    assert cand == Candidate("3", 1, CandidateTransport.TCP_PASS, 174455807, "198.51.100.7",
                             54012, CandidateType.RELAY, "203.0.113.40", 50016)
    assert cand.value() == value
    assert cand.attribute().name == "candidate"
    v6 = parse_candidate("2 1 UDP 33553407 2001:db8::21 50014 typ host generation 0")
    assert v6.attribute().name == "x-candidate-ipv6"
    assert v6.extensions == (("generation", "0"),)
    assert v6.value().endswith("typ host generation 0")
    legacy = "kOc/wXjm 1 eI4zcatV UDP 0.830 10.0.0.21 50012"
    assert parse_legacy_candidate(legacy).value() == legacy


@pytest.mark.parametrize("value", [
    "", "1 1 UDP 1 10.0.0.1 5000", "1 1 UDP 1 10.0.0.1 5000 typ hostile",
    "1 1 SCTP 1 10.0.0.1 5000 typ host", "1 x UDP 1 10.0.0.1 5000 typ host",
    "1 1 UDP 1 not-an-ip 5000 typ host", "1 1 UDP 1 10.0.0.1 70000 typ host",
    "1 1 UDP 1 10.0.0.1 5000 typ srflx raddr", "1 0 UDP 1 10.0.0.1 5000 typ host",
])
def test_bad_candidates_raise_sdp_error(value: str) -> None:
    with pytest.raises(SdpError):
        parse_candidate(value)


@pytest.mark.parametrize("value", ["a 1 b UDP 2.0 10.0.0.1 1", "a 1 b UDP 0.5 10.0.0.1",
                                   "a! 1 b UDP 0.5 10.0.0.1 1"])
def test_bad_legacy_candidates_raise_sdp_error(value: str) -> None:
    with pytest.raises(SdpError):
        parse_legacy_candidate(value)


def test_crypto_with_and_without_mki() -> None:
    key = bytes(range(30))
    b64 = base64.b64encode(key).decode()
    with_mki = Crypto.parse(f"2 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31|1:1")
    assert (with_mki.master_key, with_mki.master_salt) == (key[:16], key[16:])
    assert with_mki.mki == (1, 1)
    assert with_mki.value() == f"2 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31|1:1"
    without = Crypto(3, "AES_CM_128_HMAC_SHA1_80", key, lifetime="2^31")
    assert without.value() == f"3 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31"
    assert Crypto.parse(without.value()) == without
    bare = Crypto.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64} UNENCRYPTED_SRTCP")
    assert bare.lifetime is None and bare.mki is None
    assert bare.session_params == ("UNENCRYPTED_SRTCP",)


@pytest.mark.parametrize("value", [
    "x AES_CM_128_HMAC_SHA1_80 inline:AAAA", "1 AES_CM_128_HMAC_SHA1_80 key:AAAA",
    "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!", "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",
    "1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(30)).decode() + "|forever",
    "1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(30)).decode() + "|1:0",
])
def test_bad_crypto_raises_sdp_error(value: str) -> None:
    with pytest.raises(SdpError):
        Crypto.parse(value)


def test_ssrc_range() -> None:
    assert SsrcRange.parse("101-200") == SsrcRange(101, 200)
    assert str(SsrcRange(1, 1).attribute()) == "x-ssrc-range:1-1"
    for bad in ("200-101", "1", "a-b", "0-4294967296"):
        with pytest.raises(SdpError):
            SsrcRange.parse(bad)


def _media(proto: str, *attrs: str) -> Media:
    text = f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 1 {proto} 0\r\n"
    return parse_sdp(text + "".join(f"a={a}\r\n" for a in attrs)).media[0]


def test_offered_encryption_explicit_or_inferred() -> None:
    assert offered_encryption(_media("RTP/AVP", "encryption:rejected")) is EncryptionLevel.REJECTED
    assert offered_encryption(_media("RTP/SAVP")) is EncryptionLevel.REQUIRED
    assert offered_encryption(_media("RTP/AVP", "crypto:1 X inline:A")) is EncryptionLevel.OPTIONAL
    assert offered_encryption(_media("RTP/AVP")) is EncryptionLevel.REJECTED
    with pytest.raises(SdpError):
        offered_encryption(_media("RTP/AVP", "encryption:maybe"))


# (offered level, policy) -> SRTP on the Microsoft leg, or None for a 488 mismatch
TABLE = {
    (EncryptionLevel.REQUIRED, EncryptionPolicy.REQUIRE): True,
    (EncryptionLevel.REQUIRED, EncryptionPolicy.SUPPORT): True,
    (EncryptionLevel.REQUIRED, EncryptionPolicy.DO_NOT_SUPPORT): None,
    (EncryptionLevel.OPTIONAL, EncryptionPolicy.REQUIRE): True,
    (EncryptionLevel.OPTIONAL, EncryptionPolicy.SUPPORT): True,
    (EncryptionLevel.OPTIONAL, EncryptionPolicy.DO_NOT_SUPPORT): False,
    (EncryptionLevel.REJECTED, EncryptionPolicy.REQUIRE): None,
    (EncryptionLevel.REJECTED, EncryptionPolicy.SUPPORT): False,
    (EncryptionLevel.REJECTED, EncryptionPolicy.DO_NOT_SUPPORT): False,
}


@pytest.mark.parametrize("case", list(TABLE.items()),
                         ids=lambda c: f"{c[0][0].value}-{c[0][1].value}")
def test_encryption_negotiation_table(case) -> None:
    (offered, policy), expected = case
    if expected is None:
        with pytest.raises(EncryptionMismatch) as info:
            negotiate_encryption(offered, policy)
        assert info.value.status_hint == 488
        assert "encryption" in info.value.message.lower()
    else:
        assert negotiate_encryption(offered, policy) is expected


def test_pick_single_part_bodies() -> None:
    body = load_sdp("lync_draft6_audio_offer.sdp")
    assert pick_sdp_body("application/sdp", body) == (body, IceVersion.DRAFT6)
    plain = load_sdp("video_endpoint_offer.sdp")
    assert pick_sdp_body("Application/SDP; charset=utf-8", plain) == (plain, IceVersion.NONE)
    with pytest.raises(SdpError) as info:
        pick_sdp_body("text/plain", b"hello")
    assert info.value.status_hint == 415


def test_pick_prefers_rfc5245_part_of_multipart(lync_v19: bytes) -> None:
    content_type, body = load_mime("lync2013_av_offer.mime")
    chosen, version = pick_sdp_body(content_type, body)
    assert version is IceVersion.RFC5245
    assert parse_sdp(chosen) == parse_sdp(lync_v19)


def test_pick_falls_back_to_draft6_part_when_alone(lync_v6: bytes) -> None:
    content_type, body = load_mime("lync2013_av_offer.mime")
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    first, _second = body.split(b"\r\n--" + boundary + b"\r\n", 1)
    only_fallback = first + b"\r\n--" + boundary + b"--\r\n"
    chosen, version = pick_sdp_body(content_type, only_fallback)
    assert version is IceVersion.DRAFT6
    assert parse_sdp(chosen) == parse_sdp(lync_v6)



def test_pick_sdp_gives_the_chosen_part_parsed(lync_v19: bytes, lync_v6: bytes) -> None:
    content_type, body = load_mime("lync2013_av_offer.mime")
    assert pick_sdp(content_type, body) == (parse_sdp(lync_v19), IceVersion.RFC5245)
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    first, _second = body.split(b"\r\n--" + boundary + b"\r\n", 1)
    only_fallback = first + b"\r\n--" + boundary + b"--\r\n"
    assert pick_sdp(content_type, only_fallback) == (parse_sdp(lync_v6), IceVersion.DRAFT6)
    plain = load_sdp("video_endpoint_offer.sdp")
    assert pick_sdp("application/sdp", plain) == (parse_sdp(plain), IceVersion.NONE)
    with pytest.raises(SdpError) as info:
        pick_sdp("text/plain", b"hello")
    assert info.value.status_hint == 415

@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["candidate", "x-candidate-ipv6", "crypto", "x-ssrc-range", "rtcp",
                     "encryption", "ice-ufrag", "label"]),
    st.text(alphabet="0123456789 .:|^-/+=abcTCPUDtyphostrelay", max_size=60)), max_size=6))
def test_fuzz_microsoft_attributes_only_raise_sdp_error(attrs) -> None:
    text = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/SAVP 0\r\n"
    text += "".join(f"a={name}:{value.strip()}\r\n" for name, value in attrs)
    try:
        read_microsoft(parse_sdp(text))
    except SdpError:
        pass
