"""Microsoft <-> standard SDP rewrites on Lync/SfB samples, and the delayed-offer builder."""

from __future__ import annotations

import dataclasses

import pytest

from media.ms_dialect import (
    MICROSOFT_ONLY_ATTRIBUTES,
    Candidate,
    CandidateTransport,
    CandidateType,
    Crypto,
    EncryptionMismatch,
    EncryptionPolicy,
    SsrcRange,
    read_microsoft,
)
from media.rewrite import (
    NoCommonCodec,
    SdpPlan,
    StreamPlan,
    VideoSecurity,
    build_delayed_offer,
    check_ice_credentials,
    make_ice_credentials,
    to_microsoft,
    to_standard,
)
from media.sdp import SessionDescription, parse_sdp
from sip.errors import LocalProtocolError, RemoteProtocolError

from .conftest import load_sdp

KEY = bytes(range(100, 130))
GW_VIDEO = "127.0.0.10"
GW_MS = "127.0.0.20"


def video_plan(*streams: StreamPlan, **kw) -> SdpPlan:
    return SdpPlan(GW_VIDEO, streams, **kw)


def ms_stream(kind: str, port: int, index: int | None, **kw) -> StreamPlan:
    cands = (
        Candidate("1", 1, CandidateTransport.UDP, 2130706431, GW_MS, port, CandidateType.HOST),
        Candidate("1", 2, CandidateTransport.UDP, 2130706430, GW_MS, port + 1,
                  CandidateType.HOST),
        Candidate("2", 1, CandidateTransport.UDP, 1694498815, "127.0.0.21", port,
                  CandidateType.SRFLX, GW_MS, port),
        Candidate("3", 1, CandidateTransport.UDP, 16777215, "127.0.0.22", 24000,
                  CandidateType.RELAY, "127.0.0.21", port),
    )
    args = dict(ice_ufrag="Gw4u", ice_pwd="P" * 24, candidates=cands, srtp_key=KEY,
                ssrc_range=SsrcRange(5000, 5000) if kind == "audio" else SsrcRange(6000, 6099))
    args.update(kw)
    return StreamPlan(kind, port, index, **args)


# -- Microsoft -> standard -----------------------------------------------------------------

def test_lync_av_offer_to_standard(lync_v19: bytes) -> None:
    plan = video_plan(StreamPlan("audio", 56000, 0), StreamPlan("video", 56002, 1))
    out = to_standard(parse_sdp(lync_v19), plan)
    text = str(out)
    # one plain SDP that parses again, pointing at the gateway
    assert parse_sdp(text) == out
    assert out.connection.address == GW_VIDEO and out.origin.address == GW_VIDEO
    audio, video = out.media
    assert (audio.port, audio.proto, video.port, video.proto) == (56000, "RTP/AVP", 56002,
                                                                  "RTP/AVP")
    # only codecs the video side takes; stereo G722 (117), SIREN, G7221, x-msrta, CN dropped
    assert [(c.payload_type, c.name) for c in audio.codecs()] == [
        (9, "G722"), (0, "PCMU"), (8, "PCMA"), (101, "telephone-event")]
    # X-H264UC becomes H.264 packetization-mode=1; x-rtvc1 and x-ulpfecuc dropped
    (h264,) = video.codecs()
    assert (h264.payload_type, h264.name) == (122, "H264")
    assert "packetization-mode=1" in h264.fmtp
    for media in out.media:
        names = {a.name.lower() for a in media.attributes}
        assert not names & MICROSOFT_ONLY_ATTRIBUTES
        assert not names & {"crypto", "rtcp-fb", "rtcp-rsize", "maxptime"}
    for word in ("candidate", "ice-", "x-", "crypto", "encryption", "label", "X-H264UC"):
        assert word not in text


