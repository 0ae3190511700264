"""The one error family of the TURN package (h11 style: local vs remote)."""

from __future__ import annotations


class ProtocolError(Exception):
    """A STUN/TURN protocol violation; ``status_hint`` is the STUN error code to answer with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """We were asked to build something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The client or peer sent something the protocol does not allow."""


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes that are not a well-formed STUN message or ChannelData frame."""


class Refusal(RemoteProtocolError):
    """An error response to send; ``key`` signs it once the request was authenticated."""

    def __init__(
        self,
        message: str,
        status_hint: int,
        key: bytes | None = None,
        extra: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        super().__init__(message, status_hint)
        self.key = key
        self.extra = extra
