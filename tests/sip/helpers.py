"""In-memory pair of transaction layers (like aioquic's client_and_server / h11's
ConnectionPair): messages go through real encode/parse, time is driven by hand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sip.events import Event
from sip.message import Headers, Request, Response, new_branch, parse_message
from sip.timers import TimerSettings
from sip.transaction_layer import TransactionLayer
from sip.uri import URI

Message = Request | Response


@dataclass(frozen=True, slots=True)
class Addr:
    """An address as the transport would give it: host, port and reliability."""

    host: str
    port: int
    reliable: bool = False


def make_request(
    method: str,
    *,
    uri: str = "sip:bob@127.0.0.2",
    via_host: str = "127.0.0.1",
    via_port: int = 5060,
    transport: str = "UDP",
    branch: str | None = None,
    call_id: str = "call-1@127.0.0.1",
    from_tag: str = "fromtag1",
    to: str = "<sip:bob@example.com>",
    cseq: int = 1,
    via_params: str = "",
    extra: tuple[tuple[str, str], ...] = (),
) -> Request:
    """A minimal valid request."""
    headers = Headers(
        [
            (
                "Via",
                f"SIP/2.0/{transport} {via_host}:{via_port};branch={branch or new_branch()}"
                f"{via_params}",
            ),
            ("Max-Forwards", "70"),
            ("From", f"<sip:alice@example.com>;tag={from_tag}"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            *extra,
        ]
    )
    return Request(method, URI.parse(uri), headers)


def wire(message: Message) -> Message:
    """The message as the other side sees it: encoded to bytes and parsed again."""
    return parse_message(message.encode())


def drain(layer: TransactionLayer) -> list[Event]:
    """Every pending event of ``layer``."""
    events: list[Event] = []
    while (event := layer.next_event()) is not None:
        events.append(event)
    return events


@dataclass
class LayerPair:
    """A UAC layer and a UAS layer joined by lists of messages.

    ``flush(drop=...)`` moves messages both ways (through bytes) until nothing is left;
    ``drop(message)`` returning True loses one on the wire. ``advance(t)`` fires both
    layers' timers in deadline order up to ``t``, flushing after each.
    """

    reliable: bool = False
    settings: TimerSettings = field(default_factory=TimerSettings)
    now: float = 0.0
    uac: TransactionLayer = field(init=False)
    uas: TransactionLayer = field(init=False)
    uac_addr: Addr = field(init=False)
    uas_addr: Addr = field(init=False)
    from_uac: list[tuple[float, Message]] = field(default_factory=list)
    """Everything the UAC put on the wire, with the time (dropped ones too)."""
    from_uas: list[tuple[float, Message]] = field(default_factory=list)
    """Everything the UAS put on the wire, with the time (dropped ones too)."""
    drop: Callable[[Message], bool] = field(default=lambda message: False)

    def __post_init__(self) -> None:
        self.uac = TransactionLayer(self.settings)
        self.uas = TransactionLayer(self.settings)
        self.uac_addr = Addr("127.0.0.1", 5060, self.reliable)
        self.uas_addr = Addr("127.0.0.2", 5060, self.reliable)

    def flush(self) -> None:
        while True:
            moved = False
            for sender, receiver, log, expected, source in (
                (self.uac, self.uas, self.from_uac, self.uas_addr, self.uac_addr),
                (self.uas, self.uac, self.from_uas, self.uac_addr, self.uas_addr),
            ):
                for message, destination in sender.messages_to_send():
                    moved = True
                    assert destination == expected, (destination, expected)
                    log.append((self.now, message))
                    if not self.drop(message):
                        receiver.receive(wire(message), source, self.now)
            if not moved:
                return

    def next_deadline(self) -> float | None:
        deadlines = [t for t in (self.uac.get_timer(), self.uas.get_timer()) if t is not None]
        return min(deadlines) if deadlines else None

    def advance(self, until: float) -> None:
        self.flush()
        while (deadline := self.next_deadline()) is not None and deadline <= until:
            self.now = max(self.now, deadline)
            self.uac.handle_timer(self.now)
            self.uas.handle_timer(self.now)
            self.flush()
        self.now = max(self.now, until)

    def sent(self, side: str, kind: str | int) -> list[float]:
        """Times at which ``side`` ("uac"/"uas") sent a request method or response status."""
        log = self.from_uac if side == "uac" else self.from_uas
        return [t for t, m in log if _kind(m) == kind]


def _kind(message: Message) -> str | int:
    return message.method if isinstance(message, Request) else message.status


def only(events: list[Any], kind: type) -> list[Any]:
    """The events of one type."""
    return [e for e in events if isinstance(e, kind)]
