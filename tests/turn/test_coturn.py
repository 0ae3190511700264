"""coturn's own client, turnutils_uclient (Debian package coturn), against our server."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from .helpers import PASSWORD, USER, running_server, server_port

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(shutil.which("turnutils_uclient") is None, reason="coturn not installed"),
]


async def run_uclient(port: int, *flags: str, messages: int = 40, clients: int = 2) -> str:
    proc = await asyncio.create_subprocess_exec(
        "turnutils_uclient",
        *flags,
        "-u",
        USER,
        "-w",
        PASSWORD,
        "-p",
        str(port),
        "-n",
        str(messages),
        "-m",
        str(clients),
        "-l",
        "120",
        "-z",
        "2",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


def totals(output: str) -> tuple[int, int, int]:
    """(sent, received, lost) from uclient's final summary lines."""
    sent = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    lost = re.findall(r"Total lost packets (\d+)", output)
    assert sent and lost, output[-2000:]
    return int(sent[-1][0]), int(sent[-1][1]), int(lost[-1])


MODES = {
    "udp-channels": ("-y",),
    "udp-send-indications": ("-y", "-s"),
    "tcp-control": ("-t", "-y"),
    "rfc6062-tcp-relay": ("-T",),
}


async def test_uclient_relays_with_zero_loss_udp_tcp_and_tcp_relay() -> None:
    # The four runs go concurrently: uclient spends most of its time in fixed waits.
    async with running_server() as server:
        outputs = await asyncio.gather(
            *(run_uclient(server_port(server), *f) for f in MODES.values())
        )
        total_sent = 0
        for mode, output in zip(MODES, outputs, strict=True):
            sent, received, lost = totals(output)
            assert sent > 0 and received == sent and lost == 0, f"{mode}: {output[-2000:]}"
            total_sent += sent
        stats = server.stats()
        # 120-byte messages; RFC 6062 pipes count bytes, not messages.
        assert stats.bytes_to_peer >= total_sent * 120 and stats.bytes_to_client >= total_sent * 120
        assert stats.auth_failures == 0


async def test_uclient_wrong_password_gets_nothing_relayed() -> None:
    async with running_server() as server:
        proc = await asyncio.create_subprocess_exec(
            "turnutils_uclient",
            "-y",
            "-u",
            USER,
            "-w",
            "wrong",
            "-p",
            str(server_port(server)),
            "-n",
            "5",
            "-m",
            "1",
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode != 0 or b"error 401" in out
        stats = server.stats()
        assert stats.allocations == 0 and stats.packets_to_peer == 0 and stats.auth_failures > 0
