"""SRTP glue over pylibsrtp: which keys a leg uses, and the per-packet transforms.

Keys come from SDES ``a=crypto`` (RFC 4568) in the two SDPs of a leg: we send with the key in
our own SDP and receive with the peer's. A leg runs SRTP only when both SDPs carry an
AES_CM_128_HMAC_SHA1_80 key on a live m= line.

MKI: Microsoft sends ``inline:<key>|2^31|1:1`` (a 1-byte MKI). pylibsrtp 1.0 exposes no MKI
setting, but RFC 3711 §3.1/§3.4 places the MKI between the encrypted part and the
authentication tag and leaves it out of the authenticated portion, so removing those bytes
turns the packet into a valid MKI-less one: the receive side checks and strips the MKI, then
unprotects. Toward Microsoft we send without MKI, which is what ``media.rewrite`` offers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp

from media.ms_dialect import CRYPTO_SUITE, Crypto
from media.sdp import Media

__all__ = ["LegKeys", "SrtpError", "SrtpTransform", "select_keys", "strip_mki"]

AUTH_TAG_LEN = 10
MASTER_KEY_SALT_LEN = 30
"""AES_CM_128 master key (16 bytes) + salt (14 bytes), RFC 3711 §8.2."""
"""HMAC-SHA1-80 tag length, for SRTP and SRTCP alike (RFC 4568 §6.2.1)."""


class SrtpError(ValueError):
    """A packet that fails authentication, replay checks or MKI checks."""


@dataclass(frozen=True, slots=True)
class LegKeys:
    """The SRTP keys of one leg."""

    send: bytes
    """Our master key + salt (30 bytes): what we protect with."""
    receive: bytes
    """The peer's master key + salt: what we unprotect with."""
    receive_mki: bytes = b""
    """The MKI the peer puts in each packet (empty for none)."""


def _ours(media: Media) -> list[Crypto]:
    return [c for c in (Crypto.parse(v) for v in media.get_all("crypto"))
            if c.suite == CRYPTO_SUITE]


def select_keys(local: Media, remote: Media) -> LegKeys | None:
    """The keys of a leg from our m= line and the peer's, or None for plain RTP.

    The peer's key is the one whose tag matches ours (RFC 4568 §5.1.2: the answer echoes
    the tag it accepted), else its first key of our suite."""
    if not local.port or not remote.port:
        return None
    mine, theirs = _ours(local), _ours(remote)
    if not mine or not theirs:
        return None
    tx = mine[0]
    rx = next((c for c in theirs if c.tag == tx.tag), theirs[0])
    mki = b""
    if rx.mki is not None:
        value, length = rx.mki
        mki = value.to_bytes(length, "big")
    return LegKeys(tx.key_salt, rx.key_salt, mki)


def strip_mki(packet: bytes, mki: bytes) -> bytes:
    """Remove ``mki`` from before the auth tag of an SRTP/SRTCP packet (RFC 3711 §3.1)."""
    size = len(mki)
    if len(packet) < 12 + size + AUTH_TAG_LEN:
        raise SrtpError("packet too short for its MKI")
    at = len(packet) - AUTH_TAG_LEN - size
    if packet[at:at + size] != mki:
        raise SrtpError("unknown MKI")
    return packet[:at] + packet[at + size:]


class SrtpTransform:
    """One leg's SRTP state: a receive session and a send session (any SSRC).

    Each libsrtp session (key derivation, ~14 us) is made on its first packet: a call that
    never carries media in a direction, and re-INVITEs that keep the keys, pay nothing."""

    __slots__ = ("_rx", "_tx", "keys", "mki")

    def __init__(self, keys: LegKeys) -> None:
        for key in (keys.receive, keys.send):
            if len(key) < MASTER_KEY_SALT_LEN:  # refused now, as libsrtp would
                raise ValueError(f"key must contain at least {MASTER_KEY_SALT_LEN} bytes")
        self._rx: pylibsrtp.Session | None = None
        self._tx: pylibsrtp.Session | None = None
        self.keys = keys
        self.mki = keys.receive_mki

    def unprotect(self, packet: bytes, rtcp: bool) -> bytes:
        rx = self._rx
        if rx is None:
            rx = self._rx = pylibsrtp.Session(pylibsrtp.Policy(
                key=self.keys.receive, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        try:
            if self.mki:
                packet = strip_mki(packet, self.mki)
            if rtcp:
                return rx.unprotect_rtcp(packet)
            return rx.unprotect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            # pylibsrtp raises ValueError ("packet is too long") for a packet over its
            # 1,500-byte buffer less the trailer: a bad packet like any other, never an
            # exception out of the datagram callback.
            raise SrtpError(str(exc)) from None

    def protect(self, packet: bytes, rtcp: bool) -> bytes:
        tx = self._tx
        if tx is None:
            tx = self._tx = pylibsrtp.Session(pylibsrtp.Policy(
                key=self.keys.send, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        try:
            if rtcp:
                return tx.protect_rtcp(packet)
            return tx.protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            # pylibsrtp raises ValueError ("packet is too long") for a packet over its
            # 1,500-byte buffer less the trailer: a bad packet like any other, never an
            # exception out of the datagram callback.
            raise SrtpError(str(exc)) from None
