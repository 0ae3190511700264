"""Best Effort media encryption with a real endpoint that has no SRTP (issue 14).

baresip (Debian baresip-core) configured without its srtp module answers an RTP/SAVP offer
with "488 Not Acceptable Here" (it logs "no common audio codecs - rejected"). Behind a zone
with ``media_encryption = "best_effort"``, a call from Microsoft (an aioice peer playing the
Lync client's media: ICE and SRTP with an MKI) must still connect: the gateway offers plain
RTP after the 488, baresip auto-answers it, and audio flows both ways.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.lync.peer import LYNC_SSRC, LyncPeer, rtp
from media.sdp import parse_sdp
from tests.gateway.test_runtime import WAIT, Lab, make_lab, wait_for
from tests.peers.procs import (
    LOOPBACK,
    PeerProcess,
    free_port_both,
    random_free_udp_range,
    require,
)

__all__ = ["make_lab"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.peer

BARESIP_HOST = "127.0.3.1"  # the lab zone's peer address
READY = 20.0


def baresip_config(sip_port: int, rtp_ports: tuple[int, int]) -> str:
    """No srtp module: SAVP offers are refused (REAL-PEERS.md: ausine at 48 kHz stereo)."""
    return f"""poll_method epoll
sip_listen {BARESIP_HOST}:{sip_port}
sip_trans_def tcp
audio_player alsa,null
audio_source ausine,440
ausrc_srate 48000
ausrc_channels 2
module_path /usr/lib/baresip/modules
module stdio.so
module g711.so
module g722.so
module ausine.so
module alsa.so
module_app account.so
net_interface {LOOPBACK}
rtp_ports {rtp_ports[0]}-{rtp_ports[1]}
"""


@pytest.fixture
def baresip(tmp_path: Path) -> Iterator[tuple[PeerProcess, int]]:
    program = require("baresip")
    port = free_port_both(BARESIP_HOST)
    (tmp_path / "config").write_text(baresip_config(port, random_free_udp_range(LOOPBACK, 20)))
    (tmp_path / "accounts").write_text(
        f"<sip:3001@{BARESIP_HOST};transport=tcp>;regint=0;answermode=auto\n")
    (tmp_path / "uuid").write_text("0b9e7d1c-3a2f-4e5d-8c6b-1a2b3c4d5e6f")  # no newline
    with PeerProcess([program, "-f", str(tmp_path)], cwd=tmp_path, name="baresip") as peer:
        peer.wait_for_line("baresip is ready", READY, stream="stdout")
        yield peer, port


async def test_best_effort_call_to_baresip_without_srtp_connects_with_plain_rtp(
    make_lab: Any, baresip: tuple[PeerProcess, int], caplog: pytest.LogCaptureFixture
) -> None:
    peer, port = baresip
    caplog.set_level(logging.INFO)
    lab: Lab = await make_lab(zone_port=port, zone_extra='media_encryption = "best_effort"')
    lync = LyncPeer(host=LOOPBACK)
    try:
        await lync.add_stream("audio")
        call, response = await lab.fe.call("3001@video.example.com", body=bytes(lync.offer()),
                                           content_type="application/sdp")
        assert response.status == 200 and call is not None, (response, peer.stdout())
        assert "offering plain RTP (best effort)" in caplog.text
        assert "no common audio codecs - rejected" in peer.stdout()  # baresip's own 488
        (gw_call,) = lab.gateway.calls.values()
        assert gw_call.outbound is not None and gw_call.outbound.local_sdp is not None
        plain = gw_call.outbound.local_sdp.media[0]
        assert plain.proto == "RTP/AVP" and not plain.has("crypto")
        assert gw_call.outbound.invite.cseq.seq == 2  # the same INVITE, retried

        await asyncio.wait_for(lync.start(parse_sdp(response.body)), WAIT)
        # baresip -> Lync: its 440 Hz tone, plain RTP in, SRTP out over the ICE pair.
        data, component = await asyncio.wait_for(lync.streams[0].received.get(), WAIT)
        assert component == 1 and len(data) > 12
        # Lync -> baresip: SRTP in, plain RTP out to baresip's address.
        ssrc = LYNC_SSRC["audio"][0]
        for seq in range(1, 6):
            await lync.send(0, rtp(ssrc, seq, bytes(160)))

        def video_packets_out() -> int:
            (view,) = lab.status()["calls"]
            legs = {leg["side"]: leg for leg in view["legs"]}
            return int(legs["video"]["media"][0]["packets_out"])

        await wait_for(lambda: video_packets_out() >= 1, "RTP relayed to baresip")
        assert (await lab.fe.hangup(call)).status == 200
        await wait_for(lambda: not lab.gateway.calls and lab.gateway.pool.ports_in_use == 0,
                       "media released")
    finally:
        await lync.close()
