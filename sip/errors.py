"""The one error family of the SIP layer (h11 style: local vs remote, with a status hint)."""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ParseError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """A SIP protocol violation; ``status_hint`` is the SIP status to answer with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_hint={self.status_hint})"


class LocalProtocolError(ProtocolError):
    """We were about to build or send something that breaks the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


class ParseError(RemoteProtocolError, ValueError):
    """Any failure to decode bytes or header text; the only exception parsers raise."""
