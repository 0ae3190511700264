"""The libnice MS-TURN capture (tests/data/stun/ms-turn) and a core made as the capturing one."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turn import ms_turn
from turn.allocation import (
    Action,
    Allocation,
    FiveTuple,
    OpenPeerStream,
    OpenRelay,
    ResumePeerStream,
    SendToClient,
    SendToPeer,
    Transport,
)
from turn.auth import Authenticator
from turn.config import TurnConfig
from turn.core import TurnCore

DATA = Path(__file__).parent.parent / "data" / "stun" / "ms-turn"
SEED = 20261205


def summary(actions: list[Action]) -> dict[str, Any]:
    """What a TCP-relay capture records and its replay compares: bytes to the client, bytes
    to peers, streams opened and resumed."""
    return {
        "out": [a.data.hex() for a in actions if isinstance(a, SendToClient)],
        "to_peer": [[list(a.peer), a.data.hex()] for a in actions if isinstance(a, SendToPeer)],
        "open": [list(a.peer) for a in actions if isinstance(a, OpenPeerStream)],
        "resume": [list(a.peer) for a in actions if isinstance(a, ResumePeerStream)],
    }


def vector(name: str) -> bytes:
    return (DATA / name).read_bytes()


@dataclass
class Session:
    """One captured run."""

    meta: dict[str, Any]

    @classmethod
    def load(cls, transport: str = "udp") -> Session:
        return cls(json.loads((DATA / transport / "session.json").read_text()))

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.meta["messages"])

    @property
    def wall(self) -> float:
        return float(self.meta["wall_clock"])

    @property
    def username(self) -> bytes:
        return base64.b64decode(self.meta["mras_username"])

    @property
    def password(self) -> bytes:
        return base64.b64decode(self.meta["mras_password"])

    @property
    def realm(self) -> bytes:
        return str(self.meta["realm"]).encode()

    @property
    def key(self) -> bytes:
        """The long-term key the client signed with."""
        return ms_turn.long_term_key(self.username, self.realm, self.password)

    def five_tuple(self, event: dict[str, Any]) -> FiveTuple:
        c, s = event["client"], event["server"]
        return FiveTuple(Transport[event["transport"]], (c[0], c[1]), (s[0], s[1]))

    def core(self, *, wall: float | None = None, **overrides: Any) -> TurnCore:
        settings: dict[str, Any] = dict(
            listen=self.meta.get("listen", "10.198.77.1"),
            ports=(3478, 3478),
            relay_ports=(41000, 41100),
            realm=self.meta["realm"],
            ms_turn_secret=self.meta["ms_turn_secret"],
            allow_peers=tuple(self.meta.get("allow_peers", ("10.198.0.0/16",))),
        )
        settings.update(overrides)
        config = TurnConfig(**settings)
        when = self.wall if wall is None else wall
        auth = Authenticator(
            realm=config.realm,
            users={},
            ms_secret=config.ms_turn_secret,
            wall_clock=lambda: when,
            _nonce_key=bytes.fromhex(self.meta["nonce_key_hex"]),
        )
        return TurnCore(config, authenticator=auth, rng=random.Random(SEED))


def sent(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, SendToClient)]


def replay(session: Session, core: TurnCore, upto: int | None = None) -> Allocation | None:
    """Feed the capture's events (up to index ``upto``, exclusive) into ``core``."""
    alloc: Allocation | None = None
    for event in session.events[:upto]:
        kind = event.get("event", "stun")
        now = event["now"]
        if kind == "stun":
            actions = core.handle_stun(bytes.fromhex(event["in"]), session.five_tuple(event), now)
            for a in actions:
                if isinstance(a, OpenRelay):
                    alloc = a.allocation
        elif kind == "relay_opened":
            assert alloc is not None
            core.relay_opened(alloc, now)
        else:
            assert alloc is not None
            core.data_from_peer(alloc, tuple(event["peer"]), bytes.fromhex(event["in"]), now)
    return alloc


def resign(data: bytes, key: bytes, **changes: Any) -> bytes:
    """The captured message ``data`` with attributes replaced (``attr=value``, None drops it)
    or its transaction id replaced (``tid=``), signed again with ``key`` (None: unsigned)."""
    msg = ms_turn.parse(data)
    tid = changes.pop("tid", msg.transaction_id)
    replaced = {int(ms_turn.MsAttr[name.upper()]): v for name, v in changes.items()}
    attrs = []
    for t, v in msg.attributes:
        if t in (ms_turn.MsAttr.MAGIC_COOKIE, ms_turn.MsAttr.MESSAGE_INTEGRITY):
            continue
        if t in replaced:
            if replaced[t] is None:
                continue
            v = replaced.pop(t)
        attrs.append((t, v))
    attrs += [(t, v) for t, v in replaced.items() if v is not None]
    return ms_turn.encode(msg.msg_type, tid, attrs, key=key)
