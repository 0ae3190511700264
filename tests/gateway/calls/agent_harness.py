"""The B2BUA in memory: the real call adapter and its two real ``SideAgent`` s, each over a
``SipStack`` whose transport is a dict of stacks (no sockets), a scripted peer UA per side,
a media session that binds nothing, and a clock advanced by hand.

Every message goes as bytes (encoded by the sender, parsed by the receiver). Time is the
event loop's: :class:`ClockLoop` adds a hand-moved offset to ``time()``, so the stacks' and
the adapter's ``call_at`` timers fire when a test calls :meth:`Harness.advance`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.calls.adapter import CallController
from gateway.config import ZoneConfig, loads
from gateway.leg import SideAgent
from gateway.runtime import Gateway, RuntimeOptions
from gateway.views import LegSide
from media.events import MediaClosed, MediaEvent
from media.session import MediaSession
from sip.dialog import Dialog
from sip.message import Request, Response, parse_message
from sip.stack import ClientRequest, Hop, SipStack
from sip.timers import TimerSettings
from sip.transaction_server import ServerTransaction
from sip.transport import (
    ConnectionInfo,
    ReceivedMessage,
    Transport,
    TransportAddress,
    TransportCounters,
    TransportSettings,
)
from sip.uri import URI
from sip.useragent import UserAgent, response_for
from tests.gateway.lab_routing import LAB_SEARCH_RULES, LAB_TRANSFORMS

GATEWAY_MS = TransportAddress(Transport.TCP, "127.0.2.1", 5061)
GATEWAY_VIDEO = TransportAddress(Transport.TCP, "127.0.2.1", 5060)
FE = TransportAddress(Transport.TCP, "127.0.1.1", 5061)
CUCM = TransportAddress(Transport.TCP, "127.0.3.1", 5060)

CONFIG = f"""
[system]
host_name = "exp01"
domain = "video.example.com"
cluster_fqdn = "lyncexp.video.example.com"

[b2bua]
listen = "tcp:{GATEWAY_MS.host}:{GATEWAY_MS.port}"
ms_destination = "tcp:{FE.host}:{FE.port}"
encryption = "required"
max_calls = 10
media_ports = "40000-40999"
trusted_hosts = [{{ name = "fe01", address = "{FE.host}", type = "microsoft" }}]
session_expires = 1800
min_se = 90

[video]
listen = ["tcp:{GATEWAY_VIDEO.host}:{GATEWAY_VIDEO.port}"]

[[zones]]
name = "CUCM Neighbor"
peers = ["{CUCM.host}"]
port = {CUCM.port}
transport = "tcp"
monitor = false

