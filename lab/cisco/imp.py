"""A simulated IM&P node: the far end of the gateway's SIP broker (SPEC §3).

Takes MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH, INFO and OPTIONS and answers each 200 (PUBLISH
with a SIP-ETag, RFC 3903 §11.3). An INVITE offering an IM session (SDP ``m=message <port>
sip ...``, as Lync and pidgin-sipe start a conversation) gets 200 with an ``m=message``
answer and makes a dialog: its MESSAGEs are recorded like page-mode ones (the text is the
body), :meth:`Imp.send_message` sends text back inside it, BYE ends it. The 200 does not
say ``Supported: ms-text-format`` (a standards node does not read the first text that
Microsoft clients carry base64-encoded in the INVITE's ``ms-text-format`` header), so the
client sends that text again as a MESSAGE, as pidgin-sipe does. Any other INVITE gets 488.

A SUBSCRIBE makes a subscription dialog (RFC 6665):
200 with our To tag and the granted Expires, then an immediate NOTIFY carrying a PIDF
presence document (RFC 3863) sent through the subscription's route set, so it comes back
through the broker's Record-Route. Everything received is recorded; tests wait on it
with :meth:`Imp.wait_for`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field

from certs.pki import LabPKI
from lab.cisco.config import ImpConfig
from lab.listeners import listen_all, load_pki
from media.sdp import SdpError, parse_sdp
from sip.dialog import Dialog
from sip.message import Request, Response, new_tag
from sip.stack import Hop, SipStack, SipTimeoutError
from sip.timers import TimerSettings
from sip.transaction_server import ServerTransaction
from sip.transport import Transport, TransportAddress, TransportSettings, source_host_of
from sip.useragent import UserAgent, response_for

__all__ = ["IMP_METHODS", "Imp", "pidf"]

logger = logging.getLogger(__name__)

IMP_METHODS = frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "OPTIONS"})
"""Methods the node takes outside a dialog (and INVITE for an IM session)."""
ALLOW = "INVITE, ACK, BYE, MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH, INFO, OPTIONS"
IM_ACCEPT_TYPES = "text/plain text/html"
"""What our IM session answer says we read (``a=accept-types``)."""


def im_offer(request: Request) -> bool:
    """Whether an INVITE's body offers an IM session: SDP whose media lines are all
    ``message`` (or the pre-OCS 2007 ``x-ms-message``) over ``sip``."""
    if (request.content_type or "").split(";", 1)[0].strip().lower() != "application/sdp":
        return False
    try:
        offer = parse_sdp(request.body)
    except SdpError:
        return False
    return bool(offer.media) and all(
        m.kind in ("message", "x-ms-message") and m.proto.lower() == "sip" for m in offer.media
    )


def im_answer(host: str, port: int, aor: str) -> bytes:
    """Our SDP answer to an IM session offer: one ``m=message`` line naming our AOR."""
    family = "IP6" if ":" in host else "IP4"
    return (
        "v=0\r\n"
        f"o=- 0 0 IN {family} {host}\r\n"
        "s=session\r\n"
        f"c=IN {family} {host}\r\n"
        "t=0 0\r\n"
        f"m=message {port} sip {aor}\r\n"
        f"a=accept-types:{IM_ACCEPT_TYPES}\r\n"
    ).encode()


def pidf(entity: str, basic: str) -> bytes:
    """A minimal PIDF document (RFC 3863 §4) for ``entity`` ("sip:user@domain")."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">\r\n'
        f'  <tuple id="t{secrets.token_hex(4)}"><status><basic>{basic}</basic></status></tuple>\r\n'
        "</presence>\r\n"
    ).encode()


