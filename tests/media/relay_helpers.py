"""What the media relay tests share: the Microsoft side's SRTP keys, loopback UDP sockets,
a STUN Binding request, libsrtp sessions as Microsoft's, and the mark for native-only tests."""

from __future__ import annotations

import socket

import pylibsrtp
import pytest
from aioice import stun

from media.relay import native_available

KEY_MS_RX = bytes(range(30))              # what Microsoft sends with
KEY_MS_TX = bytes(range(100, 130))        # what we send to Microsoft with
NATIVE_MISSING = "native relay not built (gcc / libsrtp2-dev missing)"
needs_native = pytest.mark.skipif(not native_available(), reason=NATIVE_MISSING)


def udp(rcvbuf: int = 0) -> socket.socket:
    """A non-blocking UDP socket on 127.0.0.1 (a free port), its receive buffer set if asked."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def binding_request() -> stun.Message:
    """A STUN Binding request (a fresh transaction ID each call)."""
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


def session(key: bytes, inbound: bool) -> pylibsrtp.Session:
    """A libsrtp session for any SSRC: inbound to unprotect, outbound to protect."""
    kind = pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind))


def with_mki(packet: bytes, mki: bytes) -> bytes:
    """An SRTP(C) packet with the MKI put before its 10-byte authentication tag."""
    return packet[:-10] + mki + packet[-10:]
