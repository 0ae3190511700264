"""What the operator's page shows of each call: its SIP messages, media events and packets.

The runtime feeds :meth:`CallLog.sip` every SIP message it sends or receives (the same hook
as the metrics and the diagnostic capture). A call is recognised by its first INVITE: a
received INVITE without a To tag opens a record under its Call-ID (the call's id, as the
controller names calls); an INVITE the gateway sends without a To tag is the outbound leg of
a call the runtime's ``resolve`` names, and its Call-ID joins that record. Every later
message with a known Call-ID goes into the record; the rest (OPTIONS pings, the broker's IM)
is ignored.

Memory is bounded by :class:`CallLogSettings`: a record keeps the last ``messages`` SIP
messages and the first ``packets`` media packets (the pcap), and the log keeps the last
``calls`` records; the oldest go first (an ended call before an active one).

Media packets come from :meth:`CallLog.tap`, which wraps the ``on_media`` callbacks and the
``send`` of a call's stream legs (the relay calls them once per packet received and sent),
so the relay itself does not know about this log. The pcap thus shows each packet as it
came in (SRTP from Microsoft, say) and as it went out on the other leg (RTP to the endpoint).
Times (``now``) are Unix time: they become pcap timestamps and the
page's wall-clock times.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.diagnostics import ip_udp_packet, pcap_header, pcap_record
from gateway.status import LegSide
from media.ms_dialect import pick_sdp_body
from sip.message import Request, Response, parse_message

if TYPE_CHECKING:
    from media.session import MediaSession

__all__ = [
    "CallLog",
    "CallLogSettings",
    "CallRecord",
    "LoggedMessage",
    "LoggedPacket",
    "MediaNote",
]

logger = logging.getLogger(__name__)

Endpoint = tuple[str, int]

PENDING_LEGS = 32
"""Unclaimed legs the gateway started (transfers under way) whose messages are kept."""
PENDING_MESSAGES = 16
"""Messages kept per unclaimed leg until its call claims it."""


@dataclass(frozen=True, slots=True)
class CallLogSettings:
    """How much the call log keeps (``[system] management_*``)."""

    calls: int = 100
    """Calls kept (active and recent); the oldest ended one is dropped first."""
    messages: int = 200
    """SIP messages kept per call; the oldest are dropped first."""
    packets: int = 300
    """Media packets kept per call for its pcap (the first ones; later ones are counted)."""

    def __post_init__(self) -> None:
        for name in ("calls", "messages"):
            if getattr(self, name) < 1:
                raise ValueError(f"call log {name} must be at least 1")
        if self.packets < 0:
            raise ValueError("call log packets must be at least 0")


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """One SIP message of a call, as sent or received."""

    seq: int
    """Order across the whole log (ties in ``at`` are common)."""
    at: float
    side: LegSide
    """The network the message was on."""
    sent: bool
    """True: the gateway sent it; False: it came from the peer."""
    transport: str
    local: Endpoint
    remote: Endpoint
    leg_call_id: str
    label: str
    """``INVITE`` or ``180 Ringing``: what the ladder's arrow says."""
    cseq: str
    data: bytes
    """The message as on the wire (plain text also for TLS)."""
    has_body: bool
    """Its SDP is read only when a page asks (:meth:`CallRecord.sdp`): not on the call path."""

    @property
    def is_request(self) -> bool:
        return not self.label[:1].isdigit()


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    """One media packet received or sent on one of the call's stream legs."""

    at: float
    src: Endpoint
    dst: Endpoint
    data: bytes


@dataclass(frozen=True, slots=True)
class MediaNote:
    """A line of the media timeline."""

    at: float
    text: str