@dataclass(slots=True)
class _Record:
    requests: list[tuple[int, Request]] = field(default_factory=list)
    """(sequence number, request), the most recent 1000."""
    count: int = 0
    """Requests ever received (the next sequence number)."""
    taken: dict[str, int] = field(default_factory=dict)
    """Per method: sequence number after the last one wait_for returned."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Imp(UserAgent):
    """The IM&P node on its own :class:`SipStack`."""

    def __init__(self, config: ImpConfig, stack: SipStack, pki: LabPKI | None) -> None:
        super().__init__(stack, user="imp", domain=config.domain)
        self.config = config
        self.pki = pki
        self.notify_responses: list[Response] = []
        """Answers to the NOTIFYs we sent."""
        self.notify_answered = asyncio.Event()
        """Set when a NOTIFY of ours gets its final answer (clear it to wait for the next)."""
        self._record = _Record()
        self.sessions: dict[str, Dialog] = {}
        """Open IM sessions by Call-ID."""

    @classmethod
    async def start(cls, config: ImpConfig) -> Imp:
        """Make (or load) the PKI and bind every listener."""
        pki, tls_client = await load_pki(config.certs, config.cert_name)
        stack = SipStack(
            timers=TimerSettings(t1=config.t1, t2=max(4.0, config.t1)),
            transport_settings=TransportSettings(
                outbound_ports=None, source_host=source_host_of(config.listeners[0].host)
            ),
            tls_client=tls_client,
        )
        node = cls(config, stack, pki)
        try:
            await listen_all(
                stack,
                config.listeners,
                pki,
                config.cert_name,
                require_client_cert=config.require_client_cert,
            )
        except BaseException:
            await stack.close()
            raise
        return node

    @property
    def listeners(self) -> tuple[TransportAddress, ...]:
        return self.stack.listeners

    async def close(self) -> None:
        """Close every socket."""
        await self.stack.close()

    async def __aenter__(self) -> Imp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what tests read ----------------------------------------------------------------------

    @property
    def received(self) -> tuple[Request, ...]:
        """Every request received, in order."""
        return tuple(request for _, request in self._record.requests)

    async def wait_for(self, method: str, timeout: float = 5.0) -> Request:
        """The next ``method`` request not yet returned by this call (waits for it)."""
        method = method.upper()
        record = self._record
        async with asyncio.timeout(timeout):
            while True:
                start = record.taken.get(method, 0)
                for seq, request in record.requests:
                    if seq >= start and request.method == method:
                        record.taken[method] = seq + 1
                        return request
                record.changed.clear()
                await record.changed.wait()

    def _note(self, request: Request) -> None:
        record = self._record
        record.requests.append((record.count, request))
        record.count += 1
        del record.requests[:-1000]
        record.changed.set()

    # -- requests -----------------------------------------------------------------------------

    def handle_new_request(
        self, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        if request.method == "INVITE":
            self._note(request)
            self._invite(transaction, request)
            return None
        if request.method not in IMP_METHODS:
            self.stack.respond(transaction, 405, headers=(("Allow", ALLOW),))
            return None
        self._note(request)
        if request.method == "SUBSCRIBE":
            self._subscribe(transaction, request)
        elif request.method == "PUBLISH":
            expires = request.headers.get("Expires") or "3600"
            self.stack.respond(
                transaction,
                200,
                headers=(("SIP-ETag", secrets.token_hex(8)), ("Expires", expires.strip())),
            )
        elif request.method == "OPTIONS":
            self.answer_options(transaction)
        else:
            self.stack.respond(transaction, 200)
        return None

    def handle_dialog_request(
        self, dialog: Dialog, transaction: ServerTransaction, request: Request
    ) -> Awaitable[None] | None:
        self._note(request)
        if request.method == "SUBSCRIBE":
            expires = self._expires(request)
            self.stack.respond(transaction, 200, headers=(("Expires", str(expires)),))
            self._spawn_notify(dialog, expires)
            if expires == 0:
                self.dialogs.remove(dialog.id)
            return None
        if request.method in IMP_METHODS:
            self.stack.respond(transaction, 200)
            return None
        if request.method == "INVITE" and dialog.id.call_id in self.sessions:
            # A session refresh (Lync re-INVITEs to keep an IM dialog alive): same answer.
            ok = self._im_ok(transaction, request, dialog.id.local_tag)
            self.stack.send_response(transaction, ok)
            return None
        if request.method == "BYE":
            self.sessions.pop(dialog.id.call_id, None)
        return super().handle_dialog_request(dialog, transaction, request)

    def handle_ack(self, dialog: Dialog, ack: Request) -> None:
        self._note(ack)

    def handle_ack_timeout(self, dialog: Dialog) -> None:
        # Our 200 was never ACKed: the session ends (BYE, RFC 3261 §13.3.1.4).
        self.sessions.pop(dialog.id.call_id, None)
        super().handle_ack_timeout(dialog)

    # -- IM sessions ----------------------------------------------------------------------------

    def _invite(self, transaction: ServerTransaction, request: Request) -> None:
        if not im_offer(request):
            self.stack.respond(transaction, 488, "Not Acceptable Here: IM sessions only")
            return
        ok = self._im_ok(transaction, request, new_tag())
        dialog = Dialog.create_uas(request, ok)
        source = transaction.source
        if isinstance(source, Hop):
            self.dialogs.add(dialog, source)
        self.sessions[dialog.id.call_id] = dialog
        self.stack.send_response(transaction, ok)

    def _im_ok(self, transaction: ServerTransaction, request: Request, tag: str) -> Response:
        source = transaction.source
        transport = source.transport if isinstance(source, Hop) else Transport.TCP
        local = self.stack.listener(transport) or self.stack.listeners[0]
        body = im_answer(local.host, local.port, f"sip:{self.user}@{self.config.domain}")
        return response_for(
            request, 200, to_tag=tag, contact=self.contact(transport), body=body,
            content_type="application/sdp",
        )

    async def send_message(
        self, call_id: str, text: str, content_type: str = "text/plain; charset=UTF-8"
    ) -> Response:
        """Send ``text`` inside the IM session ``call_id`` (toward the Lync client)."""
        dialog = self.sessions[call_id]
        return await self.send_in_dialog(
            dialog, "MESSAGE", body=text.encode(), content_type=content_type
        )

    async def bye(self, call_id: str) -> Response:
        """End the IM session ``call_id`` from our side."""
        dialog = self.sessions.pop(call_id)
        request, hop = self.dialog_request(dialog, "BYE")
        dialog.terminate()
        self.dialogs.remove(dialog.id)
        return await self.stack.send_request(request, hop)

    def _expires(self, request: Request) -> int:
        text = (request.headers.get("Expires") or "").strip()
        asked = int(text) if text.isdigit() else self.config.subscription_expires
        return min(asked, self.config.subscription_expires)

    def _subscribe(self, transaction: ServerTransaction, request: Request) -> None:
        event = (request.headers.get("Event") or "").split(";", 1)[0].strip().lower()
        if event not in ("presence", ""):
            self.stack.respond(
                transaction, 489, "Bad Event", headers=(("Allow-Events", "presence"),)
            )
            return
        expires = self._expires(request)
        source = transaction.source
        transport = source.transport if isinstance(source, Hop) else Transport.TCP
        ok = response_for(request, 200, to_tag=new_tag(), contact=self.contact(transport))
        ok.headers.add("Expires", str(expires))
        dialog = Dialog.create_uas(request, ok)
        dialog.confirm()
        if isinstance(source, Hop):
            self.dialogs.add(dialog, source)
        self.stack.send_response(transaction, ok)
        self._spawn_notify(dialog, expires)

    def _spawn_notify(self, dialog: Dialog, expires: int) -> None:
        task = asyncio.ensure_future(self._notify(dialog, expires))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _notify(self, dialog: Dialog, expires: int) -> None:
        """The NOTIFY that a new or refreshed subscription gets at once (RFC 6665 §4.2.1)."""
        state = f"active;expires={expires}" if expires else "terminated;reason=timeout"
        entity = str(dialog.local_address.uri)  # the presentity the subscription names
        request, hop = self.dialog_request(
            dialog,
            "NOTIFY",
            body=pidf(entity, self.config.presence),
            content_type="application/pidf+xml",
            headers=(("Event", "presence"), ("Subscription-State", state)),
        )
        try:
            response = await self.stack.send_request(request, hop)
        except SipTimeoutError as error:
            logger.warning("NOTIFY to %s: %s", hop, error)
            return
        self.notify_responses.append(response)
        del self.notify_responses[:-1000]
        self.notify_answered.set()
