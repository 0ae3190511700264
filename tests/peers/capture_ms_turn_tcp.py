"""Capture tests/data/stun/ms-turn/tcp-relay/session.json: real libnice (OC2007R2, relay type
TCP, ICE-TCP) relaying through our TURN server's TCP relay, every call into the sans-IO core
recorded with its answer, so ``tests/turn/test_ms_turn_tcp.py`` replays it byte for byte.

Run as root from the repository (the venv's python): ``.venv/bin/python -m
tests.peers.capture_ms_turn_tcp``. The core is made as ``tests.turn.ms_vectors.Session.core``
makes it (seeded RNG, fixed nonce key and wall clock), so the replay gives the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from lab.netns import VethHost
from tests.media.libnice import SYSTEM_PYTHON
from tests.turn.ms_vectors import summary
from turn.allocation import Action, OpenRelay
from turn.auth import Authenticator, mras_credentials
from turn.config import TurnConfig
from turn.core import TurnCore
from turn.server import TurnServer

PEER = Path(__file__).parent / "libnice_msturn_peer.py"
OUT = Path(__file__).parent.parent / "data" / "stun" / "ms-turn" / "tcp-relay" / "session.json"
SEED = 20261205
NONCE_KEY = bytes(range(16))
SECRET = "lab-mras-key"


async def main() -> int:
    host = VethHost.unique(lab_loopback=False)
    wall = time.time()
    events: list[dict[str, Any]] = []
    with host:
        allow = str(ipaddress.ip_network(f"{host.outer}/24", strict=False))
        config = TurnConfig(
            listen=host.outer,
            ports=(0, 0),
            relay_ports=(41000, 41100),
            realm="example.com",
            ms_turn_secret=SECRET,
            allow_peers=(allow,),
        )
        auth = Authenticator(
            realm=config.realm,
            users={},
            ms_secret=SECRET,
            wall_clock=lambda: wall,
            _nonce_key=NONCE_KEY,
        )
        core = TurnCore(config, authenticator=auth, rng=random.Random(SEED))
        ms = core.ms
        handle_stun, client_data, relay_opened = (
            core.handle_stun,
            core.client_data,
            core.relay_opened,
        )
        incoming, data, closed = ms.stream_incoming, ms.stream_data, ms.stream_closed

        def ft(f: Any) -> dict[str, Any]:
            return {
                "transport": f.transport.name,
                "client": list(f.client),
                "server": list(f.server),
            }

        def rec_stun(raw: bytes, f: Any, now: float) -> list[Action]:
            actions = handle_stun(raw, f, now)
            events.append(
                {"event": "stun", "in": raw.hex(), "now": now, **ft(f), **summary(actions)}
            )
            return actions

        def rec_data(f: Any, raw: bytes, now: float) -> list[Action]:
            actions = client_data(f, raw, now)
            events.append(
                {"event": "client_data", "in": raw.hex(), "now": now, **ft(f), **summary(actions)}
            )
            return actions

        def rec_opened(alloc: Any, now: float) -> list[Action]:
            actions = relay_opened(alloc, now)
            events.append(
                {
                    "event": "relay_opened",
                    "now": now,
                    "relay": list(alloc.relayed_address),
                    **summary(actions),
                }
            )
            return actions

        def rec_incoming(alloc: Any, peer: Any, now: float) -> Any:
            admission = incoming(alloc, peer, now)
            events.append(
                {
                    "event": "stream_incoming",
                    "now": now,
                    "peer": list(peer),
                    "admission": admission.value,
                }
            )
            return admission

        def rec_stream(alloc: Any, peer: Any, raw: bytes, now: float) -> list[bytes]:
            out = data(alloc, peer, raw, now)
            events.append(
                {
                    "event": "stream_data",
                    "now": now,
                    "peer": list(peer),
                    "in": raw.hex(),
                    "out": [o.hex() for o in out],
                }
            )
            return out

        def rec_closed(alloc: Any, peer: Any) -> None:
            closed(alloc, peer)
            events.append({"event": "stream_closed", "peer": list(peer)})

        core.handle_stun, core.client_data, core.relay_opened = rec_stun, rec_data, rec_opened  # type: ignore[method-assign]
        ms.stream_incoming, ms.stream_data, ms.stream_closed = rec_incoming, rec_stream, rec_closed  # type: ignore[method-assign]
        _ = OpenRelay  # the relay opening is recorded through relay_opened
        async with TurnServer(config, core) as server:
            port = server.addresses[0][2]
            creds = mras_credentials(SECRET, "david@example.com", wall)
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", host.namespace, SYSTEM_PYTHON, str(PEER),
                "--turn", host.outer, "--port", str(port), "--relay-type", "tcp",
                "--username", creds.username, "--password", creds.password,
                "--packets", "5", "--timeout", "30",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            report = json.loads(out.decode().strip().splitlines()[-1])
            if proc.returncode != 0:
                sys.stderr.write(f"{report}\n")
                return 1
    meta = {
        "libnice": "0.1.21 (Debian gir1.2-nice-0.1), NICE_COMPATIBILITY_OC2007R2, ICE-TCP",
        "relay_type": "tcp",
        "listen": host.outer,
        "allow_peers": [allow],
        "realm": "example.com",
        "ms_turn_secret": SECRET,
        "nonce_key_hex": NONCE_KEY.hex(),
        "wall_clock": wall,
        "mras_username": creds.username,
        "mras_password": creds.password,
        "report": report,
        "messages": events,
    }
    assert base64.b64decode(creds.username)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(meta, indent=1) + "\n")
    sys.stdout.write(f"{len(events)} events -> {OUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
