"""Unified CM's registrar for the video domain (RFC 3261 §10.3), sans-IO: bindings with
absolute expiry deadlines; time is passed in.

One contact per directory number (a phone line): a new REGISTER replaces the binding,
``Expires: 0`` (or ``*``) removes it, a binding past its deadline is gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sip.errors import ProtocolError
from sip.message import Request
from sip.stack import Hop
from sip.uri import URI

__all__ = ["Binding", "Registrar", "RegisterOutcome"]


@dataclass(frozen=True, slots=True)
class Binding:
    """Where one directory number is reachable."""

    user: str
    """The DN ("3001")."""
    contact: URI
    """The registered Contact URI."""
    hop: Hop
    """Where to send to it (pinned to the connection it registered over, if a stream)."""
    expires_at: float
    """Deadline (loop time)."""
    call_id: str
    """Call-ID of the registering dialog of REGISTERs."""


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    """What to answer a REGISTER."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


class Registrar:
    """Bindings for ``<DN>@domain``."""

    def __init__(
        self,
        domain: str,
        dn_pattern: str,
        *,
        local_hosts: frozenset[str] = frozenset(),
        min_expires: int = 1,
        max_expires: int = 3600,
    ) -> None:
        self.domain = domain.lower()
        self._dn = re.compile(dn_pattern)
        self.local_hosts = frozenset(h.lower() for h in local_hosts) | {self.domain}
        """Request-URI hosts that mean us."""
        self.min_expires = min_expires
        self.max_expires = max_expires
        self._bindings: dict[str, Binding] = {}

    def is_local(self, uri: URI) -> bool:
        """Whether ``uri`` names this node or its domain."""
        return (uri.host or "").lower().strip("[]") in self.local_hosts

    def is_dn(self, user: str | None) -> bool:
        """Whether ``user`` is one of our directory numbers."""
        return user is not None and self._dn.fullmatch(user) is not None

    def register(self, request: Request, source: Hop, now: float) -> RegisterOutcome:
        """Apply a REGISTER received from ``source`` at ``now`` (§10.3)."""
        if not self.is_local(request.uri):
            return RegisterOutcome(404, f"Not Found: not the registrar for {request.uri.host}")
        try:
            to_uri = request.to.uri
            contacts = request.contact
        except ProtocolError as error:
            return RegisterOutcome(400, f"Bad Request: {error.message}")
        user = to_uri.user
        if (to_uri.host or "").lower() != self.domain or not self.is_dn(user):
            return RegisterOutcome(404, f"Not Found: {to_uri} is not a line of {self.domain}")
        assert user is not None
        header = request.headers.get("Expires")
        star = any(v.strip() == "*" for v in request.headers.getlist("Contact"))
        if star:
            if header is None or header.strip() != "0":
                return RegisterOutcome(400, "Bad Request: Contact * needs Expires: 0")
            self._bindings.pop(user, None)
            return RegisterOutcome(200, "OK")
        if not contacts:
            return self._fetch(user, now)
        contact = contacts[0]
        value = contact.params.get("expires") or header
        try:
            asked = int(value.strip()) if value is not None else self.max_expires
        except ValueError:
            return RegisterOutcome(400, "Bad Request: Expires is not a number")
        if asked == 0:
            self._bindings.pop(user, None)
            return RegisterOutcome(200, "OK")
        if asked < self.min_expires:
            return RegisterOutcome(
                423, "Interval Too Brief", (("Min-Expires", str(self.min_expires)),)
            )
        granted = min(asked, self.max_expires)
        hop = Hop.from_uri(contact.uri)
        if hop.transport is source.transport and hop.transport.reliable:
            # Reach a stream client over the connection it registered on (it may not
            # accept new ones, and TLS names of endpoints are not their addresses).
            hop = Hop(hop.transport, hop.host, hop.port, connection_id=source.connection_id)
        self._bindings[user] = Binding(user, contact.uri, hop, now + granted, request.call_id or "")
        return RegisterOutcome(200, "OK", (("Contact", f"<{contact.uri}>;expires={granted}"),))

    def _fetch(self, user: str, now: float) -> RegisterOutcome:
        binding = self.lookup(user, now)
        if binding is None:
            return RegisterOutcome(200, "OK")
        left = max(0, int(binding.expires_at - now))
        return RegisterOutcome(200, "OK", (("Contact", f"<{binding.contact}>;expires={left}"),))

    def lookup(self, user: str, now: float) -> Binding | None:
        """The live binding of ``user`` at ``now`` (expired ones are dropped)."""
        binding = self._bindings.get(user)
        if binding is not None and binding.expires_at <= now:
            del self._bindings[user]
            return None
        return binding

    def bindings(self, now: float) -> list[Binding]:
        """Every live binding at ``now``."""
        for user in list(self._bindings):
            self.lookup(user, now)
        return list(self._bindings.values())

    def binding_for(self, uri: URI, now: float) -> Binding | None:
        """The live binding whose contact is ``uri`` (host and port), if any."""
        for binding in self.bindings(now):
            if binding.contact.host == uri.host and binding.contact.port == uri.port:
                return binding
        return None
