"""How the pidgin driver reads sipe's debug log while pidgin is still writing it.

pidgin writes each debug line on its own, and a loaded machine can pause it between two
lines of the same handling: a line seen in the log says nothing of the lines sipe logs after
it. A stand-in writer (this interpreter, printing lines in sipe's order, held at a named
pipe between two of them) makes that pause happen every time; the lines are sipe 1.25's,
handling the 200 to its provisioning-v2 SUBSCRIBE with the first notification piggybacked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.peers.pidgin import Pidgin, SipeAccount
from tests.peers.procs import PeerError, PeerProcess

TIMEOUT = 10.0
SUBSCRIBE_ANSWERED = r"process_subscribe_response: .*'vnd-microsoft-provisioning-v2'"
BEFORE = (
    "(10:00:00) sipe: process_input_message: msg->response(200),msg->method(SUBSCRIBE)",
    "(10:00:00) sipe: process_input_message: we have a transaction callback",
    "(10:00:00) sipe: process_subscribe_response: subscription "
    "'vnd-microsoft-provisioning-v2' to 'sip:alice@example.com' was terminated",
)
AFTER = (
    "(10:00:00) sipe: process_incoming_notify: subscription_state: terminated;expires=0",
    "(10:00:00) sipe: sipe_process_provisioning_v2: sipe_private->mras_uri=sip:mras@x",
    "(10:00:00) sipe: process_input_message: removing CSeq 3",
    "(10:00:00) sipe: SIP transactions count:2 after removal",
    "(10:00:00) sipe: sipe_process_provisioning_v2: sipe_private->mras_uri=sip:later@x",
)
"""The rest of the handling, its end, and a line of a later handling."""
WRITER = """
import sys
before, after, gate = sys.argv[1], sys.argv[2], sys.argv[3]
print(before, flush=True)
with open(gate) as held:
    held.read()
print(after, flush=True)
with open(gate) as held:
    held.read()
"""
"""Prints its first argument, waits for the gate (a FIFO) to be opened and closed by the
test, prints its second, then waits at the gate again (stopped by the test)."""


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    path = tmp_path / "gate"
    os.mkfifo(path)
    return path


@pytest.fixture
def writer(tmp_path: Path, gate: Path) -> Iterator[Pidgin]:
    """A Pidgin whose log is the stand-in writer's stdout."""
    account = SipeAccount(user="alice@example.com", password="x", server="fe", port=5061)
    pidgin = Pidgin(account, tmp_path, server_cert_pem=b"")
    pidgin.pidgin = PeerProcess([sys.executable, "-c", WRITER, "\n".join(BEFORE),
                                 "\n".join(AFTER), str(gate)], name="writer")
    try:
        yield pidgin
    finally:
        pidgin.pidgin.stop()


def release(gate: Path) -> None:
    """Let the writer past the gate: open the FIFO for writing (which returns once the
    writer has opened it to read) and close it (the writer reads its end)."""
    os.close(os.open(gate, os.O_WRONLY))


def test_a_seen_line_says_nothing_of_later_ones(writer: Pidgin) -> None:
    """What the provisioning test did before: the response's first line is in the log,
    what sipe made of the body is not yet."""
    writer.wait_log(SUBSCRIBE_ANSWERED, TIMEOUT)
    assert "mras_uri=" not in writer.log()


def test_waits_for_the_end_of_the_handling(writer: Pidgin, gate: Path) -> None:
    """wait_response_handled returns the handling's lines, from the matching one to the
    end of the handling: the body's line included, a later handling's not."""
    with ThreadPoolExecutor(1) as pool:
        handled = pool.submit(writer.wait_response_handled, SUBSCRIBE_ANSWERED, TIMEOUT)
        writer.wait_log(SUBSCRIBE_ANSWERED, TIMEOUT)
        release(gate)
        text = handled.result(TIMEOUT * 2)
    assert text.splitlines() == [BEFORE[-1], *AFTER[:3]]


def test_a_handling_that_does_not_end_times_out(writer: Pidgin) -> None:
    """Bounded: the writer held at the gate never ends the handling."""
    with pytest.raises(PeerError, match="removing CSeq"):
        writer.wait_response_handled(SUBSCRIBE_ANSWERED, 0.5)


def test_a_mark_counts_the_lines_as_read(tmp_path: Path, gate: Path) -> None:
    """A line holding a lone "\\r" (or a form feed, U+2028: what str.splitlines also cuts
    at) is one line of the log: a wait since a mark taken after it sees every later line,
    the first one included, however late the wait starts."""
    account = SipeAccount(user="alice@example.com", password="x", server="fe", port=5061)
    pidgin = Pidgin(account, tmp_path, server_cert_pem=b"")
    pidgin.pidgin = PeerProcess(
        [sys.executable, "-c", WRITER, "(10:00:00) sipe: a body line\rwith a carriage return",
         "(10:00:01) autoanswer: signed on\n(10:00:02) sipe: a later line", str(gate)],
        name="writer")
    try:
        pidgin.wait_log(r"carriage return", TIMEOUT)
        mark = pidgin.mark()
        release(gate)
        pidgin.wait_log(r"a later line", TIMEOUT, since=mark)
        assert pidgin.wait_log(r"autoanswer: signed on", TIMEOUT, since=mark)
        assert pidgin.lines()[mark:] == ["(10:00:01) autoanswer: signed on",
                                         "(10:00:02) sipe: a later line"]
    finally:
        pidgin.pidgin.stop()
