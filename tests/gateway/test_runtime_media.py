"""Media through the running gateway: an aioice peer (the Lync client's media, relay-only
through the project's TURN server) completes ICE with the gateway and exchanges SRTP with it,
while a plain RTP peer answers on the video side; /status (over HTTP) counts both ways."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from certs.pki import LabPKI
from media.sdp import parse_sdp
from sip.dialog import Dialog
from sip.message import Request
from sip.stack import SipStack
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportSettings
from sip.useragent import UserAgent, response_for
from tests.gateway.test_runtime import FAST, WAIT, Lab, make_lab, wait_for
from tests.media.peers import LYNC_SSRC, LyncPeer, VideoPeer, rtp
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

__all__ = ["make_lab"]


class VideoUas(UserAgent):
    """A video endpoint whose SDP points at a :class:`VideoPeer`'s RTP sockets."""

    def __init__(self, stack: SipStack, peer: VideoPeer) -> None:
        super().__init__(stack, user="3001", domain="video.example.com")
        self.peer = peer

    def handle_new_request(self, transaction: ServerTransaction, request: Request) -> None:
        if request.method != "INVITE":
            super().handle_new_request(transaction, request)
            return
        answer = bytes(self.peer.answer(parse_sdp(request.body)))
        ok = response_for(request, 200, to_tag="v1", contact=self.contact(Transport.TCP),
                          body=answer, content_type="application/sdp")
        self.dialogs.add(Dialog.create_uas(request, ok), transaction.source)
        self.stack.send_response(transaction, ok)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_ice_through_turn_and_rtp_both_ways_with_status_counters(
        make_lab: Any, pki: LabPKI) -> None:
    async with running_server() as turn:
        turn_address = ("127.0.0.1", server_port(turn))
        video = VideoPeer()
        await video.open()
        stack = SipStack(timers=FAST, transport_settings=TransportSettings(
            outbound_ports=None, source_host="127.0.3.1"))
        await stack.listen(Transport.TCP, "127.0.3.1", 0)
        VideoUas(stack, video)  # answers INVITEs on the stack from now on
        listener = stack.listener(Transport.TCP)
        assert listener is not None
        lync = LyncPeer(turn=turn_address, username=USER, password=PASSWORD)
        try:
            # The neighbor zone leads to our UAS rather than the lab endpoint.
            lab: Lab = await make_lab(turn=turn_address, zone_port=listener.port)
            await lync.add_stream("audio")
            offer = lync.offer()
            call, response = await lab.fe.call("3001@video.example.com", body=bytes(offer),
                                               content_type="application/sdp")
            assert response.status == 200 and call is not None
            answer = parse_sdp(response.body)
            kinds = {v.split()[7] for v in answer.media[0].get_all("candidate")}
            assert {"host", "relay"} <= kinds  # relay candidates from the configured TURN
            await asyncio.wait_for(lync.start(answer), WAIT)
            (gw_call,) = lab.gateway.calls.values()
            assert gw_call.media is not None
            stream = gw_call.media.streams[0]
            assert stream is not None
            await wait_for(lambda: stream.ice.connected, "gateway ICE connected")

            # Lync -> video: SRTP with MKI in, plain RTP out to the endpoint's address.
            ssrc = LYNC_SSRC["audio"][0]
            await lync.send(0, rtp(ssrc, 1, b"from-lync"))
            data, _, component = await asyncio.wait_for(video.received.get(), WAIT)
            assert component == 1 and data.endswith(b"from-lync")
            # video -> Lync: plain RTP in, SRTP out over the ICE pair.
            video.send(0, rtp(4242, 1, b"from-video"))
            plain, _ = await asyncio.wait_for(lync.streams[0].received.get(), WAIT)
            assert plain.endswith(b"from-video")

            management = lab.gateway.management
            assert management is not None
            status, body = await http_get(management.port, "/status")
            assert status == 200
            doc = json.loads(body)
            (view,) = doc["calls"]
            legs = {leg["side"]: leg for leg in view["legs"]}
            ms_media, video_media = legs["microsoft"]["media"][0], legs["video"]["media"][0]
            assert ms_media["packets_in"] >= 1 and ms_media["packets_out"] >= 1
            assert video_media["packets_in"] >= 1 and video_media["packets_out"] >= 1
            assert doc["turn_servers"][0]["allocations"] >= 1
            status, metrics = await http_get(management.port, "/metrics")
            assert status == 200 and b"gateway_active_calls 1.0" in metrics
            assert (await lab.fe.hangup(call)).status == 200
            await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                           "media released")
        finally:
            await lync.close()
            video.close()
            await stack.close()
