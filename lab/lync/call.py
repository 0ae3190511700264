"""One call of the simulated Lync client: its state and its ``lab.api.CallHandle`` face.

The call's streams, dialog and SDP versions live here; hold, resume and add-video send the
re-INVITE themselves. Placing, answering and ending calls is :mod:`lab.lync.call_control`.
A call stays "connected" (Lync shows "Connecting...") until RTP arrives, then turns "media".
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from lab.api import MediaReport
from lab.lync import offer as sdp_offer
from lab.lync.client_media import MediaStream
from media.ms_dialect import pick_sdp_body
from media.sdp import SessionDescription, parse_sdp
from sip.dialog import Dialog, DialogState
from sip.message import Request, Response
from sip.stack import ClientRequest
from sip.transaction_server import ServerTransaction

if TYPE_CHECKING:
    from lab.lync.client import LyncClient

__all__ = ["SDP", "CallRefused", "LyncCall", "describe", "sdp_of"]

logger = logging.getLogger(__name__)

SDP = "application/sdp"


class CallRefused(Exception):
    """The call was not answered with a 2xx (or could not be placed)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The final status, None for a timeout or transport failure."""


class LyncCall:
    """One call of a :class:`LyncClient` (a ``lab.api.CallHandle``)."""

    def __init__(self, client: LyncClient, call_id: str, *, outgoing: bool, peer: str) -> None:
        self.client = client
        self.call_id = call_id
        self.outgoing = outgoing
        self.peer = peer
        """The other party's URI."""
        self.streams: list[MediaStream] = []
        self.dialog: Dialog | None = None
        self.session_id = secrets.randbelow(2**31)
        self.version = 0
        self.remote_sdp: SessionDescription | None = None
        self.ringing = False
        self.answered = asyncio.get_running_loop().create_future()
        """Resolves when a 2xx is sent or received; fails with CallRefused."""
        self.ended = asyncio.Event()
        self.result = ""
        """How the call ended."""
        self.invite: ClientRequest | None = None
        self.invite_tx: ServerTransaction | None = None
        self.on_hold = False
        """We put the call on hold: our answers never receive until we resume."""
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- CallHandle -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.ended.is_set():
            return "ended"
        if self.answered.done() and not self.answered.exception():
            if any(s.counters.received for s in self.streams):
                return "media"
            return "connected"
        return "ringing" if self.ringing else "connecting"

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.answered), timeout)

    async def wait_media(self, *, both_ways: bool = True, min_packets: int = 10,
                         timeout: float = 10.0) -> MediaReport:
        """Until ``min_packets`` arrived (and were sent, with both_ways) on every stream
        that carries media in our direction."""
        async def reached() -> MediaReport:
            while True:
                self._changed.clear()
                if self.ended.is_set():
                    raise CallRefused(f"call ended: {self.result}")
                failed = [s.failed for s in self.streams if s.failed]
                if failed:
                    raise ConnectionError(failed[0])
                report = self.media()
                if self.streams and report.packets_received >= min_packets and (
                        not both_ways or report.packets_sent >= min_packets):
                    return report
                await self._changed.wait()
        try:
            return await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no media within {timeout} s: {self.media()}") from None

    async def hold(self) -> None:
        self.on_hold = True
        await self._reinvite("sendonly")

    async def resume(self) -> None:
        self.on_hold = False
        await self._reinvite("sendrecv")

    async def add_video(self) -> None:
        if any(s.kind == "video" for s in self.streams):
            return
        stream = self.client.call_control.new_stream("video", self, controlling=True)
        await stream.ice.gather()
        self.streams.append(stream)
        await self._reinvite(None)

    async def hangup(self) -> None:
        if self.ended.is_set():
            return
        if not self.answered.done():
            if self.invite is not None:
                self.invite.cancel()
                try:
                    await asyncio.wait_for(asyncio.shield(self.answered), 10.0)
                except (CallRefused, TimeoutError):
                    pass
                if not self.answered.done() or self.answered.exception():
                    await self.finish("cancelled")
                    return
            elif self.invite_tx is not None:
                self.client.agent.stack.respond(self.invite_tx, 486, "Busy Here")
                await self.finish("declined")
                return
        await self.client.call_control.bye(self)

    def media(self) -> MediaReport:
        kinds = tuple(s.kind for s in self.streams if s.counters.received or s.counters.sent)
        return MediaReport(
            packets_sent=sum(s.counters.sent for s in self.streams),
            packets_received=sum(s.counters.received for s in self.streams),
            streams=kinds,
            ice_pair=next((s.ice.pair_type for s in self.streams if s.ice.pair_type), None),
        )

    # -- internals ----------------------------------------------------------------------------

    def changed(self) -> None:
        self._changed.set()

    def descriptions(self, direction: str | None = None
                     ) -> list[sdp_offer.StreamDescription]:
        out = []
        for stream in self.streams:
            if direction is not None:
                stream.direction = direction
            out.append(sdp_offer.StreamDescription(
                kind=stream.kind, ufrag=stream.ice.local_username,
                pwd=stream.ice.local_password, candidates=stream.ice.sdp_candidates,
                cryptos=stream.cryptos, ssrc_range=stream.ssrc_range,
                direction=stream.direction))
        return out

    def body(self, streams: list[sdp_offer.StreamDescription]) -> bytes:
        self.version += 1
        return sdp_offer.sdp_text(streams, host=self.client.config.host,
                                  session_id=self.session_id, version=self.version)

    async def _reinvite(self, direction: str | None) -> None:
        async with self._lock:
            dialog = self._live_dialog()
            body = self.body(self.descriptions(direction))
            agent = self.client.agent
            request, hop = agent.dialog_request(dialog, "INVITE", body=body, content_type=SDP)
            pending = agent.stack.start_request(request, hop)
            response = await pending.final
            self.client.signin.check_signed(response)
            dialog.receive_response(request, response)
            if not 200 <= response.status < 300:
                raise CallRefused(f"re-INVITE answered {response.status} {response.reason}",
                                  response.status)
            agent.send_ack(dialog, pending.transaction)
            answer = sdp_of(response)
            if answer is not None:
                self.client.call_control.apply_answer(self, answer)

    def _live_dialog(self) -> Dialog:
        if self.dialog is None or self.dialog.state is DialogState.TERMINATED:
            raise CallRefused(f"call {self.call_id} has no live dialog")
        return self.dialog

    async def finish(self, result: str) -> None:
        if self.ended.is_set():
            return
        self.result = result
        self.ended.set()
        if not self.answered.done():
            self.answered.set_exception(CallRefused(result))
            self.answered.exception()
        if self.dialog is not None:
            self.dialog.terminate()
            self.client.agent.dialogs.remove(self.dialog.id)
        self.client.call_control.calls.pop(self.call_id, None)
        self.changed()
        logger.info("[%s] call %s %s ended: %s (%s)", self.client.aor, self.call_id,
                    self.peer, result, self.media())
        await asyncio.gather(*(s.close() for s in self.streams))


def sdp_of(message: Request | Response) -> SessionDescription | None:
    """The SDP of a body (the RFC 5245 part of a multipart offer); None without a body."""
    if not message.body:
        return None
    body, _ = pick_sdp_body(message.content_type or "", message.body)
    return parse_sdp(body)


def describe(call: LyncCall) -> str:
    """One line for logs and the CLI."""
    report = call.media()
    return (f"call {call.call_id} {'to' if call.outgoing else 'from'} {call.peer}: "
            f"{call.state}, ICE {report.ice_pair or '-'}, sent {report.packets_sent}, "
            f"received {report.packets_received}")