@dataclass(slots=True)
class CallRecord:
    """Everything the log keeps of one call."""

    call_id: str
    """The call's id: the inbound leg's Call-ID."""
    started_at: float
    inbound_side: LegSide
    messages: collections.deque[LoggedMessage]
    packets: list[LoggedPacket] = field(default_factory=list)
    messages_dropped: int = 0
    leg_ids: set[str] = field(default_factory=set)
    notes: list[MediaNote] = field(default_factory=list)
    """Media timeline (first packet each way, nominated pair); bounded by its few kinds."""
    tapped: bool = False
    outcome: tuple[str, str] | None = None
    """(result, reason) once the call ended, remembered from the runtime."""
    sdp_cache: dict[int, str | None] = field(default_factory=dict)

    def sdp(self, message: LoggedMessage) -> str | None:
        """The SDP part of a message's body (None: no SDP), parsed once, on demand."""
        if not message.has_body:
            return None
        if message.seq not in self.sdp_cache:
            self.sdp_cache[message.seq] = _sdp_text(message.data)
        return self.sdp_cache[message.seq]
    from_: str = ""
    to: str = ""

    @property
    def last_at(self) -> float:
        return self.messages[-1].at if self.messages else self.started_at

    def final_answer(self) -> LoggedMessage | None:
        """The gateway's final answer to the call's first INVITE (outcome of a refusal)."""
        invite = next((m for m in self.messages if m.leg_call_id == self.call_id
                       and not m.sent and m.label == "INVITE"), None)
        if invite is None:
            return None
        for message in self.messages:
            if (message.sent and message.leg_call_id == self.call_id
                    and message.cseq == invite.cseq and not message.is_request
                    and not message.label.startswith("1")):
                return message
        return None


def _label(message: Request | Response) -> str:
    if isinstance(message, Request):
        return message.method
    return f"{message.status} {message.reason}"


def _sdp_text(data: bytes) -> str | None:
    try:
        message = parse_message(data)
        body, _ = pick_sdp_body(message.content_type or "", message.body)
    except Exception:  # noqa: BLE001 - a body we cannot read is shown as the message only
        return None
    return body.decode("utf-8", "replace")


Resolver = Callable[[str], "tuple[str, MediaSession | None] | None"]
"""Outbound leg Call-ID -> (the call's id, its media session), or None if not a call's."""


