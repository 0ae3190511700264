"""A zone's media encryption mode: RTP or SDES-SRTP on the video leg (RFC 4568), and the
488s a forced mode gives, before anything is set up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import MediaEncryption
from gateway.sdp_bridge import video_security_for
from lab.endpoint.agent import CallFailed
from media.rewrite import VideoSecurity
from media.sdp import parse_sdp
from sip.errors import ProtocolError
from sip.uri import URI
from tests.gateway.test_runtime import WAIT, Lab, make_lab, wait_for  # noqa: F401

RTP_OFFER = parse_sdp(
    "v=0\r\no=- 1 1 IN IP4 127.0.3.11\r\ns=-\r\nc=IN IP4 127.0.3.11\r\nt=0 0\r\n"
    "m=audio 20000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SRTP_OFFER = parse_sdp(
    "v=0\r\no=- 1 1 IN IP4 127.0.3.11\r\ns=-\r\nc=IN IP4 127.0.3.11\r\nt=0 0\r\n"
    "m=audio 20000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\n"
)


@pytest.mark.parametrize(
    ("mode", "offer", "expected"),
    [
        (MediaEncryption.AUTO, None, VideoSecurity.RTP),
        (MediaEncryption.BEST_EFFORT, None, VideoSecurity.SRTP),
        (MediaEncryption.FORCE_ENCRYPTED, None, VideoSecurity.SRTP),
        (MediaEncryption.FORCE_UNENCRYPTED, None, VideoSecurity.RTP),
        (MediaEncryption.AUTO, RTP_OFFER, VideoSecurity.RTP),
        (MediaEncryption.AUTO, SRTP_OFFER, VideoSecurity.SRTP),
        (MediaEncryption.BEST_EFFORT, RTP_OFFER, VideoSecurity.RTP),
        (MediaEncryption.FORCE_ENCRYPTED, SRTP_OFFER, VideoSecurity.SRTP),
        (MediaEncryption.FORCE_UNENCRYPTED, RTP_OFFER, VideoSecurity.RTP),
    ],
)
def test_video_security_follows_mode_and_offer(
    mode: MediaEncryption, offer: Any, expected: VideoSecurity
) -> None:
    assert video_security_for(mode, offer) is expected


def test_forced_modes_refuse_the_other_kind_with_488() -> None:
    with pytest.raises(ProtocolError) as caught:
        video_security_for(MediaEncryption.FORCE_ENCRYPTED, RTP_OFFER)
    assert caught.value.status_hint == 488 and "requires encrypted" in caught.value.message
    with pytest.raises(ProtocolError) as caught:
        video_security_for(MediaEncryption.FORCE_UNENCRYPTED, SRTP_OFFER)
    assert caught.value.status_hint == 488 and "unencrypted" in caught.value.message


async def test_sdes_endpoint_calling_microsoft_gets_an_srtp_answer(
    make_lab: Any,  # noqa: F811
) -> None:
    lab: Lab = await make_lab(endpoint={"srtp": True})
    video_call = await asyncio.wait_for(
        lab.endpoint.invite(URI.parse("sip:alice.parkes@example.com"), lab.video_hop), WAIT
    )
    ms_call = await asyncio.wait_for(lab.fe.incoming.get(), WAIT)
    answer = video_call.remote_sdp
    assert answer is not None
    assert answer.media[0].proto == "RTP/SAVP" and answer.media[0].has("crypto")
    assert "candidate" not in str(answer)  # still a standard SDP
    await asyncio.wait_for(lab.endpoint.hangup(video_call), WAIT)
    await asyncio.wait_for(ms_call.ended.wait(), WAIT)
    await wait_for(lambda: lab.gateway.pool.ports_in_use == 0, "ports back")


async def test_force_encrypted_zone_refuses_plain_rtp_offer_and_keeps_no_port(
    make_lab: Any,  # noqa: F811
) -> None:
    lab: Lab = await make_lab(zone_extra='media_encryption = "force_encrypted"')
    with pytest.raises(CallFailed) as caught:
        await asyncio.wait_for(
            lab.endpoint.invite(URI.parse("sip:alice.parkes@example.com"), lab.video_hop), WAIT
        )
    assert caught.value.status == 488
    assert lab.fe.incoming.empty()  # never reached Microsoft
    assert lab.gateway.pool.ports_in_use == 0 and not lab.gateway.calls


async def test_force_encrypted_zone_gets_an_sdes_offer_from_microsoft_calls(
    make_lab: Any,  # noqa: F811
) -> None:
    lab: Lab = await make_lab(
        endpoint={"srtp": True}, zone_extra='media_encryption = "force_encrypted"'
    )
    call, response = await lab.fe.call("3001@video.example.com")
    assert response.status == 200 and call is not None
    incoming = next(iter(lab.endpoint.calls.values()))
    offer = incoming.remote_sdp
    assert offer is not None
    assert offer.media[0].proto == "RTP/SAVP" and offer.media[0].has("crypto")
    assert response.body  # Microsoft's answer came back through the gateway
    await lab.fe.hangup(call)
    await wait_for(lambda: lab.gateway.pool.ports_in_use == 0, "ports back")
