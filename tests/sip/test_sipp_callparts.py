"""The sip/ building blocks of issue 14 against SIPp playing Unified CM (the scenario files
the gateway's tests use), our UA on a real SipStack over loopback TCP: as UAC it PRACKs a
reliable 183 (RFC 3262), answers a mid-call UPDATE with SDP (RFC 3311), and negotiates and
keeps a session timer that SIPp refreshes by re-INVITE and UPDATE (RFC 4028); as UAS it
sends a reliable 180 to a caller requiring 100rel and matches its PRACK."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.session_timer import (
    Refresher,
    Session,
    SessionTimer,
    TimerPolicy,
    UasAnswer,
    request_headers,
    uac_negotiate,
    uas_negotiate,
)
from sip.dialog import Dialog
from sip.extensions import TAG_100REL, requires
from sip.message import Request, Response
from sip.reliable import (
    PrackMatch,
    ProvisionalAcceptor,
    ProvisionalKind,
    ReliableProvisionalSender,
)
from sip.stack import ClientRequest, Hop, SipStack
from sip.transaction_server import ServerTransaction
from sip.transport import Transport
from sip.update import OfferState, has_sdp, refuse_offer
from sip.uri import URI
from sip.useragent import UserAgent, response_for
from tests.peers.procs import LOOPBACK
from tests.peers.sipp import (
    SippConfig,
    SippProcess,
    SippResult,
    SippTransport,
    run_sipp,
    start_sipp,
)

pytestmark = pytest.mark.peer

SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "sipp"
SDP_TYPE = "application/sdp"
TIMEOUT = 20.0


def sdp(version: int, direction: str = "sendrecv") -> bytes:
    return (
        f"v=0\r\no=- 5 {version} IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
        f"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
        f"m=video 40002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\na={direction}\r\n"
    ).encode()


@contextmanager
def cucm(tmp_path: Path, scenario: str, **keys: str) -> Iterator[SippProcess]:
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed (run scripts/install-peers.sh)")
    extra: list[str] = []
    for name, value in keys.items():
        extra += ["-key", name, value]
    config = SippConfig(str(SCENARIOS / scenario), SippTransport.TCP, calls=1,
                        trace_messages=True, global_timeout=TIMEOUT, extra=tuple(extra))
    with start_sipp(config, tmp_path) as served:
        yield served


class Caller(UserAgent):
    """A UA that hands in-dialog requests and ACKs to the test through queues."""

    def __init__(self, stack: SipStack) -> None:
        super().__init__(stack, user="gw", domain=LOOPBACK)
        self.incoming: asyncio.Queue[tuple[Dialog, ServerTransaction, Request]] = (
            asyncio.Queue())
        self.acks: asyncio.Queue[Request] = asyncio.Queue()

    def handle_ack(self, dialog: Dialog, ack: Request) -> None:
        self.acks.put_nowait(ack)

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        self.incoming.put_nowait((dialog, transaction, request))
        return None

    def answer(self, transaction: ServerTransaction, request: Request, body: bytes = b"",
               headers: tuple[tuple[str, str], ...] = ()) -> None:
        response = response_for(request, 200, contact=self.contact(Transport.TCP), body=body,
                                content_type=SDP_TYPE if body else None)
        for name, value in headers:
            response.headers.add(name, value)
        self.stack.send_response(transaction, response)


def place_call(ua: Caller, port: int, *headers: tuple[str, str]) -> tuple[Request, Hop]:
    hop = Hop(Transport.TCP, LOOPBACK, port)
    invite = ua.new_request(
        "INVITE", URI.parse(f"sip:3001@{LOOPBACK}:{port};transport=tcp"), hop, body=sdp(1),
        content_type=SDP_TYPE, headers=headers)
    return invite, hop


async def finish(ua: Caller, dialog: Dialog, served: SippProcess) -> SippResult:
    """Hold (SIPp answers recvonly), then BYE; SIPp's own result."""
    hold, hop = ua.dialog_request(dialog, "INVITE", body=sdp(3, "sendonly"),
                                  content_type=SDP_TYPE)
    answer = await asyncio.wait_for(ua.stack.send_request(hold, hop), TIMEOUT)
    assert answer.status == 200 and b"a=recvonly" in answer.body
    dialog.receive_response(hold, answer)
    ua.send_ack(dialog, None)
    bye = await asyncio.wait_for(ua.send_in_dialog(dialog, "BYE"), TIMEOUT)
    assert bye.status == 200
    return await asyncio.to_thread(served.result, TIMEOUT)