{LAB_SEARCH_RULES}
{LAB_TRANSFORMS}
"""


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock a test moves forward (``advance``)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


# -- the wire ------------------------------------------------------------------------------


class Network:
    """The in-memory transports by listening address; a message is delivered on the loop's
    next turn, as bytes parsed again."""

    def __init__(self) -> None:
        self.ends: dict[TransportAddress, MemoryTransports] = {}
        self._ids = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids


class MemoryTransports:
    """What ``SipStack`` uses of a ``TransportManager``, over :class:`Network`."""

    def __init__(self, network: Network, stack: SipStack, address: TransportAddress) -> None:
        self.network = network
        self.stack = stack
        self.address = address
        self.settings = TransportSettings()
        self.counters = TransportCounters()
        self.on_oversized_response: Callable[..., None] | None = None
        self.connection = ConnectionInfo(network.next_id(), address.transport, address, None,
                                         False)
        network.ends[address] = self

    @property
    def listeners(self) -> tuple[TransportAddress, ...]:
        return (self.address,)

    async def send(self, data: bytes, address: TransportAddress, *,
                   server_hostname: str | None = None,
                   connection_id: int | None = None) -> ConnectionInfo:
        target = self.network.ends.get(
            TransportAddress(self.address.transport, address.host, address.port))
        if target is not None:  # else lost, as a datagram to nowhere would be
            received = ReceivedMessage(parse_message(data), self.address, target.connection,
                                       data)
            asyncio.get_running_loop().call_soon(target.stack._on_message, received)
        return self.connection

    async def close(self) -> None:
        self.network.ends.pop(self.address, None)


def memory_stack(network: Network, address: TransportAddress,
                 observer: Any = None) -> SipStack:
    """A ``SipStack`` on ``address`` of ``network`` (its TransportManager swapped out before
    it bound anything: the stack only ever calls the members MemoryTransports has)."""
    stack = SipStack(timers=TimerSettings(), observer=observer)
    stack.transports = MemoryTransports(network, stack, address)  # type: ignore[assignment]
    return stack


# -- media -----------------------------------------------------------------------------------


@dataclass
class _Ends:
    ports: tuple[int, int]
    ufrag: str = "Gw01"
    pwd: str = "gatewaypasswordgatewaypw"
    local_candidates: tuple[Any, ...] = ()


@dataclass
class _Stream:
    index: int
    kind: str
    ice: _Ends
    video: _Ends
    ssrc_range: Any = None

    def counters(self) -> tuple[int, ...]:
        return (0, 0, 0, 0)


class FakeMedia(MediaSession):
    """A media session that binds no port: plans with made-up ports, ``apply`` recorded."""

    def __init__(self, call_id: str, on_event: Callable[[MediaEvent], None]) -> None:
        super().__init__(call_id, None, on_event=on_event)  # type: ignore[arg-type]
        self.applied = 0
        self.last_applied: dict[str, Any] = {}
        """The descriptions of the last ``apply``."""
        self.gate: asyncio.Event | None = None
        """When set, ``apply`` waits for it (media still being applied: a test's window)."""
        self.closed = False

    async def prepare(self, kinds: Any) -> None:
        for index in range(len(self.kinds), len(kinds)):
            base = 40000 + 4 * index
            self.kinds.append(kinds[index])
            self.streams.append(_Stream(index, kinds[index], _Ends((base, base + 1)),  # type: ignore[arg-type]
                                        _Ends((base + 2, base + 3))))
            self._keys[index] = (random.randbytes(30), random.randbytes(30))

    async def apply(self, **sdp: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.applied += 1
        self.last_applied = sdp

    def counters(self) -> tuple[Any, ...]:
        return ()

    @property
    def ports(self) -> tuple[int, ...]:
        return ()

    @property
    def bound_ports(self) -> int:
        return 0

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(MediaClosed(0))


class Services(Gateway):
    """The gateway as call control sees it (``CallServices``): the real routing, trusted
    hosts and metrics of the config above, agents over memory stacks, :class:`FakeMedia`."""

    def __init__(self) -> None:
        super().__init__(loads(CONFIG), RuntimeOptions())
        self.sessions: list[FakeMedia] = []

    def media_session(self, call_id: str, zone: ZoneConfig | None,
                      on_event: Callable[[MediaEvent], None]) -> MediaSession:
        session = FakeMedia(call_id, on_event)
        self.sessions.append(session)
        return session


# -- the peers -----------------------------------------------------------------------------


class Peer(UserAgent):
    """A scripted UA (the FE or CUCM): every message it receives is kept, new requests wait
    in ``incoming`` for the script to answer."""

    supported = frozenset({"100rel", "timer"})

    def __init__(self, network: Network, address: TransportAddress, user: str,
                 domain: str) -> None:
        stack = memory_stack(network, address, observer=self._observe)
        super().__init__(stack, user=user, domain=domain)
        self.address = address
        self.received: list[Request | Response] = []
        self.incoming: list[tuple[ServerTransaction, Request]] = []

    def _observe(self, sent: bool, message: Request | Response, *_: Any) -> None:
        if not sent:
            self.received.append(message)

    def handle_new_request(self, transaction: ServerTransaction,
                           request: Request) -> Awaitable[None] | None:
        self.incoming.append((transaction, request))
        return None

    def handle_cancel(self, transaction: ServerTransaction, cancel: Request) -> None:
        self.stack.respond(transaction, 487)

    # -- the script's calls ------------------------------------------------------------------

    def invite(self, target: str, gateway: Hop, body: bytes, content_type: str,
               headers: tuple[tuple[str, str], ...] = ()) -> ClientRequest:
        """Send an INVITE for ``target`` (``user@host``) to the gateway."""
        uri = URI.parse(f"sip:{target};transport=tcp")
        request = self.new_request("INVITE", uri, gateway, body=body, content_type=content_type,
                                   headers=headers)
        return self.stack.start_request(request, gateway)

    def confirm(self, pending: ClientRequest, gateway: Hop) -> Dialog:
        """The dialog of our INVITE's 2xx, ACKed."""
        response = pending.final.result()
        dialog = Dialog.create_uac(pending.request, response)
        self.dialogs.add(dialog, gateway)
        self.send_ack(dialog, pending.transaction)
        return dialog

    def take(self, method: str = "INVITE") -> tuple[ServerTransaction, Request]:
        """The oldest unanswered new request (it must be ``method``)."""
        assert self.incoming, f"no {method} came"
        transaction, request = self.incoming.pop(0)
        assert request.method == method, request.method
        return transaction, request

    def answer(self, transaction: ServerTransaction, request: Request, status: int, *,
               body: bytes = b"", tag: str = "peer1",
               headers: tuple[tuple[str, str], ...] = ()) -> Dialog | None:
        """Answer a new INVITE; a 1xx/2xx with our tag makes (or confirms) the dialog."""
        response = response_for(request, status, to_tag=tag,
                                contact=self.contact(Transport.TCP), body=body,
                                content_type="application/sdp" if body else None)
        for name, value in headers:
            response.headers.add(name, value)
        dialog = None
        if 101 <= status < 300:
            made = Dialog.create_uas(request, response)
            dialog = self.dialogs.get(made.id)
            if dialog is None:
                dialog = self.dialogs.add(made, transaction.source)
            elif status >= 200:
                dialog.confirm()
        self.stack.send_response(transaction, response)
        return dialog

    def bye(self, dialog: Dialog) -> ClientRequest:
        request, hop = self.dialog_request(dialog, "BYE")
        dialog.terminate()
        return self.stack.start_request(request, hop)

    def handle_dialog_request(self, dialog: Dialog, transaction: ServerTransaction,
                              request: Request) -> Awaitable[None] | None:
        if request.method == "BYE":
            self.stack.respond(transaction, 200)
            self.dialogs.remove(dialog.id)
            return None
        self.incoming.append((transaction, request))
        return None

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.received if isinstance(m, Request) and m.method == method]

    def responses(self, method: str = "INVITE") -> list[Response]:
        return [m for m in self.received
                if isinstance(m, Response) and m.cseq.method == method]

    def statuses(self, method: str = "INVITE") -> list[int]:
        return [r.status for r in self.responses(method)]


class Harness:
    """The gateway between ``fe`` (Microsoft side) and ``cucm`` (video side)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ClockLoop), "run under ClockLoop (see run())"
        self.loop = loop
        self.network = Network()
        self.services = Services()
        self.controller: CallController = self.services.controller
        for side, address in ((LegSide.MICROSOFT, GATEWAY_MS), (LegSide.VIDEO, GATEWAY_VIDEO)):
            stack = memory_stack(self.network, address)
            self.services.stacks[side] = stack
            self.services.agents[side] = SideAgent(stack, side, self.controller,
                                                   user="gateway", domain="video.example.com")
        self.services.identity = type(self.services.identity).from_addresses(
            [GATEWAY_MS, GATEWAY_VIDEO])
        self.fe = Peer(self.network, FE, "alice", "example.com")
        self.cucm = Peer(self.network, CUCM, "3001", "video.example.com")

    def ended(self, result: str) -> float:
        """The gateway's count of calls that ended with ``result`` (``completed``...)."""
        value = self.services.metrics.registry.get_sample_value(
            "gateway_calls_total", {"result": result})
        return value or 0.0

    def hop(self, side: LegSide) -> Hop:
        return Hop.of(GATEWAY_MS if side is LegSide.MICROSOFT else GATEWAY_VIDEO)

    async def settle(self, turns: int = 40) -> None:
        """Let every message and task in flight run (delivery is one loop turn each)."""
        for _ in range(turns):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, step: float = 0.5) -> None:
        """Move the clock forward, a step at a time, letting what falls due run."""
        end = self.loop.offset + seconds
        while self.loop.offset < end:
            self.loop.offset = min(end, self.loop.offset + step)
            await self.settle()

    async def close(self) -> None:
        await self.controller.close()
        for stack in [*self.services.stacks.values(), self.fe.stack, self.cucm.stack]:
            await stack.close()


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    """Run ``scenario`` against a fresh harness on a :class:`ClockLoop`."""
    loop = ClockLoop()

    async def main() -> None:
        harness = Harness()
        try:
            await scenario(harness)
        finally:
            await harness.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
