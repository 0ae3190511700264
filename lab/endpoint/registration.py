"""The endpoint's registration (RFC 3261 §10.2): REGISTER its AOR and Contact at the
registrar, refresh before the granted time runs out, unregister (Expires: 0) on stop.

One Call-ID for every REGISTER of the binding, CSeq counting up (§10.2.4 SHOULD), so the
registrar sees refreshes of one binding rather than new ones.
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

__all__ = ["Registration", "RegistrationError", "granted_expires"]

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 5.0
"""Seconds before a failed refresh is tried again."""


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
        self._call_id = new_call_id(agent.local_address(registrar.transport).host)
        self._cseq = 0
        self._task: asyncio.Task[None] | None = None

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
        self.registered.set()
        self.refreshed.set()
        logger.info(
            "%s registered at %s for %d s", self.agent.aor, self.registrar, self.granted
        )
        return self.granted

    async def start(self) -> None:
        """Register now (RegistrationError when refused) and keep the binding refreshed."""
        granted = await self._bind()
        self._task = asyncio.ensure_future(self._refresh(granted))

    async def _refresh(self, granted: int) -> None:
        delay = refresh_delay(granted)
        while True:
            await asyncio.sleep(delay)  # the refresh timer of the binding
            try:
                delay = refresh_delay(await self._bind())
            except RegistrationError as error:
                logger.warning("registration refresh failed: %s", error)
                self.registered.clear()
                delay = RETRY_AFTER_FAILURE

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
