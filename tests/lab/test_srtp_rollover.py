"""Issue 13, with real sockets: a Lync -> endpoint call whose endpoint starts its RTP
sequence numbers just below the wrap (RFC 3550 lets it pick any 16-bit start) carries media
both ways. The endpoint sends from its answer on; the gateway drops those first packets
(no ICE pair yet toward Microsoft), and its SRTP sender must not count a rollover that the
Lync client never saw, or every later packet fails authentication at the client (the
"dead direction" bench/capacity.py met in 2 of 32 runs at 100 calls)."""

from __future__ import annotations

import contextlib

import pytest

from certs.pki import LabPKI
from lab.endpoint import rtp
from lab.topology import Lab
from media.relay import ENV, Side, native_available
from tests.media.peers import until

LAST = 0xFFFF
"""The first sequence number the endpoint sends: its next one wraps to 0."""

IMPLS = ["python"] + (["native"] if native_available() else [])


@pytest.mark.parametrize("impl", IMPLS)
async def test_media_flows_both_ways_when_the_endpoint_wraps_during_ice(
        lab_pki: LabPKI, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, impl)
    starts: list[int] = []
    real_init = rtp.RtpSource.__init__

    def wrapping(self: rtp.RtpSource, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.sequence = LAST
        starts.append(LAST)

    monkeypatch.setattr(rtp.RtpSource, "__init__", wrapping)
    async with Lab(lab_pki, any_port=True, management=False, broker=False) as lab:
        call = await lab.client("alice").call("3001@video.example.com", video=True)
        await call.wait_connected()
        far = lab.callee_of(call.call_id, "3001")
        assert far is not None and starts  # the endpoint's streams started at the wrap

        def every_direction() -> bool:
            return (all(s.counters.received >= 10 for s in call.streams)
                    and all(p is not None and p.packets >= 10 for p in far.call.media))

        with contextlib.suppress(AssertionError):  # the asserts below say which
            await until(every_direction, "10 packets each way on every stream", 10.0)
        refused = {s.kind: s.counters.refused for s in call.streams}
        gateway = lab.gateway
        assert gateway is not None
        streams = [s for s in gateway.calls[call.call_id].media.streams if s is not None]
        early = sum(s.relays[0].counters(Side.B)["dropped_no_route"] for s in streams)
        assert early >= 1  # the case at hand: endpoint RTP before the ICE pair
        for stream in call.streams:  # every direction of every stream, not the sum
            assert stream.counters.received >= 10 and not stream.counters.bad, refused
        for port in far.call.media:
            assert port is not None and port.packets >= 10 and not port.rejected
        await call.hangup()
