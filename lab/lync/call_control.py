"""Call handling of the simulated Lync client: placing, answering, re-INVITEs and BYE.

Calls carry a multipart/alternative offer (ICE draft-6 and RFC 5245 parts), run ICE with
aioice, then send SRTP audio (50 pps) and video (30 fps) with real sequence numbers and
timestamps through :mod:`lab.lync.client_media`, and count what arrives. A call whose ICE
fails is hung up with a Reason, as Lync does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from lab.lync import offer as sdp_offer
from lab.lync.agent import USER_AGENT
from lab.lync.call import SDP, CallRefused, LyncCall, sdp_of
from lab.lync.client_media import MediaStream
from media.ms_dialect import Crypto, read_stream
from media.sdp import SessionDescription
from sip.dialog import Dialog, DialogState
from sip.errors import ProtocolError
from sip.message import Request, Response, new_tag
from sip.stack import ClientRequest, Hop, SipTimeoutError
from sip.transaction_server import ServerState, ServerTransaction
from sip.transport import Transport
from sip.uri import URI
from sip.useragent import ALLOW, response_for

if TYPE_CHECKING:
    from lab.lync.client import LyncClient

__all__ = ["ICE_FAILED", "CallControl"]

logger = logging.getLogger(__name__)

ICE_FAILED = 'Reason: SIP;cause=488;text="ICE processing failed: no media connectivity"'


class CallControl:
    """The client's calls: INVITE out and in, re-INVITE (hold, resume, video), BYE."""

    def __init__(self, client: LyncClient) -> None:
        self.client = client
        self.calls: dict[str, LyncCall] = {}
        """Live calls by Call-ID."""
        self.incoming_calls: asyncio.Queue[LyncCall] = asyncio.Queue()
        """Calls we were offered, in arrival order."""

    # -- streams -------------------------------------------------------------------------------

    def new_stream(self, kind: str, call: LyncCall, *, controlling: bool) -> MediaStream:
        config = self.client.config
        rate = config.audio_pps if kind == "audio" else config.video_fps
        return MediaStream(kind, config.host, self.client.relay.ice_servers,
                           controlling=controlling, on_packet=call.changed, rate=rate,
                           allowed=self.client.allowed_networks,
                           stun_dialect=config.stun_dialect)

    def call_of(self, dialog: Dialog) -> LyncCall | None:
        call = self.calls.get(dialog.id.call_id)
        return call if call is not None and call.dialog is dialog else None

    # -- placing calls -----------------------------------------------------------------------

    async def call(self, target: str, *, video: bool | None = None) -> LyncCall:
        """INVITE ``target`` ("3001@video.example.com"); returns once the INVITE is sent."""
        uri = URI.parse(target if target.startswith("sip") else f"sip:{target}")
        agent, config = self.client.agent, self.client.config
        call = LyncCall(self.client, "", outgoing=True, peer=str(uri))
        kinds = ["audio"] + (["video"] if (config.video if video is None else video)
                             else [])
        call.streams = [self.new_stream(kind, call, controlling=True) for kind in kinds]
        try:
            await asyncio.gather(*(s.ice.gather() for s in call.streams))
        except BaseException:
            await asyncio.gather(*(s.close() for s in call.streams))
            raise
        call.version += 1
        content_type, body = sdp_offer.multipart_offer(
            call.descriptions(), host=config.host, session_id=call.session_id,
            version=call.version)
        request = agent.new_request(
            "INVITE", uri, agent.registrar, body=body, content_type=content_type,
            headers=(("User-Agent", USER_AGENT), ("Supported", "ms-dialog-route-set-update"),
                     ("Supported", "timer"), ("Supported", "histinfo"),
                     ("Supported", "ms-safe-transfer"), ("Supported", "ms-sender"),
                     ("Supported", "ms-early-media"), ("ms-keep-alive", "UAC;hop-hop=yes"),
                     ("Ms-Conversation-ID", secrets.token_urlsafe(18))))
        call.call_id = request.call_id
        self.calls[call.call_id] = call

        def provisional(response: Response) -> None:
            if response.status in (180, 183):
                call.ringing = True
                call.changed()

        call.invite = agent.stack.start_request(request, agent.registrar,
                                                on_provisional=provisional)
        self.client.spawn(self._outgoing(call, call.invite))
        return call

    async def _outgoing(self, call: LyncCall, pending: ClientRequest) -> None:
        agent = self.client.agent
        try:
            response = await pending.final
        except SipTimeoutError as error:
            await call.finish(f"no answer: {error}")
            return
        self.client.signin.check_signed(response)
        if not 200 <= response.status < 300:
            if not call.answered.done():
                call.answered.set_exception(CallRefused(
                    f"INVITE to {call.peer} answered {response.status} {response.reason}",
                    response.status))
                call.answered.exception()
            await call.finish(f"{response.status} {response.reason}")
            return
        try:
            dialog = Dialog.create_uac(pending.request, response)
            answer = sdp_of(response)
        except ProtocolError as error:
            await call.finish(f"bad 2xx: {error.message}")
            return
        call.dialog = dialog
        agent.dialogs.add(dialog, agent.registrar)
        agent.send_ack(dialog, pending.transaction)
        if answer is None:
            await self.bye(call, reason='Reason: SIP;cause=488;text="no SDP in the answer"')
            return
        try:
            self.apply_answer(call, answer)
        except ProtocolError as error:
            await self.bye(call, reason=f'Reason: SIP;cause=488;text="{error.message}"')
            return
        if not call.answered.done():
            call.answered.set_result(None)
        call.changed()
        self.client.spawn(self._watch_ice(call))

    def apply_answer(self, call: LyncCall, answer: SessionDescription) -> None:
        """Keys, codecs, directions and ICE from the peer's answer (first or re-INVITE)."""
        call.remote_sdp = answer
        for index, stream in enumerate(call.streams):
            if index >= len(answer.media) or answer.media[index].port == 0:
                continue
            remote = read_stream(answer, index)
            media = answer.media[index]
            mine = {c.tag: c for c in stream.cryptos}
            theirs = next((c for c in remote.cryptos if c.tag in mine), None)
            if theirs is None:
                raise ProtocolError(f"{stream.kind}: no acceptable a=crypto in the answer", 488)
            stream.set_keys(mine[theirs.tag], theirs)
            codecs = sdp_offer.common_codecs(media, stream.kind)
            stream.payload_type = next((pt for pt, name, _ in codecs
                                        if not name.startswith("telephone-event")), None)
            stream.remote_direction = media.direction
            if remote.ice_ufrag is None or remote.ice_pwd is None:
                raise ProtocolError(f"{stream.kind}: the answer has no ICE credentials", 488)
            stream.start_ice(remote.ice_ufrag, remote.ice_pwd, remote.candidates,
                             self.client.config.ice_timeout)
        call.changed()

    async def _watch_ice(self, call: LyncCall) -> None:
        """Hang up with a Reason when ICE fails on a stream (as Lync: no media, no call)."""
        results = await asyncio.gather(*(s.ice_done for s in call.streams),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        call.changed()
        if failed and not call.ended.is_set():
            logger.warning("[%s] %s", call.call_id, failed[0])
            await self.bye(call, reason=ICE_FAILED)

    async def bye(self, call: LyncCall, *, reason: str | None = None) -> None:
        """BYE the call (with a Reason header line when given) and close its media."""
        dialog = call.dialog
        if dialog is None or dialog.state is DialogState.TERMINATED:
            await call.finish(call.result or "ended")
            return
        headers: tuple[tuple[str, str], ...] = ()
        if reason is not None:
            name, _, value = reason.partition(":")
            headers = ((name.strip(), value.strip()),)
        agent = self.client.agent
        request, hop = agent.dialog_request(dialog, "BYE", headers=headers)
        dialog.terminate()
        try:
            self.client.signin.check_signed(await agent.stack.send_request(request, hop))
            result = "completed" if reason is None else f"hung up: {reason}"
        except SipTimeoutError as error:
            result = f"BYE unanswered: {error}"
        await call.finish(result)

    # -- answering ---------------------------------------------------------------------------

    async def incoming(self, transaction: ServerTransaction, request: Request) -> None:
        agent, config = self.client.agent, self.client.config
        call = LyncCall(self.client, request.call_id, outgoing=False,
                        peer=str(request.from_.uri))
        parsed, offer = self._offer_of(transaction, request)
        if not parsed:
            return
        if offer is None:
            # Microsoft clients do not take an INVITE without SDP (SPEC.md §3).
            agent.stack.respond(transaction, 488, "Not Acceptable Here: no SDP offer")
            return
        try:
            descriptions = await self._answer_streams(call, offer, controlling=False)
        except ProtocolError as error:
            agent.stack.respond(transaction, error.status_hint if error.status_hint >= 400
                                else 488, error.message)
            await asyncio.gather(*(s.close() for s in call.streams))
            return
        if transaction.state is not ServerState.PROCEEDING:
            await asyncio.gather(*(s.close() for s in call.streams))
            return
        tag = new_tag()
        contact = agent.contact(Transport.TLS)
        ringing = response_for(request, 180, to_tag=tag, contact=contact)
        dialog = Dialog.create_uas(request, ringing)
        call.dialog = dialog
        call.invite_tx = transaction
        call.ringing = True
        agent.dialogs.add(dialog, transaction.source if isinstance(transaction.source, Hop)
                          else agent.registrar)
        self.calls[call.call_id] = call
        agent.stack.send_response(transaction, ringing)
        self.incoming_calls.put_nowait(call)
        if not config.auto_answer:
            return
        if config.answer_delay > 0:
            await asyncio.sleep(config.answer_delay)  # the configured ring time
        if call.ended.is_set() or transaction.state is not ServerState.PROCEEDING:
            return
        await self.answer(call, descriptions)

    def _offer_of(self, transaction: ServerTransaction, request: Request
                  ) -> tuple[bool, SessionDescription | None]:
        """The offer of an INVITE (None without a body); (False, None) once a body that
        does not parse was answered 400."""
        try:
            return True, sdp_of(request)
        except ProtocolError as error:
            self.client.agent.stack.respond(transaction, 400,
                                            f"Bad Request: {error.message}")
            return False, None

    async def answer(self, call: LyncCall,
                     descriptions: list[sdp_offer.StreamDescription] | None = None) -> None:
        """Send the 2xx (auto-answer does this by itself) and start ICE."""
        transaction = call.invite_tx
        dialog = call.dialog
        if transaction is None or dialog is None or call.remote_sdp is None:
            raise CallRefused("no incoming call to answer")
        if descriptions is None:
            descriptions = self._describe_answer(call, call.remote_sdp)
        agent = self.client.agent
        call.version += 1
        body = sdp_offer.sdp_text(descriptions, host=self.client.config.host,
                                  session_id=call.session_id, version=call.version)
        ok = response_for(transaction.request, 200, to_tag=dialog.id.local_tag,
                          contact=agent.contact(Transport.TLS), body=body, content_type=SDP)
        ok.headers.add("Allow", ALLOW)
        ok.headers.add("User-Agent", USER_AGENT)
        agent.stack.send_response(transaction, ok)
        dialog.confirm()
        call.invite_tx = None
        if not call.answered.done():
            call.answered.set_result(None)
        self._start_answered_ice(call, call.remote_sdp)
        self.client.spawn(self._watch_ice(call))

    async def _answer_streams(self, call: LyncCall, offer: SessionDescription, *,
                              controlling: bool) -> list[sdp_offer.StreamDescription]:
        """Make (or keep) a stream per offered m= line, take the offer's keys and codecs."""
        for index, media in enumerate(offer.media):
            if index < len(call.streams):
                continue
            stream = self.new_stream(media.kind, call, controlling=controlling)
            call.streams.append(stream)
            if media.port != 0 and media.kind in ("audio", "video"):
                await stream.ice.gather()
        call.remote_sdp = offer
        return self._describe_answer(call, offer)

    def _describe_answer(self, call: LyncCall, offer: SessionDescription
                         ) -> list[sdp_offer.StreamDescription]:
        out = []
        for index, (stream, media) in enumerate(zip(call.streams, offer.media, strict=False)):
            remote = read_stream(offer, index)
            codecs = sdp_offer.common_codecs(media, stream.kind)
            usable = [c for c in remote.cryptos if c.suite == stream.cryptos[0].suite]
            offered = next((c for c in usable
                            if (c.mki is not None) == self.client.config.answer_mki),
                           usable[0] if usable else None)
            if media.port == 0 or not codecs or offered is None:
                out.append(sdp_offer.StreamDescription(
                    kind=media.kind, ufrag=stream.ice.local_username,
                    pwd=stream.ice.local_password, candidates=(), cryptos=(),
                    ssrc_range=stream.ssrc_range, codecs=codecs or _placeholder(media.kind),
                    port=0))
                continue
            # Answer with the offered tag, our own key, an MKI exactly when the offer had one.
            ours = next((c for c in stream.cryptos if (c.mki is None) == (offered.mki is None)),
                        stream.cryptos[0])
            ours = Crypto(offered.tag, ours.suite, ours.key_salt, ours.lifetime, ours.mki)
            stream.set_keys(ours, offered)
            stream.payload_type = next((pt for pt, name, _ in codecs
                                        if not name.startswith("telephone-event")), None)
            stream.remote_direction = media.direction
            stream.direction = _ANSWER_DIRECTION[media.direction]
            if call.on_hold:
                # Still holding: a sendonly offer makes the stream inactive, not recvonly.
                stream.direction = _HELD_DIRECTION[stream.direction]
            stream.cryptos = (ours,)
            out.append(sdp_offer.StreamDescription(
                kind=stream.kind, ufrag=stream.ice.local_username,
                pwd=stream.ice.local_password, candidates=stream.ice.sdp_candidates,
                cryptos=(ours,), ssrc_range=stream.ssrc_range, direction=stream.direction,
                codecs=codecs))
        return out

    def _start_answered_ice(self, call: LyncCall, offer: SessionDescription) -> None:
        for index, stream in enumerate(call.streams):
            if index >= len(offer.media) or offer.media[index].port == 0:
                continue
            remote = read_stream(offer, index)
            if remote.ice_ufrag is None or remote.ice_pwd is None:
                stream.failed = "the offer has no RFC 5245 ICE credentials"
                continue
            stream.start_ice(remote.ice_ufrag, remote.ice_pwd, remote.candidates,
                             self.client.config.ice_timeout)

    async def reinvited(self, call: LyncCall, transaction: ServerTransaction,
                        request: Request) -> None:
        """A re-INVITE: hold / resume (directions) or a new stream (add video)."""
        agent = self.client.agent
        parsed, offer = self._offer_of(transaction, request)
        if not parsed:
            return
        if offer is None:
            descriptions = call.descriptions()
        else:
            try:
                descriptions = await self._answer_streams(call, offer, controlling=False)
            except ProtocolError as error:
                agent.stack.respond(transaction, 488, error.message)
                return
        body = call.body(descriptions)
        ok = response_for(request, 200, contact=agent.contact(Transport.TLS), body=body,
                          content_type=SDP)
        agent.stack.send_response(transaction, ok)
        if offer is not None:
            self._start_answered_ice(call, offer)  # new streams only: running ones keep going
        call.changed()
        logger.info("[%s] re-INVITE: now %s", call.call_id,
                    ", ".join(f"{s.kind} {s.direction}" for s in call.streams))


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
                     "inactive": "inactive"}


_HELD_DIRECTION = {"sendrecv": "sendonly", "recvonly": "inactive", "sendonly": "sendonly",
                   "inactive": "inactive"}


def _placeholder(kind: str) -> tuple[tuple[int, str, str | None], ...]:
    return sdp_offer.CODECS.get(kind, ((0, "PCMU/8000", None),))[:1]