def succeeded(result: SippResult) -> bool:
    return result.stats is not None and result.stats.successful == 1 and result.stats.failed == 0


@pytest.fixture
async def ua() -> AsyncIterator[Caller]:
    stack = SipStack()
    await stack.listen(Transport.TCP, LOOPBACK, 0)
    yield Caller(stack)
    await stack.close()


async def test_reliable_183_from_sipp_is_pracked(ua: Caller, tmp_path: Path) -> None:
    with cucm(tmp_path, "cucm_uas_100rel.xml") as served:
        assert served.port is not None
        invite, hop = place_call(ua, served.port, ("Supported", "100rel, timer"))
        acceptor = ProvisionalAcceptor(invite)
        kinds: list[ProvisionalKind] = []
        pracks: list[ClientRequest] = []
        early: list[Dialog] = []

        def on_provisional(response: Response) -> None:
            kind = acceptor.classify(response)
            kinds.append(kind)
            if kind is ProvisionalKind.NEW:
                dialog = Dialog.create_uac(invite, response)
                ua.dialogs.add(dialog, hop)
                early.append(dialog)
                prack = acceptor.prack(dialog, response, via=ua.via(Transport.TCP))
                pracks.append(ua.stack.start_request(prack, ua.dialog_hop(dialog)))

        pending = ua.stack.start_request(invite, hop, on_provisional=on_provisional)
        final = await asyncio.wait_for(pending.response(), TIMEOUT)
        assert final.status == 200
        assert ProvisionalKind.NEW in kinds and len(pracks) == 1
        prack_answer = await asyncio.wait_for(pracks[0].response(), TIMEOUT)
        assert prack_answer.status == 200 and prack_answer.cseq.method == "PRACK"
        assert pracks[0].request.headers.get("RAck") == f"1 {invite.cseq.seq} INVITE"
        (dialog,) = early
        dialog.receive_response(invite, final)
        ua.send_ack(dialog, pending.transaction)
        result = await finish(ua, dialog, served)
    assert succeeded(result), result.describe()


async def test_update_with_sdp_from_sipp_is_answered(ua: Caller, tmp_path: Path) -> None:
    with cucm(tmp_path, "cucm_uas_update.xml") as served:
        assert served.port is not None
        invite, hop = place_call(ua, served.port)
        final = await asyncio.wait_for(ua.stack.send_request(invite, hop), TIMEOUT)
        assert final.status == 200
        dialog = ua.dialogs.add(Dialog.create_uac(invite, final), hop)
        ua.send_ack(dialog, None)
        got, transaction, update = await asyncio.wait_for(ua.incoming.get(), TIMEOUT)
        assert got is dialog and update.method == "UPDATE" and has_sdp(update)
        assert refuse_offer(OfferState.STABLE, update) is None
        assert refuse_offer(OfferState.LOCAL_OFFER, update) is not None  # had we offered
        ua.answer(transaction, update, sdp(2))
        result = await finish(ua, dialog, served)
    assert succeeded(result), result.describe()