class CallLog:
    """The per-call message log and the recent calls, bounded. Call from the event loop."""

    def __init__(self, settings: CallLogSettings | None = None,
                 resolve: Resolver | None = None) -> None:
        self.settings = settings or CallLogSettings()
        self.resolve = resolve
        self.records: collections.OrderedDict[str, CallRecord] = collections.OrderedDict()
        """By call id, oldest first."""
        self._by_leg: dict[str, str] = {}
        self._pending: collections.OrderedDict[str, list[LoggedMessage]] = (
            collections.OrderedDict())
        """Legs the gateway started that no call claims yet (a transfer's new leg joins its
        call only once the transfer is done): their first messages, few and bounded."""
        self._seq = itertools.count(1)
        self.is_active: Callable[[str], bool] = lambda call_id: False
        """Set by the runtime: protects active calls from eviction while ended ones remain."""
        self.outcome_of: Callable[[str], tuple[str, str] | None] = lambda call_id: None
        """Set by the runtime: an active call's state, or an ended call's (result, reason)."""

    # -- feeding -----------------------------------------------------------------------------

    def sip(self, side: LegSide, sent: bool, message: Request | Response, transport: str,
            local: Endpoint, remote: Endpoint, data: bytes, now: float) -> None:
        """One SIP message the gateway sent or received."""
        try:
            leg_id = message.call_id
        except Exception:  # noqa: BLE001 - the stack logs only parsed messages; be safe
            return
        key = self._by_leg.get(leg_id)
        if key is None:
            key = (self._claim(leg_id) if leg_id in self._pending
                   else self._open(side, sent, message, leg_id, now))
        try:
            cseq = str(message.cseq)
        except Exception:  # noqa: BLE001
            cseq = ""
        logged = LoggedMessage(next(self._seq), now, side, sent, transport, local, remote,
                               leg_id, _label(message), cseq, data, bool(message.body))
        if key is None:
            pending = self._pending.get(leg_id)
            if pending is not None and len(pending) < PENDING_MESSAGES:
                pending.append(logged)
            return
        record = self.records.get(key)
        if record is None:
            return
        self._append(record, logged)

    @staticmethod
    def _append(record: CallRecord, logged: LoggedMessage) -> None:
        if len(record.messages) == record.messages.maxlen:
            record.messages_dropped += 1
        record.messages.append(logged)

    def _claim(self, leg_id: str) -> str | None:
        """A pending leg's call, once the runtime names it; its messages join the call's."""
        found = self.resolve(leg_id) if self.resolve is not None else None
        record = self.records.get(found[0]) if found is not None else None
        if record is None:
            return None
        earlier = self._pending.pop(leg_id, [])
        merged = sorted([*record.messages, *earlier], key=lambda m: m.seq)
        record.messages.clear()
        for logged in merged:
            self._append(record, logged)
        record.leg_ids.add(leg_id)
        self._by_leg[leg_id] = record.call_id
        return record.call_id

    def _open(self, side: LegSide, sent: bool, message: Request | Response, leg_id: str,
              now: float) -> str | None:
        if not isinstance(message, Request) or message.method != "INVITE":
            return None
        try:
            if message.to.tag is not None:
                return None
        except Exception:  # noqa: BLE001
            return None
        if not sent:
            record = CallRecord(leg_id, now, side,
                                collections.deque(maxlen=self.settings.messages))
            try:
                record.from_ = str(message.from_)
                record.to = str(message.to)
            except Exception:  # noqa: BLE001
                pass
            self._add(record)
            record.leg_ids.add(leg_id)
            self._by_leg[leg_id] = leg_id
            return leg_id
        found = self.resolve(leg_id) if self.resolve is not None else None
        if found is None:
            self._pending[leg_id] = []
            while len(self._pending) > PENDING_LEGS:
                self._pending.popitem(last=False)
            return None
        key, media = found
        owner = self.records.get(key)
        if owner is None:
            return None
        owner.leg_ids.add(leg_id)
        self._by_leg[leg_id] = key
        if media is not None and not owner.tapped:
            self.tap(key, media)
        return key

    def _add(self, record: CallRecord) -> None:
        old = self.records.pop(record.call_id, None)
        if old is not None:
            self._forget(old)
        self.records[record.call_id] = record
        while len(self.records) > self.settings.calls:
            victim = next((r for r in self.records.values()
                           if not self.is_active(r.call_id)), None)
            if victim is None:
                victim = next(iter(self.records.values()))
            del self.records[victim.call_id]
            self._forget(victim)

    def _forget(self, record: CallRecord) -> None:
        for leg_id in record.leg_ids:
            if self._by_leg.get(leg_id) == record.call_id:
                del self._by_leg[leg_id]

    # -- media -------------------------------------------------------------------------------

    def tap(self, call_id: str, media: MediaSession) -> None:
        """Record the packets received and sent on every stream leg of ``media`` (wraps each
        leg's ``on_media`` callback and its ``send``)."""
        record = self.records.get(call_id)
        if record is None:
            return
        record.tapped = True
        for stream in media.streams:
            if stream is None:
                continue
            ice, video = stream.ice, stream.video

            def ms_source(component: int, ice: Any = ice) -> tuple[Endpoint, Endpoint]:
                # aioice's nominated pair (media.ice_leg copies it into its routes only once
                # connect() returns; packets may come before that).
                pair = ice.agent._nominated.get(component)
                src = tuple(pair.remote_addr[:2]) if pair is not None else ("0.0.0.0", 0)
                return src, (ice.host, ice.ports[component - 1])

            def video_source(component: int, video: Any = video) -> tuple[Endpoint, Endpoint]:
                latch = video.latches[component - 1]
                peer = latch.latched or latch.target
                src = tuple(peer[:2]) if peer is not None else ("0.0.0.0", 0)
                return src, (video.host, video.ports[component - 1])

            noted: list[Any] = [None]
            """The ICE pair the timeline shows (component 1), once it shows one."""
            # IceLeg.route is what its agent calls when a better pair is nominated after
            # the checks completed (PriorityAgent.nominated_pair): note each upgrade.
            setattr(ice, "route", self._wrap_route(  # noqa: B010
                record, ice, ice.route, noted, f"{stream.kind}: ", time.time))
            for leg, where, side_name in ((ice, ms_source, "Microsoft"),
                                          (video, video_source, "video")):
                inner = leg.on_media
                if inner is None:
                    continue
                leg.on_media = self._wrap(record, leg, inner, where,
                                          f"{stream.kind}: first packet from the {side_name} "
                                          "side", ice if leg is ice else None, time.time,
                                          noted)
                # An instance attribute shadows the method: the relay's leg.send() finds it.
                setattr(leg, "send", self._wrap_send(  # noqa: B010
                    record, leg, leg.send, where, f"{stream.kind}: first packet to the "
                    f"{side_name} side", time.time))

    def _wrap_send(self, record: CallRecord, leg: Any, inner: Callable[[bytes, int], bool],
                   where: Callable[[int], tuple[Endpoint, Endpoint]], first_text: str,
                   clock: Callable[[], float]) -> Callable[[bytes, int], bool]:
        limit = self.settings.packets
        first = [True]

        def send(data: bytes, component: int) -> bool:
            sent = inner(data, component)
            if sent and (first[0] or len(record.packets) < limit):
                now = clock()
                peer, ours = where(component)
                if first[0]:
                    first[0] = False
                    record.notes.append(MediaNote(now, f"{first_text} ({_ep(peer)})"))
                if len(record.packets) < limit:
                    record.packets.append(LoggedPacket(now, ours, peer, data))
            elif sent:
                # Capture full and first packet noted: the relay calls its own send again.
                leg.__dict__.pop("send", None)
            return sent

        return send

    @staticmethod
    def _wrap_route(record: CallRecord, ice: Any, inner: Callable[[Any], None],
                    noted: list[Any], prefix: str,
                    clock: Callable[[], float]) -> Callable[[Any], None]:
        def route(pair: Any) -> None:
            inner(pair)
            previous = noted[0]
            if pair.component == 1 and previous is not None and pair is not previous:
                noted[0] = pair
                record.notes.append(MediaNote(clock(), f"{prefix}ICE pair upgraded to "
                                              f"{_pair(pair)}, nominated over {_pair(previous)}"))

        return route

    def _wrap(self, record: CallRecord, leg: Any, inner: Callable[[bytes, int], None],
              where: Callable[[int], tuple[Endpoint, Endpoint]], first_text: str,
              ice: Any, clock: Callable[[], float],
              noted: list[Any]) -> Callable[[bytes, int], None]:
        limit = self.settings.packets
        first = [True]
        # Media may come before our side of ICE has nominated: note the pair once it has.
        pair_noted = [ice is None]

        def on_media(data: bytes, component: int) -> None:
            if not pair_noted[0] and ice.agent._nominated.get(1) is not None:
                pair_noted[0] = True
                noted[0] = ice.agent._nominated.get(1)
                record.notes.append(MediaNote(clock(), _nominated(ice)))
            if first[0] or len(record.packets) < limit:
                now = clock()
                src, dst = where(component)
                if first[0]:
                    first[0] = False
                    if not pair_noted[0]:
                        record.notes.append(MediaNote(now, _nominated(ice)))
                    record.notes.append(MediaNote(now, f"{first_text} ({_ep(src)})"))
                if len(record.packets) < limit:
                    record.packets.append(LoggedPacket(now, src, dst, data))
            elif pair_noted[0] and leg.on_media is on_media:
                # Capture full, notes taken: out of the relay's per-packet path for good.
                leg.on_media = inner
            inner(data, component)

        return on_media

    # -- reading -----------------------------------------------------------------------------

    def get(self, call_id: str) -> CallRecord | None:
        return self.records.get(call_id)

    def newest_first(self) -> Iterator[CallRecord]:
        return reversed(self.records.values())

    def pcap(self, call_id: str) -> bytes | None:
        """The call's SIP messages and recorded media packets as one pcap (time order)."""
        record = self.records.get(call_id)
        if record is None:
            return None
        items: list[tuple[float, int, bytes]] = []
        ident = itertools.count(1)
        for message in record.messages:
            src, dst = ((message.local, message.remote) if message.sent
                        else (message.remote, message.local))
            items.append((message.at, 0, ip_udp_packet(src, dst, message.data, next(ident))))
        for packet in record.packets:
            items.append((packet.at, 1, ip_udp_packet(packet.src, packet.dst, packet.data,
                                                      next(ident))))
        items.sort(key=lambda item: (item[0], item[1]))
        return pcap_header() + b"".join(pcap_record(at, packet) for at, _, packet in items)


def _ep(endpoint: Endpoint) -> str:
    host = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
    return f"{host}:{endpoint[1]}"


def _nominated(ice: Any) -> str:
    """The ICE pair in use, from aioice's nominated pairs (what media.ice_leg reads too)."""
    try:
        pair = ice.agent._nominated.get(1)
        checks = ice.agent._check_list
        states: collections.Counter[str] = collections.Counter(
            getattr(p.state, "name", str(p.state)).lower() for p in checks)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        if pair is None:
            return f"ICE checks: {summary or 'none'}; no nominated pair yet"
        return f"ICE pair {_pair(pair)} (checks: {summary})"
    except Exception:  # noqa: BLE001 - aioice internals may change; the timeline says so
        return "ICE pair: unknown"


def _pair(pair: Any) -> str:
    local, remote = pair.local_candidate, pair.remote_candidate
    return f"{local.type} {local.host}:{local.port} -> {remote.type} {remote.host}:{remote.port}"
