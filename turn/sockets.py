"""Socket helpers of the asyncio adapter."""

from __future__ import annotations

import socket

UDP_BUFFER = 1 << 20


def socket_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def grow_buffers(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
        except OSError:
            pass
