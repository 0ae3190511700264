"""A call of the endpoint as a :class:`lab.api.CallHandle`: the same test code drives a
call whether a Lync client or a SIP endpoint holds it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from lab.api import MediaReport
from lab.endpoint.agent import Call, CallFailed, CallState, OutgoingInvite

if TYPE_CHECKING:
    from lab.endpoint.agent import Endpoint

__all__ = ["EndpointCall"]


class EndpointCall:
    """One call (placed or received) of an :class:`Endpoint`."""

    def __init__(
        self, endpoint: Endpoint, call: Call, setup: asyncio.Task[Call] | None = None
    ) -> None:
        self.endpoint = endpoint
        self.call = call
        """The endpoint's record of the call."""
        self._setup = setup
        self._outgoing: OutgoingInvite | None = None

    @classmethod
    def outgoing(cls, endpoint: Endpoint, outgoing: OutgoingInvite) -> EndpointCall:
        """A call we placed: its setup runs on in the background."""
        setup = asyncio.ensure_future(endpoint.complete_invite(outgoing))
        # A refused call is reported by wait_connected; never an unretrieved exception.
        setup.add_done_callback(lambda task: task.cancelled() or task.exception())
        handle = cls(endpoint, outgoing.call, setup)
        handle._outgoing = outgoing
        return handle

    @classmethod
    def incoming(cls, endpoint: Endpoint, call: Call) -> EndpointCall:
        """A call offered to us (answered per the endpoint's settings)."""
        return cls(endpoint, call)

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def state(self) -> str:
        """"connecting", "ringing", "connected", "media" (RTP arrived) or "ended"."""
        call = self.call
        if call.state is CallState.ENDED:
            return "ended"
        if call.state in (CallState.ANSWERED, CallState.CONFIRMED):
            return "media" if call.rtp_packets else "connected"
        return "ringing" if call.ringing else "connecting"

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Until the call is answered; CallFailed (with the status) when refused."""
        async with asyncio.timeout(timeout):
            if self._setup is not None:
                await asyncio.shield(self._setup)
                return
            if self.call.state is CallState.RINGING:
                ended = asyncio.ensure_future(self.call.ended.wait())
                confirmed = asyncio.ensure_future(self.call.confirmed.wait())
                try:
                    await asyncio.wait({ended, confirmed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ended.cancel()
                    confirmed.cancel()
        if self.call.state is CallState.ENDED and self.call.answered_at is None:
            raise CallFailed(f"call {self.call_id} ended unanswered: {self.call.result}")

    async def wait_media(
        self, *, both_ways: bool = True, min_packets: int = 10, timeout: float = 10.0
    ) -> MediaReport:
        """Until ``min_packets`` RTP packets arrived (and were sent, when ``both_ways``)."""
        try:
            async with asyncio.timeout(timeout):
                await self.wait_connected(timeout)
                while True:
                    report = self.media()
                    if report.packets_received >= min_packets and (
                        not both_ways or report.packets_sent >= min_packets
                    ):
                        return report
                    if self.call.state is CallState.ENDED:
                        raise CallFailed(f"call {self.call_id} ended: {self.call.result}")
                    await self._progress()
        except TimeoutError:
            report = self.media()
            raise TimeoutError(
                f"call {self.call_id}: {report.packets_received} RTP packets in, "
                f"{report.packets_sent} out after {timeout} s (wanted {min_packets})"
            ) from None

    async def _progress(self) -> None:
        """Until any port sends or receives a packet, or the call ends."""
        waiters = [asyncio.ensure_future(self.call.ended.wait())]
        for port in self.call.media:
            if port is not None and not port.closed:
                port.changed.clear()
                waiters.append(asyncio.ensure_future(port.changed.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _reinvite(self, direction: str, *, video: bool | None = None) -> None:
        response = await self.endpoint.reinvite(self.call, direction, video=video)
        if not 200 <= response.status < 300:
            raise CallFailed(
                f"re-INVITE answered {response.status} {response.reason}", response.status
            )

    async def hold(self) -> None:
        """re-INVITE with a=sendonly."""
        await self._reinvite("sendonly")

    async def resume(self) -> None:
        """re-INVITE with a=sendrecv."""
        await self._reinvite("sendrecv")

    async def add_video(self) -> None:
        """re-INVITE adding a video stream to a voice call."""
        await self._reinvite(self._current_direction(), video=True)

    def _current_direction(self) -> str:
        directions = self.call.directions
        return directions[0] if directions else "sendrecv"

    async def hangup(self) -> None:
        """BYE (or CANCEL before the answer)."""
        call = self.call
        if call.state is CallState.ENDED:
            return
        if self._setup is not None and not self._setup.done() and self._outgoing is not None:
            self._outgoing.request.cancel()
            with contextlib.suppress(CallFailed, asyncio.CancelledError):
                await self._setup
            if self._setup.cancelled() or self._setup.exception() is not None:
                return  # cancelled (487) or refused: nothing to hang up
        elif call.state is CallState.RINGING and call.invite_tx is not None:
            self.endpoint.decline(call)
            return
        await self.endpoint.hangup(call)

    def media(self) -> MediaReport:
        """Counters now."""
        ports = [port for port in self.call.media if port is not None]
        return MediaReport(
            packets_sent=sum(port.sent for port in ports),
            packets_received=sum(port.packets for port in ports),
            streams=tuple(port.kind for port in ports if port.packets),
        )
