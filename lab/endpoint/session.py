"""Applying a negotiated offer/answer to the endpoint's media ports (RFC 3264): where each
stream sends, with which codec and keys, and whether it sends at all (hold)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from lab.endpoint.media import MediaPort
from lab.endpoint.rtp import MediaKind, RtpSource
from media.sdp import Codec, Media, SessionDescription
from media.srtp import select_keys

__all__ = ["apply_media", "sending_codec"]

logger = logging.getLogger(__name__)

_SENDS = frozenset({"sendrecv", "sendonly"})
_RECEIVES = frozenset({"sendrecv", "recvonly"})
_AUXILIARY = frozenset({"telephone-event", "cn"})


def sending_codec(local: Media, remote: Media) -> Codec | None:
    """The codec we send on one stream: the peer's first real codec that we also listed,
    with the peer's payload type (what its receiver expects)."""
    try:
        ours = {codec.name.lower() for codec in local.codecs()}
        theirs = remote.codecs()
    except ValueError:
        return None
    for codec in theirs:
        name = codec.name.lower()
        if name in ours and name not in _AUXILIARY:
            return codec
    return None


def apply_media(
    ports: Sequence[MediaPort | None],
    local: SessionDescription,
    remote: SessionDescription,
    *,
    send: bool = True,
    latch: bool = True,
    call_id: str = "",
) -> None:
    """Point each port at the peer's address, set its SRTP keys, and start or stop sending
    as the two directions allow."""
    for index, port in enumerate(ports):
        if port is None or port.closed:
            continue
        mine = local.media[index] if index < len(local.media) else None
        theirs = remote.media[index] if index < len(remote.media) else None
        if mine is None or theirs is None or not mine.port or not theirs.port:
            port.stop_sending()
            continue
        port.latch = latch
        connection = theirs.connection or remote.connection
        address = connection.address if connection is not None else None
        if address is None or _unspecified(address):
            port.set_remote(None)  # RFC 2543 hold (c=0.0.0.0)
        else:
            port.set_remote((address, theirs.port))
        port.set_keys(select_keys(mine, theirs))
        codec = sending_codec(mine, theirs)
        if (
            not send
            or codec is None
            or mine.direction not in _SENDS
            or theirs.direction not in _RECEIVES
        ):
            port.stop_sending()
            continue
        kind = MediaKind.VIDEO if mine.kind.lower() == "video" else MediaKind.AUDIO
        source = port.rtp_source
        if source is None or source.payload_type != codec.payload_type or source.kind is not kind:
            source = RtpSource(kind, codec.payload_type, codec.name)
        logger.debug(
            "[%s] %s port %d sends %s/%d to %s%s",
            call_id,
            mine.kind,
            port.port,
            codec.name,
            codec.payload_type,
            port.remote,
            " (SRTP)" if port.encrypted else "",
        )
        port.start_sending(source)


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False
