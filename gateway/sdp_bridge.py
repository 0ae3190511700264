"""Glue between a call's offer/answer and its media session: which rewrite for which way.

Every body crossing the gateway is rewritten by the media core (``media.rewrite``): the
video side only ever gets one plain SDP written by ``to_standard``; Microsoft gets SDP
written by ``to_microsoft`` (or ``build_delayed_offer``). An :class:`SdpBridge` tracks the
exchange in progress (who offered, the four descriptions) and hands it to
``MediaSession.apply`` once both answers are known.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.config import Encryption, MediaEncryption
from media.ms_dialect import EncryptionPolicy, pick_sdp
from media.rewrite import VideoSecurity, build_delayed_offer, to_microsoft, to_standard
from media.sdp import SessionDescription, parse_sdp
from media.session import MediaSession
from sip.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from sip.message import Request, Response

__all__ = [
    "DELAYED_OFFER_KINDS",
    "BadAnswer",
    "MAX_MEDIA_LINES",
    "Exchange",
    "SdpBridge",
    "TooManyMediaLines",
    "encryption_policy",
    "sdp_of",
]

logger = logging.getLogger(__name__)

DELAYED_OFFER_KINDS = ("audio", "video")
"""The m= lines of the pre-configured offer sent to Microsoft for a delayed-offer INVITE."""

_POLICIES = {
    Encryption.REQUIRED: EncryptionPolicy.REQUIRE,
    Encryption.SUPPORTED: EncryptionPolicy.SUPPORT,
    Encryption.OFF: EncryptionPolicy.DO_NOT_SUPPORT,
}


def encryption_policy(setting: Encryption) -> EncryptionPolicy:
    """The media core's policy for the configuration's ``b2bua.encryption``."""
    return _POLICIES[setting]


MAX_MEDIA_LINES = 16
"""m= lines the gateway relays in one SDP: Lync offers at most five (audio, video, panoramic
video, application sharing, data); thousands (issue 12) would each cost a stream's worth of
work and a line in every SDP we write."""


class TooManyMediaLines(ProtocolError):
    """An SDP with more m= lines than ``MAX_MEDIA_LINES``: refused with 488."""

    def __init__(self, count: int) -> None:
        super().__init__(f"Not Acceptable Here: {count} m= lines, the gateway relays at most "
                         f"{MAX_MEDIA_LINES}", 488)


class BadAnswer(RemoteProtocolError):
    """An answer that breaks RFC 3264 §6 (not one m= line per offered line): the
    answering side's fault, so the other side gets 502 naming it."""

    def __init__(self, side: str, offer: SessionDescription, answer: SessionDescription) -> None:
        offered = ", ".join(kinds_of(offer))
        answered = ", ".join(kinds_of(answer)) or "none"
        # Short enough to survive as a reason phrase (sip.message.MAX_REASON_LENGTH).
        super().__init__(
            f"Bad Gateway: the {side} side answered {len(offer.media)} media lines "
            f"({offered}) with {len(answer.media)} ({answered}), against RFC 3264", 502)


def check_answer(side: str, offer: SessionDescription | None,
                 answer: SessionDescription) -> None:
    """Raise ``BadAnswer`` when ``answer`` does not answer each m= line of ``offer``."""
    if offer is not None and len(answer.media) != len(offer.media):
        raise BadAnswer(side, offer, answer)


def sdp_of(message: Request | Response) -> SessionDescription | None:
    """The SDP of a message (the RFC 5245 part of a Microsoft multipart body), or None.

    Raises ``ParseError`` (400, 415 for a body without SDP) when it cannot be used, and
    ``TooManyMediaLines`` (488) over ``MAX_MEDIA_LINES``.
    """
    if not message.body:
        return None
    sdp, _ = pick_sdp(message.content_type or "application/sdp", message.body)
    if len(sdp.media) > MAX_MEDIA_LINES:
        raise TooManyMediaLines(len(sdp.media))
    return sdp


def _wire(sdp: SessionDescription) -> SessionDescription:
    # What the peer will parse: the description as it goes on the wire.
    return parse_sdp(bytes(sdp))


@dataclass(slots=True)
class Exchange:
    """One offer/answer in progress, seen from both sides of the gateway."""

    microsoft_offers: bool
    """True when the offer came from (or, delayed offer, went to) the Microsoft side as
    its remote description; False when the video side's SDP is the offer."""
    ms_local: SessionDescription | None = None
    ms_remote: SessionDescription | None = None
    video_local: SessionDescription | None = None
    video_remote: SessionDescription | None = None
    ice_controlling: bool = False
    """We sent the offer toward Microsoft."""

    @property
    def complete(self) -> bool:
        return None not in (self.ms_local, self.ms_remote, self.video_local, self.video_remote)


