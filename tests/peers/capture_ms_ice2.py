"""Capture the [MS-ICE2] test vectors in tests/data/stun/ms-ice2 from a real libnice run.

    .venv/bin/python -m tests.peers.capture_ms_ice2 [DIR]

(root: it makes a network namespace.) The gateway's IceLeg, controlled, meets libnice
(OC2007R2, controlling: its first checks come with their legacy copies) as in
tests/media/test_ms_ice2_libnice.py; every datagram the leg receives and sends is recorded,
and the first of each kind is written out with the credentials in ``vectors.json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from media import ms_stun
from media.ice_leg import IceLeg, IceSettings
from tests.media.libnice import libnice_peer, read_nice_sdp, veth_pair, write_nice_sdp
from tests.media.test_ms_ice2_libnice import free_port_pair

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "stun" / "ms-ice2"


async def capture(out: Path) -> bool:
    """One run; True when a legacy copy that differs from its check was seen."""
    received: list[bytes] = []
    sent: list[bytes] = []
    original_receive = ms_stun.DialectProtocol.datagram_received

    def tap_receive(self: ms_stun.DialectProtocol, data: Any, addr: Any) -> None:
        received.append(bytes(data))
        original_receive(self, data, addr)

    ms_stun.DialectProtocol.datagram_received = tap_receive  # type: ignore[method-assign]
    with veth_pair() as veth:
        leg = IceLeg(veth.ours, free_port_pair(veth.ours),
                     IceSettings(allowed_networks=(veth.network,)), ufrag="gw01",
                     pwd="gatewaypassword0123456789", controlling=False)
        await leg.gather()
        for protocol in leg.agent._protocols:
            transport = protocol.transport
            original_send = transport.sendto

            def tap_send(data: Any, addr: Any = None, _send: Any = original_send) -> None:
                sent.append(bytes(data))
                _send(data, addr)

            transport.sendto = tap_send  # type: ignore[method-assign]
        try:
            async with libnice_peer(veth, controlling=True) as peer:
                theirs = read_nice_sdp((await peer.wait(lambda e: e["event"] == "local"))["sdp"])
                peer.send(remote_sdp=write_nice_sdp(leg.ufrag, leg.pwd, leg.local_candidates))
                # Let libnice's first check and its legacy copy arrive before ours go out
                # (it stops the copies once it hears MS-IMPLEMENTATION-VERSION).
                for _ in range(250):
                    if len(received) >= 2:
                        break
                    await asyncio.sleep(0.02)
                await leg.connect(theirs.ufrag, theirs.pwd, theirs.candidates)
                await peer.wait(lambda e: e["event"] == "state" and e["state"] == "READY")
        finally:
            await leg.close()
    files: dict[str, dict[str, Any]] = {}

    def keep(name: str, data: bytes, key: str, note: str) -> None:
        if name not in files:
            (out / name).write_bytes(data)
            files[name] = {"password": key, "note": note}

    for data in received:
        try:
            decoded = ms_stun.decode(data)
        except ms_stun.StunDecodeError:
            # The legacy CRC differs from the standard one only when the wrong table entry
            # is used: most copies are plain duplicates. Captures are retried until one is.
            if ms_stun.looks_like_stun(data):
                keep("libnice-request-legacy.bin", data, leg.pwd,
                     "libnice's version-1 copy of a check: legacy CRC with "
                     "MS-IMPLEMENTATION-VERSION present (a v2 receiver drops it)")
            continue
        if decoded.message_type == 0x0001:
            keep("libnice-request.bin", data, leg.pwd,
                 "libnice's check to the gateway (signed with the gateway's password)")
        elif decoded.message_type == 0x0101:
            keep("libnice-response.bin", data, theirs.pwd,
                 "libnice's success response to the gateway's check (libnice's password)")
    for data in sent:
        decoded = ms_stun.decode(data)
        if decoded.message_type == 0x0001 and decoded.hint is ms_stun.StunDialect.MS_ICE2:
            keep("gateway-request.bin", data, theirs.pwd,
                 "the gateway's check that libnice answered (libnice's password)")
        elif decoded.message_type == 0x0101 and decoded.hint is ms_stun.StunDialect.MS_ICE2:
            keep("gateway-response.bin", data, leg.pwd,
                 "the gateway's response to a libnice check (the gateway's password)")
    manifest = {"gateway": {"ufrag": leg.ufrag, "pwd": leg.pwd},
                "libnice": {"ufrag": theirs.ufrag, "pwd": theirs.pwd}, "files": files}
    (out / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))  # noqa: T201 (a command-line tool)
    return "libnice-request-legacy.bin" in files


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for _attempt in range(20):
        if asyncio.run(capture(target)):
            break
