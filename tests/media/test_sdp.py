"""SDP model: exact round trips of Lync/SfB/endpoint samples (RFC 8866), and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.sdp import Attribute, Codec, SdpError, SessionDescription, parse_sdp
from sip.errors import ParseError

from .conftest import load_sdp, mime_parts

SAMPLES = [
    ("v6 fallback part", lambda: mime_parts("lync2013_av_offer.mime")[0]),
    ("v19 part", lambda: mime_parts("lync2013_av_offer.mime")[1]),
    ("draft-6 only", lambda: load_sdp("lync_draft6_audio_offer.sdp")),
    ("sfb audio + share", lambda: load_sdp("sfb_audio_share_offer.sdp")),
    ("video endpoint", lambda: load_sdp("video_endpoint_offer.sdp")),
]


@pytest.mark.parametrize("name,loader", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_round_trip_is_byte_exact(name: str, loader) -> None:
    raw = loader()
    assert bytes(parse_sdp(raw)) == raw


def test_attribute_order_and_unknown_attributes_kept(lync_v19: bytes) -> None:
    sdp = parse_sdp(lync_v19)
    video = sdp.media[1]
    names = [a.name for a in video.attributes]
    assert names[:5] == ["x-ssrc-range", "rtcp-fb", "rtcp-rsize", "label", "x-source"]
    assert video.get("x-caps", ).startswith("121 263:1920:1080:30.0:2000000:1;")
    assert sdp.get("x-devicecaps") == "audio:send,recv;video:send,recv"
    assert [str(b) for b in sdp.bandwidths] == ["CT:99980"]
    # a property attribute keeps no value and prints without a colon
    assert Attribute.parse("rtcp-rsize") == Attribute("rtcp-rsize", None)
    assert str(Attribute("rtcp-rsize")) == "rtcp-rsize"


def test_bare_lf_input_is_read_and_written_with_crlf(lync_v19: bytes) -> None:
    lf = lync_v19.replace(b"\r\n", b"\n")
    assert bytes(parse_sdp(lf)) == lync_v19


def test_codecs_join_rtpmap_fmtp_and_static_types(lync_v19: bytes) -> None:
    audio, video = parse_sdp(lync_v19).media
    codecs = {c.payload_type: c for c in audio.codecs()}
    assert [c.payload_type for c in audio.codecs()] == [
        117, 104, 114, 9, 112, 111, 0, 8, 116, 115, 97, 13, 118, 101]
    assert codecs[117] == Codec(117, "G722", 8000, 2)
    assert codecs[111].fmtp == "bitrate=16000"
    assert codecs[101].fmtp == "0-16"
    assert video.codecs()[0] == Codec(122, "X-H264UC", 90000, None,
                                      "packetization-mode=1;mst-mode=NI-TC")
    static_only = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
                            b"m=audio 4000 RTP/AVP 0 8 96\r\n")
    assert [(c.payload_type, c.name) for c in static_only.media[0].codecs()] == [
        (0, "PCMU"), (8, "PCMA")]  # 96 has no rtpmap: skipped


def test_direction_defaults_to_sendrecv() -> None:
    sfb = parse_sdp(load_sdp("sfb_audio_share_offer.sdp"))
    assert sfb.media[0].direction == "sendonly"
    assert sfb.media[1].direction == "sendrecv"


def test_media_level_connection_overrides_session() -> None:
    sdp = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 127.0.0.2\r\n"
                    b"m=video 4002 RTP/AVP 96\r\n")
    assert sdp.connection_for(sdp.media[0]).address == "127.0.0.2"
    assert sdp.connection_for(sdp.media[1]).address == "127.0.0.1"


BAD = [
    (b"", "empty"),
    (b"o=- 1 1 IN IP4 127.0.0.1\r\n", "v=0"),
    (b"v=1\r\n", "v=0"),
    (b"v=0\r\ns=-\r\nt=0 0\r\n", "o="),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nt=0 0\r\n", "s="),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n", "t="),
    (b"v=0\r\no=- x 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", "numeric"),
    (b"v=0\r\ns=-\r\no=- 1 1 IN IP4 127.0.0.1\r\nt=0 0\r\n", "out of order"),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nx=1\r\n", "unexpected x="),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio RTP/AVP 0\r\n", "m="),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 99999 RTP/AVP 0\r\n", "range"),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n"
     b"a=x\r\nc=IN IP4 127.0.0.1\r\n", "out of order"),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nb=CT:lots\r\n", "b="),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=:x\r\n", "attribute name"),
    (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n"
     b"a=rtpmap:0 PCMU\r\n", None),  # fails only when codecs() reads it
    (b"\xff\xfe", "UTF-8"),
]


@pytest.mark.parametrize("data,needle", BAD)
def test_bad_sdp_raises_sdp_error(data: bytes, needle: str | None) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(data).media[0].codecs()
    assert isinstance(info.value, ParseError) and info.value.status_hint == 400
    if needle is not None:
        assert needle in info.value.message


def test_oversized_body_is_413() -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(b"v=0\r\n" + b"a=x\r\n" * 20000)
    assert info.value.status_hint == 413


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_bytes_only_raise_sdp_error(data: bytes) -> None:
    try:
        sdp = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + data)
    except SdpError:
        return
    for media in sdp.media:
        try:
            media.codecs()
        except SdpError:
            pass
    assert isinstance(parse_sdp(bytes(sdp)), SessionDescription)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    "m=audio 5000 RTP/AVP 0", "a=sendrecv", "a=rtpmap:0 PCMU/8000", "c=IN IP4 127.0.0.1",
    "b=AS:64", "a=x-ssrc-range:1-1", "i=info", "k=prompt", "m=video 0 RTP/SAVP 96",
    "a=candidate:1 1 UDP 1 127.0.0.1 1 typ host"]), max_size=12))
def test_fuzz_line_mixes_round_trip_or_raise(lines: list[str]) -> None:
    text = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + "".join(
        line + "\r\n" for line in lines)
    try:
        sdp = parse_sdp(text)
    except SdpError:
        return
    assert str(sdp) == text


def test_media_info_and_key_once_each() -> None:
    head = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n"
    ok = head + b"i=mic\r\nk=prompt\r\n"
    assert bytes(parse_sdp(ok)) == ok
    for dup in (b"i=a\r\ni=b\r\n", b"k=prompt\r\nk=prompt\r\n"):
        with pytest.raises(SdpError, match="more than one"):
            parse_sdp(head + dup)
