"""Which pair ICE ends on when a host check is slower than a relay check, and how long the
gateway's ICE leg takes to close when its TURN server does not answer.

The lab's internal call (alice, host candidates only, controlling with aggressive
nomination as aioice does) sometimes ended on ``host/relay`` under load, and the gateway on
``relay -> host``: aioice took the first nominated pair to succeed and cancelled the host
check still in progress. Here the gateway's host sockets hold what they receive until alice
has completed on the relay pair, so the order is driven, not left to load; then what was
held is delivered, as a slow host path would deliver it. Both sides must end on host/host.
All on loopback with the project's TURN server as the gateway's relay.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aioice.ice import CandidatePair

from lab.lync.client_media import ClientIce, IceServers
from media.ice_leg import TURN_RELEASE_TIMEOUT, IceLeg, IceSettings, TurnServerSettings
from tests.media.peers import until
from tests.media.test_ice_leg import free_pair
from tests.turn.helpers import PASSWORD, USER, running_server, server_port

WAIT = 10.0
GATEWAY = "127.0.2.1"
ALICE = "127.0.1.10"
DMZ_TURN = "127.0.4.1"



def gateway_leg(turn: tuple[str, int], *, controlling: bool) -> IceLeg:
    return IceLeg(GATEWAY, free_pair(), IceSettings(
        turn_servers=(TurnServerSettings(turn, USER, PASSWORD),), connect_timeout=WAIT),
        ufrag="gwuf", pwd="g" * 24, turn_ports=[free_pair()], controlling=controlling)


@asynccontextmanager
async def gateway_and_alice() -> AsyncIterator[tuple[IceLeg, ClientIce]]:
    """The gateway's leg (controlled, host and relay) and alice (controlling, host only),
    both gathered."""
    async with running_server(listen=DMZ_TURN) as turn:
        leg = gateway_leg((DMZ_TURN, server_port(turn)), controlling=False)
        alice = ClientIce(ALICE, IceServers(), controlling=True, on_media=lambda d, c: None)
        try:
            await leg.gather()
            await alice.gather()
            yield leg, alice
        finally:
            await alice.close()
            await leg.close()


def hold_host_path(leg: IceLeg) -> Callable[[], int]:
    """Make the leg's host sockets keep what they receive (a slow host path); returns the
    function that delivers it all and restores them, with the count delivered."""
    held: list[Callable[[], None]] = []
    hosts = [p for p in leg.agent._protocols if p.local_candidate.type == "host"]
    for protocol in hosts:
        receive = protocol.datagram_received

        def holding(data: bytes | str, addr: tuple[Any, ...],
                    receive: Callable[[bytes | str, tuple[Any, ...]], None] = receive) -> None:
            held.append(lambda: receive(data, addr))

        protocol.datagram_received = holding  # type: ignore[method-assign]

    def release() -> int:
        for protocol in hosts:
            del protocol.datagram_received
        for deliver in held:
            deliver()
        return len(held)

    return release


async def test_a_slow_host_check_still_wins_over_the_relay() -> None:
    async with gateway_and_alice() as (leg, alice):
        assert {c.type.value for c in leg.local_candidates} == {"host", "relay"}
        release = hold_host_path(leg)

        gateway_checks = asyncio.ensure_future(
            leg.connect(alice.local_username, alice.local_password, alice.sdp_candidates))
        await alice.run(leg.ufrag, leg.pwd, leg.local_candidates, WAIT)
        # Alice completed on the relay while her host checks wait for answers.
        assert alice.pair_type == "host/relay"
        await gateway_checks
        assert leg.selected_type == "relay"
        assert release() > 0, "no host check reached the gateway"

        await until(lambda: alice.pair_type == "host/host", "alice on host/host", WAIT)
        await until(lambda: leg.selected_type == "host", "the gateway on its host", WAIT)
        alice_rtp = next(c for c in alice.local_candidates
                         if c.component == 1 and c.type == "host")
        assert leg.remote_rtp == (alice_rtp.host, alice_rtp.port)
        # Media follows the upgraded pair on both sides.
        got: asyncio.Queue[bytes] = asyncio.Queue()
        alice.on_media = lambda data, component: got.put_nowait(data)
        assert leg.send(b"\x80" + b"\x00" * 11, 1)
        assert await asyncio.wait_for(got.get(), WAIT) == b"\x80" + b"\x00" * 11
        assert leg.destinations >= {(alice_rtp.host, alice_rtp.port)}


async def test_a_late_nomination_of_a_lower_pair_does_not_move_the_gateway_down() -> None:
    # Controlled, aioice took whatever pair was nominated last; the relay's USE-CANDIDATE
    # (through the TURN server) may well come after the host's.
    async with gateway_and_alice() as (leg, alice):
        await asyncio.gather(
            leg.connect(alice.local_username, alice.local_password, alice.sdp_candidates),
            alice.run(leg.ufrag, leg.pwd, leg.local_candidates, WAIT))
        assert alice.pair_type == "host/host" and leg.selected_type == "host"
        relay_protocol = next(p for p in leg.agent._protocols
                              if p.local_candidate.type == "relay"
                              and p.local_candidate.component == 1)
        relay = CandidatePair(relay_protocol, leg.agent._nominated[1].remote_candidate)
        relay.nominated = True
        relay.state = relay.State.SUCCEEDED
        leg.agent.check_complete(relay)  # as a late USE-CANDIDATE on it would
        assert leg.agent._nominated[1].local_candidate.type == "host"
        assert leg.selected_type == "host"


async def test_a_better_pair_not_checked_yet_is_checked_after_completion() -> None:
    # An early check can make a worse pair go first and complete the list while a better
    # one is still waiting; connect() starts no check after that, so the agent does.
    async with gateway_and_alice() as (leg, alice):
        await asyncio.gather(
            leg.connect(alice.local_username, alice.local_password, alice.sdp_candidates),
            alice.run(leg.ufrag, leg.pwd, leg.local_candidates, WAIT))
        host = alice._nominated[1]
        relay = CandidatePair(host.protocol, next(
            c for c in alice._remote_candidates if c.component == 1 and c.type == "relay"))
        relay.state, relay.nominated = relay.State.SUCCEEDED, True
        alice._check_list.append(relay)
        # Alice as if her relay check had completed the list before her host check began.
        alice._nominated[1] = relay
        host.state, host.nominated = host.State.WAITING, False
        alice._keep_better_checks()
        # Before the gateway's first consent check (4 s at the earliest) would trigger it.
        await until(lambda: alice._nominated[1] is host and host.nominated,
                    "alice back on the host pair", timeout=3.0)
        assert alice.pair_type == "host/host"


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((GATEWAY, port))
        except OSError:
            return False
    return True


async def test_close_is_prompt_when_the_turn_server_is_gone() -> None:
    # aioice closed the relays one by one, each waiting for its deallocation: 31.5 s of
    # retransmissions each with no server. The leg releases them together, bounded.
    async with running_server(listen=DMZ_TURN) as turn:
        leg = gateway_leg((DMZ_TURN, server_port(turn)), controlling=True)
        await leg.gather()
        assert sum(c.type.value == "relay" for c in leg.local_candidates) == 2
    before = asyncio.all_tasks()
    started = time.monotonic()
    await leg.close()
    took = time.monotonic() - started
    assert took < TURN_RELEASE_TIMEOUT + 1.0, f"close took {took:.1f} s"
    ports = [*leg.ports, *(leg.turn_ports[0] + i for i in (0, 1))]
    assert all(bindable(port) for port in ports), "a socket stayed bound"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() <= before, asyncio.all_tasks() - before