def test_to_standard_sdes_srtp_when_policy_says(lync_v19: bytes) -> None:
    plan = video_plan(StreamPlan("audio", 56000, 0, srtp_key=KEY),
                      StreamPlan("video", 56002, 1, srtp_key=KEY),
                      video_security=VideoSecurity.SRTP)
    out = to_standard(parse_sdp(lync_v19), plan)
    for media in out.media:
        assert media.proto == "RTP/SAVP"
        (crypto,) = (Crypto.parse(v) for v in media.get_all("crypto"))
        assert crypto.key_salt == KEY and crypto.mki is None


def test_to_standard_draft6_offer_and_rejected_extra_stream() -> None:
    sdp = parse_sdp(load_sdp("sfb_audio_share_offer.sdp"))
    plan = video_plan(StreamPlan("audio", 56000, 0))  # the share stream is not carried
    out = to_standard(sdp, plan)
    (audio,) = out.media
    assert audio.direction == "sendonly"  # hold state survives
    assert audio.get("ptime") == "20"
    assert [c.name for c in audio.codecs()] == ["G722", "PCMU", "PCMA", "telephone-event"]


def test_to_standard_encryption_mismatch_is_488(lync_v19: bytes) -> None:
    plan = video_plan(StreamPlan("audio", 56000, 0), StreamPlan("video", 56002, 1),
                      encryption=EncryptionPolicy.DO_NOT_SUPPORT)
    with pytest.raises(EncryptionMismatch) as info:
        to_standard(parse_sdp(lync_v19), plan)
    assert info.value.status_hint == 488
    plain = parse_sdp(load_sdp("lync_draft6_audio_offer.sdp").replace(
        b"a=encryption:optional", b"a=encryption:rejected"))
    with pytest.raises(EncryptionMismatch):
        to_standard(plain, video_plan(StreamPlan("audio", 56000, 0)))
    # SupportEncryption meets a peer that rejects encryption
    out = to_standard(plain, video_plan(StreamPlan("audio", 56000, 0),
                                        encryption=EncryptionPolicy.SUPPORT))
    assert out.media[0].port == 56000


def test_to_standard_no_common_codec_is_488() -> None:
    only_ms = parse_sdp(b"v=0\r\no=- 0 0 IN IP4 127.0.0.5\r\ns=session\r\nt=0 0\r\n"
                        b"m=audio 5000 RTP/AVP 111\r\na=rtpmap:111 SIREN/16000\r\n")
    with pytest.raises(NoCommonCodec) as info:
        to_standard(only_ms, video_plan(StreamPlan("audio", 56000, 0),
                                        encryption=EncryptionPolicy.SUPPORT))
    assert info.value.status_hint == 488


