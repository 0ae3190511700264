"""The endpoint's registration (RFC 3261 §10.2): REGISTER its AOR and Contact at the
registrar, refresh before the granted time runs out, unregister (Expires: 0) on stop.

One Call-ID for every REGISTER of the binding, CSeq counting up (§10.2.4 SHOULD), so the
registrar sees refreshes of one binding rather than new ones.

Recovery (as a phone does after a Unified CM restart): a refresh that fails, or the loss of
the connection the binding was made over (TCP/TLS; RFC 5626 §4.4 treats the flow as the
binding's lifeline), starts re-registration at once and then with exponential backoff
(:func:`retry_delay`) until the registrar accepts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sip.errors import ProtocolError
from sip.headers import Address
from sip.message import Response, new_call_id
from sip.stack import Hop, SipTimeoutError
from sip.uri import URI
from sip.useragent import UserAgent

__all__ = ["Registration", "RegistrationError", "granted_expires", "retry_delay"]

logger = logging.getLogger(__name__)

RETRY_FIRST = 1.0
"""Seconds before the attempt after a first failure."""
RETRY_MAX = 30.0
"""Longest wait between attempts."""
FLOW_CHECK = 1.0
"""How often the binding's connection is looked at. The transport manager's connection
table is the public view of a closed flow (the stack has no per-connection callback)."""


def retry_delay(failures: int) -> float:
    """Seconds to wait before the next attempt after ``failures`` failed ones in a row:
    1, 2, 4 ... up to :data:`RETRY_MAX` (a restarted registrar is usually back within
    seconds; one that stays down is not hammered)."""
    return min(RETRY_MAX, RETRY_FIRST * 2.0 ** max(0, failures - 1))


class RegistrationError(Exception):
    """The registrar refused the binding (or could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def granted_expires(response: Response, contact: URI, asked: int) -> int:
    """What the registrar granted: our Contact's expires parameter, else Expires, else what
    we asked (§10.2.4)."""
    for address in response.contact:
        if address.uri.host == contact.host and address.uri.port == contact.port:
            value = address.params.get("expires")
            if value is not None and value.isdigit():
                return int(value)
    header = response.headers.get("Expires")
    if header is not None and header.strip().isdigit():
        return int(header.strip())
    return asked


def refresh_delay(granted: int) -> float:
    """When to refresh a binding granted for ``granted`` seconds: halfway for short ones,
    30 s ahead for long ones."""
    return granted / 2 if granted <= 60 else granted - 30.0


class Registration:
    """One AOR's binding at one registrar, kept alive by a refresh task."""

    def __init__(self, agent: UserAgent, registrar: Hop, expires: int) -> None:
        self.agent = agent
        self.registrar = registrar
        self.expires = expires
        """Seconds we ask for."""
        self.granted = 0
        """Seconds the registrar granted last time (0: not registered)."""
        self.count = 0
        """Successful REGISTERs (the first and every refresh)."""
        self.registered = asyncio.Event()
        """Set while a binding is in place."""
        self.refreshed = asyncio.Event()
        """Set after each successful REGISTER (clear it to wait for the next)."""
        self.failures = 0
        """Failed attempts since the last success."""
        self._call_id = new_call_id(agent.local_address(registrar.transport).host)
        self._cseq = 0
        self._task: asyncio.Task[None] | None = None
        self._flow: int | None = None
        """Id of the stream connection the binding was made over (None: UDP, or unknown)."""

    @property
    def contact_uri(self) -> URI:
        return Address.parse(self.agent.contact(self.registrar.transport)).uri

    async def register(self, expires: int | None = None) -> Response:
        """Send one REGISTER (``expires`` 0 removes the binding); returns the final answer."""
        asked = self.expires if expires is None else expires
        self._cseq += 1
        uri = URI("sip", host=self.agent.domain)
        request = self.agent.new_request(
            "REGISTER",
            uri,
            self.registrar,
            to=Address(self.agent.aor),
            call_id=self._call_id,
            headers=(
                ("Contact", self.agent.contact(self.registrar.transport)),
                ("Expires", str(asked)),
            ),
        )
        request.headers.set("CSeq", f"{self._cseq} REGISTER")
        return await self.agent.stack.send_request(request, self.registrar)

    async def _bind(self) -> int:
        try:
            response = await self.register()
        except SipTimeoutError as error:
            raise RegistrationError(f"REGISTER to {self.registrar}: {error}") from error
        if not 200 <= response.status < 300:
            raise RegistrationError(
                f"REGISTER to {self.registrar} answered {response.status} {response.reason}",
                response.status,
            )
        try:
            self.granted = granted_expires(response, self.contact_uri, self.expires)
        except ProtocolError as error:
            raise RegistrationError(f"unusable REGISTER answer: {error.message}") from error
        self.count += 1
        self.failures = 0
        self._flow = self._flow_of()
        self.registered.set()
        self.refreshed.set()
        logger.info(
            "%s registered at %s for %d s", self.agent.aor, self.registrar, self.granted
        )
        return self.granted

    def _flow_of(self) -> int | None:
        if not self.registrar.reliable:
            return None
        found = self.agent.stack.transports.find_connection(
            self.registrar.address, self.registrar.server_hostname)
        return found.id if found is not None else None

    def flow_lost(self) -> bool:
        """Whether the connection the binding was made over has closed."""
        return (self._flow is not None
                and self.agent.stack.transports.connection(self._flow) is None)

    async def start(self) -> None:
        """Register now (RegistrationError when refused) and keep the binding refreshed,
        re-registering when it fails or its connection is lost."""
        granted = await self._bind()
        self._task = asyncio.ensure_future(self._maintain(granted))

    async def _wait_refresh_or_flow_loss(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not self.flow_lost():
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, FLOW_CHECK) if self._flow is not None else left)
        logger.warning("%s: connection to the registrar %s lost: registering again",
                       self.agent.aor, self.registrar)
        self.registered.clear()

    async def _maintain(self, granted: int) -> None:
        delay = refresh_delay(granted)
        while True:
            await self._wait_refresh_or_flow_loss(delay)
            try:
                delay = refresh_delay(await self._bind())
            except (RegistrationError, ProtocolError, OSError) as error:
                self.failures += 1
                self.registered.clear()
                delay = retry_delay(self.failures)
                logger.warning("%s: registration failed (%d in a row, next try in %.0f s): %s",
                               self.agent.aor, self.failures, delay, error)
                self._flow = None

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop refreshing and remove the binding (best effort within ``timeout``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self.registered.is_set():
            return
        self.registered.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.register(0)
        except (TimeoutError, SipTimeoutError, ProtocolError, RuntimeError) as error:
            logger.debug("unregister failed: %s", error)
