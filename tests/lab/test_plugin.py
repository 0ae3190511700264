"""The pytest plugin (entry point ``gateway_lab``) run through ``pytester``: the README's
example test file, in a pytest of its own, places real calls through a fresh lab."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

README_EXAMPLE = '''
import asyncio


async def test_alice_calls_a_video_endpoint(lab, lync_client, sip_endpoint):
    alice = await lync_client("alice")
    call = await alice.call("3001@video.example.com")
    await call.wait_connected()
    media = await call.wait_media(both_ways=True)
    assert media.ice_pair.startswith("host/")     # internal client: its own host candidate
    answered = lab.callee_of(call.call_id, "3001")  # the endpoint's side of the same call
    assert (await answered.wait_media(both_ways=True)).packets_received >= 10
    await call.hold()
    await call.resume()
    await call.hangup()


async def test_david_outside_calls_through_the_edge(lab, lync_client, sip_endpoint):
    david = await lync_client("david")            # external: via the Edge, relay-only
    call = await david.call("3001@video.example.com")
    await call.wait_connected()
    answered = await sip_endpoint.next_call()     # 3001 rang and answered
    assert (await answered.wait_media(both_ways=True)).packets_received >= 10
    media = await call.wait_media(both_ways=True)
    assert media.ice_pair.startswith("relay/")    # through the A/V Edge TURN
    await call.hangup()
'''


def test_readme_example_passes_through_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_readme=README_EXAMPLE)
    # A subprocess: the lab's sockets and event loops stay out of this test's process.
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=90)
    result.assert_outcomes(passed=2)


def test_plugin_is_registered_and_inert(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(test_plain='''
import sys

def test_no_lab_loaded(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("gateway_lab")
    # Loaded but inert: no lab role, gateway or media module was imported.
    heavy = [m for m in ("lab.topology", "gateway.runtime", "aioice", "lab.lync.client")
             if m in sys.modules]
    assert heavy == []
''')
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1)


def test_each_test_gets_its_own_lab_and_it_is_stopped_after(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_two='''
import asyncio

SEEN = []


async def test_first(lab):
    fe = lab.microsoft.fe.listener
    SEEN.append((fe.host, fe.port, lab))
    assert lab.status().gateway.capacity.active == 0


async def test_second(lab):
    host, port, first = SEEN[0]
    assert lab is not first
    # The first lab's FE is gone: its port refuses connections.
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        pass
    else:
        writer.close()
        raise AssertionError(f"{host}:{port} still accepts connections")
''')
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=2)
