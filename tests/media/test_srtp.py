"""SRTP key selection from a=crypto, MKI handling, protect/unprotect round trips."""

from __future__ import annotations

import base64
import os

import pylibsrtp
import pytest

from media.sdp import Attribute, Media
from media.srtp import LegKeys, SrtpError, SrtpTransform, select_keys, strip_mki
from tests.media.peers import rtcp_rr, rtp

KEY_A, KEY_B = os.urandom(30), os.urandom(30)


def media(*cryptos: str, port: int = 5000) -> Media:
    return Media("audio", port, "RTP/SAVP", ("0",),
                 attributes=tuple(Attribute("crypto", c) for c in cryptos))


def crypto(tag: int, key: bytes, tail: str = "") -> str:
    return f"{tag} AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}{tail}"


def test_keys_from_our_line_and_the_matching_tag_with_mki() -> None:
    local = media(crypto(2, KEY_A))
    remote = media(crypto(1, KEY_B), crypto(2, KEY_B[::-1], "|2^31|1:1"))
    keys = select_keys(local, remote)
    assert keys == LegKeys(KEY_A, KEY_B[::-1], b"\x01")


def test_no_srtp_without_keys_on_both_sides_or_on_a_rejected_stream() -> None:
    assert select_keys(media(crypto(1, KEY_A)), media()) is None
    assert select_keys(media(), media(crypto(1, KEY_B))) is None
    assert select_keys(media(crypto(1, KEY_A)), media(crypto(1, KEY_B), port=0)) is None
    other_suite = "1 AES_CM_128_HMAC_SHA1_32 inline:" + base64.b64encode(KEY_B).decode()
    assert select_keys(media(crypto(1, KEY_A)), media(other_suite)) is None


def test_mki_is_stripped_and_checked() -> None:
    packet = bytes(30) + b"T" * 10
    with_mki = packet[:-10] + b"\x07" + packet[-10:]
    assert strip_mki(with_mki, b"\x07") == packet
    with pytest.raises(SrtpError):
        strip_mki(with_mki, b"\x08")
    with pytest.raises(SrtpError):
        strip_mki(b"\x80" * 12, b"\x07")


@pytest.mark.parametrize("rtcp", [False, True])
def test_transform_interoperates_with_plain_libsrtp_peer_using_mki(rtcp: bool) -> None:
    ours = SrtpTransform(LegKeys(send=KEY_A, receive=KEY_B, receive_mki=b"\x01"))
    peer_tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_B,
                                                 ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    peer_rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY_A,
                                                 ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    plain = rtcp_rr(1, 2) if rtcp else rtp(1234, 1, b"hello")
    sent = peer_tx.protect_rtcp(plain) if rtcp else peer_tx.protect(plain)
    sent = sent[:-10] + b"\x01" + sent[-10:]
    assert ours.unprotect(sent, rtcp) == plain
    with pytest.raises(SrtpError):  # replay
        ours.unprotect(sent, rtcp)
    back = ours.protect(plain, rtcp)
    assert (peer_rx.unprotect_rtcp(back) if rtcp else peer_rx.unprotect(back)) == plain


def test_tampered_packet_is_an_srtp_error() -> None:
    ours = SrtpTransform(LegKeys(KEY_A, KEY_A))
    sent = bytearray(SrtpTransform(LegKeys(KEY_A, KEY_A)).protect(rtp(9, 1, b"x" * 20), False))
    sent[15] ^= 1
    with pytest.raises(SrtpError):
        ours.unprotect(bytes(sent), False)


def test_a_short_key_is_refused_when_the_transform_is_made() -> None:
    with pytest.raises(ValueError, match="at least 30 bytes"):
        SrtpTransform(LegKeys(send=KEY_A, receive=KEY_B[:29]))
    with pytest.raises(ValueError, match="at least 30 bytes"):
        SrtpTransform(LegKeys(send=KEY_A[:16], receive=KEY_B))


def test_each_direction_keeps_its_session_across_packets() -> None:
    # Sessions are made on first use; the replay window must still span later packets.
    sender, receiver = SrtpTransform(LegKeys(KEY_A, KEY_B)), SrtpTransform(LegKeys(KEY_B, KEY_A))
    first = sender.protect(rtp(9, 1, b"a" * 20), False)
    assert receiver.unprotect(first, False) == rtp(9, 1, b"a" * 20)
    second = sender.protect(rtp(9, 2, b"b" * 20), False)
    assert receiver.unprotect(second, False) == rtp(9, 2, b"b" * 20)
    with pytest.raises(SrtpError):
        receiver.unprotect(first, False)  # a replay of the first packet