def video_security_for(
    mode: MediaEncryption, video_offer: SessionDescription | None
) -> VideoSecurity:
    """RTP or SDES-SRTP on the video leg of a call, from the zone's media encryption mode
    and, when the video side made the offer, what it offered. A mismatch with a forced
    mode is a 488 with the reason, before anything is set up."""
    if video_offer is None:  # we make the offer to the video side
        if mode in (MediaEncryption.FORCE_ENCRYPTED, MediaEncryption.BEST_EFFORT):
            return VideoSecurity.SRTP
        return VideoSecurity.RTP
    encrypted = any(
        "SAVP" in m.proto.upper() and m.has("crypto") for m in video_offer.media if m.port
    )
    if mode is MediaEncryption.FORCE_ENCRYPTED and not encrypted:
        raise RemoteProtocolError("Not Acceptable Here: zone requires encrypted media", 488)
    if mode is MediaEncryption.FORCE_UNENCRYPTED and encrypted:
        raise RemoteProtocolError("Not Acceptable Here: zone requires unencrypted media", 488)
    return VideoSecurity.SRTP if encrypted else VideoSecurity.RTP


class SdpBridge:
    """The rewrites of one call, over its :class:`MediaSession`."""

    def __init__(
        self,
        session: MediaSession,
        encryption: EncryptionPolicy,
        video_security: VideoSecurity = VideoSecurity.RTP,
    ) -> None:
        self.session = session
        self.encryption = encryption
        self.video_security = video_security
        self.pending: Exchange | None = None
        """The exchange waiting for its answer."""
        self.current: Exchange | None = None
        """The last completed exchange (what the media runs on)."""

    # -- plans -------------------------------------------------------------------------------

    async def _prepare(self, sdp: SessionDescription) -> None:
        await self.session.prepare(kinds_of(sdp))

    # -- Microsoft offers ----------------------------------------------------------------------

    async def microsoft_offer(self, ms_offer: SessionDescription) -> SessionDescription:
        """Microsoft's offer -> our offer to the video side. Raises ``PortPoolExhausted``
        (503), ``EncryptionMismatch`` / ``NoCommonCodec`` (488)."""
        await self._prepare(ms_offer)
        video_offer = _wire(to_standard(ms_offer, self.session.video_plan(
            video_security=self.video_security, encryption=self.encryption)))
        self.pending = Exchange(True, ms_remote=ms_offer, video_local=video_offer)
        return video_offer

    async def video_answer(self, video_answer: SessionDescription) -> SessionDescription:
        """The video side's answer -> our answer to Microsoft; applies the exchange."""
        exchange = self._pending(True)
        assert exchange.ms_remote is not None
        check_answer("video", exchange.video_local, video_answer)
        ms_answer = _wire(to_microsoft(
            video_answer, self.session.microsoft_plan(encryption=self.encryption),
            answer_to=exchange.ms_remote))
        exchange.video_remote = video_answer
        exchange.ms_local = ms_answer
        await self._apply(exchange)
        return ms_answer

    @property
    def offers_srtp_to_video(self) -> bool:
        """Our pending offer toward the video side is SDES-SRTP (a best-effort zone may
        then fall back to RTP when it is refused)."""
        return (self.video_security is VideoSecurity.SRTP and self.pending is not None
                and self.pending.microsoft_offers)

    def plain_video_offer(self) -> SessionDescription:
        """Best Effort's second offer: Microsoft's pending offer rewritten for the video
        side again, with plain RTP (the ports prepared for the first offer are kept)."""
        exchange = self._pending(True)
        assert exchange.ms_remote is not None
        self.video_security = VideoSecurity.RTP
        video_offer = _wire(to_standard(exchange.ms_remote, self.session.video_plan(
            video_security=self.video_security, encryption=self.encryption)))
        exchange.video_local = video_offer
        return video_offer

    async def final_answer(self, answer: SessionDescription) -> SessionDescription:
        """The 2xx's answer after an early one (183) that differs from it: the offer of the
        applied exchange answered again (RFC 3261 §13.2.1 wants the same answer; a peer that
        changes it still gets what it asked for)."""
        current = self.current
        if current is None:
            raise LocalProtocolError("no early answer was applied")
        if current.microsoft_offers:
            self.pending = Exchange(True, ms_remote=current.ms_remote,
                                    video_local=current.video_local)
            return await self.video_answer(answer)
        self.pending = Exchange(False, ms_local=current.ms_local,
                                video_remote=current.video_remote,
                                ice_controlling=current.ice_controlling)
        return await self.microsoft_answer(answer)

    # -- video offers --------------------------------------------------------------------------

    async def video_offer(self, video_offer: SessionDescription) -> SessionDescription:
        """The video side's offer -> our offer to Microsoft."""
        await self._prepare(video_offer)
        ms_offer = _wire(to_microsoft(
            video_offer, self.session.microsoft_plan(encryption=self.encryption)))
        self.pending = Exchange(False, ms_local=ms_offer, video_remote=video_offer,
                                ice_controlling=True)
        return ms_offer

    async def microsoft_answer(self, ms_answer: SessionDescription) -> SessionDescription:
        """Microsoft's answer -> our answer to the video side; applies the exchange."""
        exchange = self._pending(False)
        assert exchange.video_remote is not None
        check_answer("Microsoft", exchange.ms_local, ms_answer)
        video_answer = _wire(to_standard(
            ms_answer, self.session.video_plan(
                video_security=self.video_security, encryption=self.encryption),
            answer_to=exchange.video_remote))
        exchange.ms_remote = ms_answer
        exchange.video_local = video_answer
        await self._apply(exchange)
        return video_answer

    # -- delayed offer (video INVITE without SDP) ----------------------------------------------

    async def delayed_offer(self, kinds: Sequence[str] = DELAYED_OFFER_KINDS
                            ) -> SessionDescription:
        """The pre-configured offer toward Microsoft."""
        await self.session.prepare(list(kinds))
        ms_offer = _wire(build_delayed_offer(
            self.session.microsoft_plan(encryption=self.encryption)))
        self.pending = Exchange(False, ms_local=ms_offer, ice_controlling=True)
        return ms_offer

    def delayed_video_offer(self, ms_answer: SessionDescription) -> SessionDescription:
        """Microsoft's answer to the delayed offer -> our offer to the video side (in the
        200 OK); the video side answers in its ACK (:meth:`delayed_video_answer`)."""
        exchange = self._pending(False)
        check_answer("Microsoft", exchange.ms_local, ms_answer)
        video_offer = _wire(to_standard(ms_answer, self.session.video_plan(
            video_security=self.video_security, encryption=self.encryption)))
        exchange.ms_remote = ms_answer
        exchange.video_local = video_offer
        return video_offer

    async def delayed_video_answer(self, video_answer: SessionDescription) -> None:
        """The ACK's answer completes the delayed-offer exchange."""
        exchange = self._pending(False)
        check_answer("video", exchange.video_local, video_answer)
        exchange.video_remote = video_answer
        await self._apply(exchange)

    # -- re-bridging (transfer) ----------------------------------------------------------------

    def video_offer_for_transfer(self) -> SessionDescription:
        """An offer toward a new video peer, from what Microsoft currently sends."""
        if self.current is None or self.current.ms_remote is None:
            raise LocalProtocolError("no media to transfer")
        video_offer = _wire(to_standard(self.current.ms_remote, self.session.video_plan(
            video_security=self.video_security, encryption=self.encryption)))
        self.pending = Exchange(True, ms_remote=self.current.ms_remote, video_local=video_offer)
        return video_offer

    def reoffer_to_microsoft(self, video_answer: SessionDescription) -> SessionDescription:
        """The new video peer's answer -> a re-INVITE offer toward Microsoft."""
        exchange = self._pending(True)
        ms_offer = _wire(to_microsoft(
            video_answer, self.session.microsoft_plan(encryption=self.encryption)))
        self.pending = Exchange(False, ms_local=ms_offer, video_remote=video_answer,
                                video_local=exchange.video_local, ice_controlling=False)
        return ms_offer

    async def microsoft_reanswer(self, ms_answer: SessionDescription) -> None:
        """Microsoft's answer to the transfer re-INVITE; applies it."""
        exchange = self._pending(False)
        check_answer("Microsoft", exchange.ms_local, ms_answer)
        exchange.ms_remote = ms_answer
        await self._apply(exchange)

    async def reanswer(self, *, microsoft: bool, answer: SessionDescription) -> None:
        """A side's new answer, in the ACK of our 2xx to its re-INVITE without SDP, to the
        SDP the media runs on, which that 2xx offered again (RFC 3261 14.2): the applied
        exchange with that side's remote description replaced, applied (the media follows
        the peer's new address or codecs). The other side is not asked anything: its view
        has not changed, and an exchange pending meanwhile stays pending."""
        current = self.current
        if current is None:
            raise LocalProtocolError("no applied offer/answer to answer again", 500)
        if microsoft:
            check_answer("Microsoft", current.ms_local, answer)
            await self._run(replace(current, ms_remote=answer))
        else:
            check_answer("video", current.video_local, answer)
            await self._run(replace(current, video_remote=answer))

    # -- internals -----------------------------------------------------------------------------

    def _pending(self, microsoft_offers: bool) -> Exchange:
        exchange = self.pending
        if exchange is None or exchange.microsoft_offers is not microsoft_offers:
            raise LocalProtocolError("no matching offer is pending")
        return exchange

    async def _apply(self, exchange: Exchange) -> None:
        """The pending exchange, complete: applied, and no longer pending."""
        await self._run(exchange)
        self.pending = None

    async def _run(self, exchange: Exchange) -> None:
        """Apply a complete exchange to the media session; it becomes the current one."""
        assert exchange.complete
        await self.session.apply(
            microsoft_local=exchange.ms_local,  # type: ignore[arg-type]
            microsoft_remote=exchange.ms_remote,  # type: ignore[arg-type]
            video_local=exchange.video_local,  # type: ignore[arg-type]
            video_remote=exchange.video_remote,  # type: ignore[arg-type]
            ice_controlling=exchange.ice_controlling,
        )
        self.current = exchange


def kinds_of(sdp: SessionDescription) -> list[str]:
    """The m= line kinds, in order."""
    return [media.kind for media in sdp.media]
