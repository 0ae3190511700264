"""Instant messaging of the simulated Lync client: IM sessions, as real clients do.

Lync 2010 and later, Skype for Business and pidgin-sipe start a conversation with an INVITE
whose SDP offers one ``m=message <port> sip null`` line ([MS-SIP]; pidgin-sipe's
``sipe-im.c``), carrying the first text base64-encoded in an ``ms-text-format`` header and
naming the conversation in ``Ms-Conversation-ID``. When the 200 says ``Supported:
ms-text-format`` the peer has taken that first text; otherwise it goes again as the first
MESSAGE inside the dialog (what pidgin-sipe does). Later texts are MESSAGEs inside the
dialog; BYE ends it. The peer may send MESSAGEs inside it too (recorded on the session).

``im_mode = "page"`` keeps the older behaviour: one page-mode MESSAGE (RFC 3428) per text.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from typing import TYPE_CHECKING

from sip.dialog import Dialog, DialogId
from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Request, Response
from sip.stack import SipTimeoutError
from sip.transaction_server import ServerTransaction
from sip.uri import URI

if TYPE_CHECKING:
    from lab.lync.client import LyncClient

__all__ = ["IM_MODES", "ImRefused", "ImSession", "InstantMessaging", "im_offer"]

logger = logging.getLogger(__name__)

IM_MODES = ("session", "page")
"""``session``: INVITE m=message then MESSAGEs (Lync 2010+, pidgin-sipe); ``page``: one
page-mode MESSAGE per text (the lab client's older behaviour)."""
ACCEPT_TYPES = ("text/plain text/html image/gif multipart/alternative "
                "application/im-iscomposing+xml application/ms-imdn+xml text/x-msmsgsinvite")
"""What the offer says we read (the list pidgin-sipe sends)."""
TEXT_PLAIN = "text/plain; charset=UTF-8"


class ImRefused(Exception):
    """The IM session INVITE (or a MESSAGE) was not accepted."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def im_offer(host: str, port: int) -> bytes:
    """The SDP of an IM session INVITE (the shape pidgin-sipe and Lync send)."""
    family = "IP6" if ":" in host else "IP4"
    return (
        "v=0\r\n"
        f"o=- 0 0 IN {family} {host}\r\n"
        "s=session\r\n"
        f"c=IN {family} {host}\r\n"
        "t=0 0\r\n"
        f"m=message {port} sip null\r\n"
        f"a=accept-types:{ACCEPT_TYPES}\r\n"
    ).encode()


class ImSession:
    """One IM session (an INVITE dialog with m=message) with one peer."""

    def __init__(self, im: InstantMessaging, peer: str, dialog: Dialog, answer: Response) -> None:
        self.im = im
        self.peer = peer
        self.dialog = dialog
        self.answer = answer
        """The 200 that set the session up."""
        self.received: asyncio.Queue[Request] = asyncio.Queue()
        """MESSAGEs the peer sent inside the session."""
        self.closed = asyncio.Event()
        """Set when either side ended the session."""

    @property
    def call_id(self) -> str:
        return self.dialog.id.call_id

    @property
    def first_text_taken(self) -> bool:
        """Whether the peer read the text of the INVITE's ms-text-format header."""
        tags = ",".join(self.answer.headers.getlist("Supported")).lower()
        return "ms-text-format" in (tag.strip() for tag in tags.split(","))

    async def send(self, text: str, *, content_type: str = TEXT_PLAIN,
                   timeout: float = 10.0) -> Response:
        """One MESSAGE inside the session; its final response."""
        if self.closed.is_set():
            raise ImRefused(f"the IM session with {self.peer} is closed")
        agent = self.im.client.agent
        request, hop = agent.dialog_request(self.dialog, "MESSAGE", body=text.encode(),
                                            content_type=content_type)
        async with asyncio.timeout(timeout):
            return await agent.stack.send_request(request, hop)

    async def next_message(self, timeout: float = 10.0) -> Request:
        """The next MESSAGE the peer sent inside the session."""
        async with asyncio.timeout(timeout):
            return await self.received.get()

    async def close(self, timeout: float = 5.0) -> Response | None:
        """BYE (what a client sends when the conversation window closes)."""
        if self.closed.is_set():
            return None
        agent = self.im.client.agent
        request, hop = agent.dialog_request(self.dialog, "BYE")
        self._ended()
        async with asyncio.timeout(timeout):
            return await agent.stack.send_request(request, hop)

    def handle(self, transaction: ServerTransaction, request: Request) -> None:
        """A request from the peer inside the session."""
        stack = self.im.client.agent.stack
        if request.method == "MESSAGE":
            stack.respond(transaction, 200)
            self.received.put_nowait(request)
        elif request.method == "BYE":
            stack.respond(transaction, 200)
            self._ended()
        elif request.method == "INFO":  # typing notifications
            stack.respond(transaction, 200)
        else:
            stack.respond(transaction, 405, headers=(("Allow", "MESSAGE, INFO, BYE"),))

    def _ended(self) -> None:
        self.dialog.terminate()
        self.im.client.agent.dialogs.remove(self.dialog.id)
        self.im.sessions.pop(self.dialog.id, None)
        self.closed.set()


class InstantMessaging:
    """A client's IM: sessions by dialog, and the choice between session and page mode."""

    def __init__(self, client: LyncClient, user_agent: str) -> None:
        self.client = client
        self.user_agent = user_agent
        self.sessions: dict[DialogId, ImSession] = {}
        """Open IM sessions."""

    @property
    def mode(self) -> str:
        return self.client.config.im_mode

    def session_with(self, peer: str) -> ImSession | None:
        """An open session with ``peer`` (its URI text), if any."""
        return next((s for s in self.sessions.values() if s.peer == peer), None)

    async def send(self, target: str, text: str, *, timeout: float = 10.0) -> Response:
        """Send ``text`` to ``target`` the way this client does (``im_mode``): inside an IM
        session (opened first if there is none), or as a page-mode MESSAGE. Returns the
        response that took the text (the MESSAGE's, or the INVITE's 200 when the peer
        read the first text from the INVITE)."""
        uri = _uri(target)
        if self.mode == "page":
            return await self.page(uri, text, timeout=timeout)
        session = self.session_with(str(uri))
        if session is None:
            session = await self.open(uri, first_text=text, timeout=timeout)
            if session.first_text_taken:
                return session.answer
        return await session.send(text, timeout=timeout)

    async def page(self, uri: URI, text: str, *, timeout: float = 10.0) -> Response:
        """One page-mode MESSAGE (RFC 3428) through the registrar."""
        client = self.client
        request = client.agent.new_request(
            "MESSAGE", uri, client.registrar, to=Address(uri), body=text.encode(),
            content_type="text/plain")
        async with asyncio.timeout(timeout):
            return await client.agent.stack.send_request(request, client.registrar)

    async def open(self, target: str | URI, *, first_text: str | None = None,
                   timeout: float = 10.0) -> ImSession:
        """INVITE ``target`` with an m=message offer; the session once the 200 is ACKed.

        Raises :class:`ImRefused` when the INVITE is answered otherwise.
        """
        client = self.client
        agent = client.agent
        uri = target if isinstance(target, URI) else _uri(target)
        local = agent.local_address(client.registrar.transport)
        headers = [("User-Agent", self.user_agent), ("Supported", "ms-sender"),
                   ("Supported", "ms-dialog-route-set-update"),
                   ("ms-keep-alive", "UAC;hop-hop=yes"),
                   ("Ms-Conversation-ID", secrets.token_urlsafe(18))]
        if first_text is not None:
            encoded = base64.b64encode(first_text.encode()).decode()
            headers.append(("ms-text-format", f"{TEXT_PLAIN};ms-body={encoded}"))
        request = agent.new_request(
            "INVITE", uri, client.registrar, to=Address(uri),
            body=im_offer(local.host, local.port), content_type="application/sdp",
            headers=headers)
        pending = agent.stack.start_request(request, client.registrar)
        try:
            async with asyncio.timeout(timeout):
                response = await pending.final
        except SipTimeoutError as error:
            raise ImRefused(f"IM session INVITE to {uri}: {error}") from None
        if not 200 <= response.status < 300:
            raise ImRefused(f"IM session INVITE to {uri} answered {response.status} "
                            f"{response.reason}", response.status)
        try:
            dialog = Dialog.create_uac(pending.request, response)
        except ProtocolError as error:
            raise ImRefused(f"bad 2xx to the IM session INVITE: {error.message}") from None
        agent.dialogs.add(dialog, client.registrar)
        agent.send_ack(dialog, pending.transaction)
        session = ImSession(self, str(uri), dialog, response)
        self.sessions[dialog.id] = session
        logger.info("%s: IM session with %s open (Call-ID %s)", client.aor, uri,
                    dialog.id.call_id)
        return session

    def handle(self, dialog: Dialog, transaction: ServerTransaction, request: Request) -> bool:
        """A request inside one of our IM sessions: handled (True), else not ours."""
        session = self.sessions.get(dialog.id)
        if session is None:
            return False
        session.handle(transaction, request)
        return True

    async def close(self) -> None:
        """BYE every open session (the client is closing)."""
        for session in list(self.sessions.values()):
            try:
                await session.close(timeout=2.0)
            except Exception as error:  # closing anyway
                logger.info("%s: IM BYE on close: %r", self.client.aor, error)


def _uri(target: str) -> URI:
    return URI.parse(target if target.startswith("sip") else f"sip:{target}")