def test_plan_out_of_range_is_local_error(lync_v19: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        to_standard(parse_sdp(lync_v19), video_plan(StreamPlan("audio", 56000, 7)))


# -- standard -> Microsoft -----------------------------------------------------------------

def endpoint_to_microsoft(**plan_kw) -> SessionDescription:
    std = parse_sdp(load_sdp("video_endpoint_offer.sdp"))
    plan = SdpPlan(GW_MS, (ms_stream("audio", 56100, 0), ms_stream("video", 56102, 1)),
                   **plan_kw)
    return to_microsoft(std, plan)


def test_endpoint_offer_to_microsoft() -> None:
    out = endpoint_to_microsoft()
    assert parse_sdp(str(out)) == out
    assert out.session_name == "session"
    audio, video = read_microsoft(out)
    for stream in (audio, video):
        assert stream.media.proto == "RTP/SAVP"
        (crypto,) = stream.cryptos
        assert crypto.suite == "AES_CM_128_HMAC_SHA1_80"
        assert crypto.mki is None and crypto.lifetime == "2^31" and crypto.key_salt == KEY
        assert stream.media.get_all("crypto")[0].endswith("|2^31")
        assert stream.encryption.value == "required"
        assert stream.media.get("encryption") == "required"
        assert len(stream.ice_ufrag) == 4 and len(stream.ice_pwd) == 24
        assert {c.type for c in stream.candidates} == {CandidateType.HOST, CandidateType.SRFLX,
                                                       CandidateType.RELAY}
        assert not stream.media.has("ice-options")
        assert stream.media.get("rtcp-fb") == "* x-message app send:dsh recv:dsh"
        assert stream.rtcp_port == stream.media.port + 1
        assert stream.address == GW_MS
    assert (audio.label, audio.x_source) == ("main-audio", "main-audio")
    assert (video.label, video.x_source) == ("main-video", "main-video")
    assert audio.ssrc_range == SsrcRange(5000, 5000)
    assert video.ssrc_range == SsrcRange(6000, 6099)
    # G.729 dropped; H.264 mode 1 offered as X-H264UC, mode 0 (pt 126) dropped
    assert [c.name for c in audio.media.codecs()] == ["G722", "PCMU", "PCMA", "telephone-event"]
    assert [(c.payload_type, c.name, c.fmtp) for c in video.media.codecs()] == [
        (97, "X-H264UC", "packetization-mode=1;mst-mode=NI-TC")]


@pytest.mark.parametrize("policy,proto,level,keys", [
    (EncryptionPolicy.REQUIRE, "RTP/SAVP", "required", 1),
    (EncryptionPolicy.SUPPORT, "RTP/AVP", "optional", 1),
    (EncryptionPolicy.DO_NOT_SUPPORT, "RTP/AVP", "rejected", 0),
])
def test_offer_to_microsoft_follows_policy(policy, proto, level, keys) -> None:
    out = endpoint_to_microsoft(encryption=policy)
    for media in out.media:
        assert media.proto == proto
        assert media.get("encryption") == level
        assert len(media.get_all("crypto")) == keys


def test_answer_to_lync_offer_matches_m_lines_and_crypto_tags(lync_v19: bytes) -> None:
    """Lync offers A/V; the video side answered audio only; Microsoft gets an aligned answer."""
    ms_offer = parse_sdp(lync_v19)
    std_answer = parse_sdp(b"v=0\r\no=- 7 1 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\n"
                           b"t=0 0\r\nm=audio 16384 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                           b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")
    plan = SdpPlan(GW_MS, (ms_stream("audio", 56100, 0), StreamPlan("video", 0, None)))
    out = to_microsoft(std_answer, plan, answer_to=ms_offer)
    audio, video = out.media
    assert len(out.media) == len(ms_offer.media)
    assert (audio.kind, audio.proto) == ("audio", "RTP/SAVP")
    # the answer uses the offer's payload types as the offer wrote them (0-16, not 0-15)
    assert [(c.payload_type, c.fmtp) for c in audio.codecs()] == [(0, None), (101, "0-16")]
    # the offer's crypto without MKI (tag 3) is the one accepted; our key has no MKI
    (crypto,) = (Crypto.parse(v) for v in audio.get_all("crypto"))
    assert crypto.tag == 3 and crypto.mki is None
    assert (video.kind, video.port, video.formats) == ("video", 0, ("122", "121", "123"))


def test_answer_needs_one_plan_stream_per_offer_line(lync_v19: bytes) -> None:
    std = parse_sdp(load_sdp("video_endpoint_offer.sdp"))
    with pytest.raises(LocalProtocolError, match="m= lines"):
        to_microsoft(std, SdpPlan(GW_MS, (ms_stream("audio", 56100, 0),)),
                     answer_to=parse_sdp(lync_v19))


def test_answer_to_standard_offer_round_trip_via_microsoft() -> None:
    """Video side offers; Microsoft answers (X-H264UC); the video side gets H264 as it offered."""
    std_offer = parse_sdp(load_sdp("video_endpoint_offer.sdp"))
    ms_offer = endpoint_to_microsoft()
    ms_answer = dataclasses.replace(ms_offer, origin=dataclasses.replace(
        ms_offer.origin, address="127.0.0.40"))
    plan = video_plan(StreamPlan("audio", 56000, 0), StreamPlan("video", 56002, 1),
                      encryption=EncryptionPolicy.REQUIRE)
    out = to_standard(ms_answer, plan, answer_to=std_offer)
    audio, video = out.media
    (h264,) = video.codecs()
    assert (h264.payload_type, h264.name) == (97, "H264")
    assert h264.fmtp == std_offer.media[1].codecs()[0].fmtp  # the endpoint's own parameters
    assert audio.proto == "RTP/AVP" and not audio.has("crypto")


def test_standard_savp_offer_needs_srtp_on_the_video_side() -> None:
    std = parse_sdp(load_sdp("video_endpoint_offer.sdp").replace(
        b"m=audio 16384 RTP/AVP", b"m=audio 16384 RTP/SAVP"))
    ms_answer = endpoint_to_microsoft()
    plan = video_plan(StreamPlan("audio", 56000, 0), StreamPlan("video", 56002, 1))
    with pytest.raises(RemoteProtocolError) as info:
        to_standard(ms_answer, plan, answer_to=std)
    assert info.value.status_hint == 488


def test_lync_requires_encryption_but_gateway_does_not_support_it(lync_v19: bytes) -> None:
    std = parse_sdp(load_sdp("video_endpoint_offer.sdp"))
    plan = SdpPlan(GW_MS, (ms_stream("audio", 56100, 0), ms_stream("video", 56102, 1)),
                   encryption=EncryptionPolicy.DO_NOT_SUPPORT)
    with pytest.raises(EncryptionMismatch) as info:
        to_microsoft(std, plan, answer_to=parse_sdp(lync_v19))
    assert info.value.status_hint == 488
    assert info.value.reason_phrase == "Encryption Levels not compatible"


@pytest.mark.parametrize("ufrag,pwd", [
    ("abcdef", "p" * 24), ("abcd", "p" * 32), ("abc", "p" * 24), ("abcd", "p" * 21),
    ("ab_d", "p" * 24),
])
def test_ice_credentials_microsoft_rejects(ufrag: str, pwd: str) -> None:
    with pytest.raises(LocalProtocolError):
        check_ice_credentials(ufrag, pwd)
    std = parse_sdp(load_sdp("video_endpoint_offer.sdp"))
    plan = SdpPlan(GW_MS, (ms_stream("audio", 56100, 0, ice_ufrag=ufrag, ice_pwd=pwd),
                           StreamPlan("video", 0, 1)))
    with pytest.raises(LocalProtocolError):
        to_microsoft(std, plan)


def test_make_ice_credentials_are_acceptable_and_fresh() -> None:
    seen = set()
    for _ in range(20):
        ufrag, pwd = make_ice_credentials()
        check_ice_credentials(ufrag, pwd)
        assert (len(ufrag), len(pwd)) == (4, 24)
        seen.add(pwd)
    assert len(seen) == 20


def test_default_destination_must_be_a_candidate() -> None:
    std = parse_sdp(load_sdp("video_endpoint_offer.sdp"))
    stream = ms_stream("audio", 56100, 0)
    wrong = dataclasses.replace(stream, port=56200)
    with pytest.raises(LocalProtocolError, match="candidate"):
        to_microsoft(std, SdpPlan(GW_MS, (wrong, StreamPlan("video", 0, 1))))
    no_key = dataclasses.replace(stream, srtp_key=None)
    with pytest.raises(LocalProtocolError, match="SRTP key"):
        to_microsoft(std, SdpPlan(GW_MS, (no_key, StreamPlan("video", 0, 1))))


# -- delayed offer -------------------------------------------------------------------------

def test_delayed_offer_toward_microsoft() -> None:
    plan = SdpPlan(GW_MS, (ms_stream("audio", 56100, None), ms_stream("video", 56102, None)),
                   session_id=42, session_version=1)
    out = build_delayed_offer(plan)
    assert parse_sdp(bytes(out)) == out
    assert str(out.origin) == f"- 42 1 IN IP4 {GW_MS}"
    audio, video = read_microsoft(out)
    assert [c.name for c in audio.media.codecs()] == ["G722", "PCMU", "PCMA", "telephone-event"]
    assert [c.name for c in video.media.codecs()] == ["X-H264UC"]
    assert audio.media.port == 56100 and video.media.port == 56102
    assert audio.media.proto == "RTP/SAVP" and audio.cryptos[0].mki is None
    assert audio.ice_ufrag == "Gw4u" and audio.candidates