async def test_session_timer_negotiated_and_kept_by_sipps_refreshes(
    ua: Caller, tmp_path: Path
) -> None:
    policy = TimerPolicy(interval=1800, min_se=90)
    loop = asyncio.get_running_loop()
    with cucm(tmp_path, "cucm_uas_session_timer.xml", refresh_ms="300") as served:
        assert served.port is not None
        invite, hop = place_call(ua, served.port, ("Supported", "timer"),
                                       *request_headers(policy))
        final = await asyncio.wait_for(ua.stack.send_request(invite, hop), TIMEOUT)
        assert final.status == 200
        dialog = ua.dialogs.add(Dialog.create_uac(invite, final), hop)
        ua.send_ack(dialog, None)
        session = uac_negotiate(final)
        assert session == Session(90, Refresher.UAS, Refresher.UAC)  # CUCM refreshes
        timer = SessionTimer(session, loop.time())
        first_expiry = timer.expire_at
        assert timer.refresh_at is None and first_expiry == pytest.approx(timer.started + 60)
        methods = []
        for _ in range(3):
            _d, transaction, refresh = await asyncio.wait_for(ua.incoming.get(), TIMEOUT)
            methods.append(refresh.method)
            answer = uas_negotiate(refresh, policy,
                                   keep=timer.session.refresher_for(we_send=False))
            assert isinstance(answer, UasAnswer) and answer.session is not None
            assert not answer.session.local_refresher  # CUCM stays the refresher
            body = sdp(1) if has_sdp(refresh) else b""
            ua.answer(transaction, refresh, body, answer.headers)
            timer.refreshed(answer.session, loop.time())
            if refresh.method == "INVITE":
                ack = await asyncio.wait_for(ua.acks.get(), TIMEOUT)
                assert ack.cseq.seq == refresh.cseq.seq
        assert methods == ["INVITE", "UPDATE", "UPDATE"]
        assert timer.expire_at > first_expiry and timer.handle_timer(loop.time()) is None
        result = await finish(ua, dialog, served)
    assert succeeded(result), result.describe()


class Callee(UserAgent):
    """A UA answering one INVITE that requires 100rel with a reliable 180 (RFC 3262 §3)."""

    def __init__(self, stack: SipStack) -> None:
        super().__init__(stack, user="3001", domain=LOOPBACK)
        self.supported = frozenset({"100rel"})
        self.sender: ReliableProvisionalSender | None = None
        self.invite: tuple[ServerTransaction, Request, Dialog] | None = None
        self.matches: list[PrackMatch] = []
        self.ended = asyncio.Event()

    def handle_new_request(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        if request.method != "INVITE":
            return super().handle_new_request(transaction, request)
        assert requires(request, TAG_100REL)
        loop = asyncio.get_running_loop()
        sender = ReliableProvisionalSender(request, t1=0.5)
        ringing = sender.send(
            response_for(request, 180, to_tag="callee", contact=self.contact(Transport.TCP)),
            loop.time())
        dialog = self.dialogs.add(Dialog.create_uas(request, ringing), transaction.source)
        self.sender, self.invite = sender, (transaction, request, dialog)
        self.stack.send_response(transaction, ringing)
        return None

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        if request.method == "PRACK":
            assert self.sender is not None and self.invite is not None
            match = self.sender.receive_prack(request)
            self.matches.append(match)
            self.stack.respond(transaction, match.value)
            if match is PrackMatch.ACKNOWLEDGED and self.sender.may_send_final(200):
                invite_tx, invite, _ = self.invite
                ok = response_for(invite, 200, to_tag="callee",
                                  contact=self.contact(Transport.TCP), body=sdp(1),
                                  content_type=SDP_TYPE)
                dialog.confirm()
                self.stack.send_response(invite_tx, ok)
            return None
        result = super().handle_dialog_request(dialog, transaction, request)
        if request.method == "BYE":
            self.ended.set()
        return result


async def test_a_caller_requiring_100rel_gets_a_reliable_180_and_its_prack_matched(
    tmp_path: Path
) -> None:
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed (run scripts/install-peers.sh)")
    stack = SipStack()
    try:
        local = await stack.listen(Transport.TCP, LOOPBACK, 0)
        callee = Callee(stack)
        config = SippConfig(
            str(SCENARIOS / "cucm_uac_100rel.xml"), SippTransport.TCP, calls=1,
            remote=(LOOPBACK, local.port), service="3001", trace_messages=True,
            global_timeout=TIMEOUT,
            extra=("-d", "200", "-key", "caller", "3001", "-key", "caller_domain",
                   "video.example.com", "-key", "domain", LOOPBACK))
        result = await asyncio.to_thread(run_sipp, config, tmp_path, timeout=TIMEOUT + 10)
        await asyncio.wait_for(callee.ended.wait(), TIMEOUT)
    finally:
        await stack.close()
    assert succeeded(result), result.describe()
    assert callee.matches == [PrackMatch.ACKNOWLEDGED]
    assert callee.sender is not None and callee.sender.get_timer() is None
    assert not callee.sender.timed_out
