"""Long-term credentials (RFC 8489 §9.2) and TURN REST shared-secret passwords.

Nonces are stateless: ``expiry-hex`` + a truncated HMAC of it under a per-process secret,
so a server keeps no per-client nonce table and a forged or old nonce gets 438.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_NONCE_MAC_LENGTH = 12


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password) (RFC 8489 §9.2.2, SASLprep omitted: ASCII)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def rest_password(secret: str, username: str) -> str:
    """TURN REST API password: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


@dataclass(slots=True)
class Authenticator:
    """Looks up keys for usernames and issues / checks nonces; time is passed in."""

    realm: str
    """The realm sent in 401 responses."""
    users: Mapping[str, str]
    """Static accounts: username -> password."""
    secret: str | None = None
    """TURN REST shared secret: usernames ``expiry:user``, password HMAC-SHA1 (base64)."""
    nonce_lifetime: float = 600.0
    """Seconds a nonce stays valid before 438 Stale Nonce."""
    wall_clock: Callable[[], float] = time.time
    """Unix time, only for REST usernames whose expiry is a Unix timestamp."""
    _nonce_key: bytes = field(default_factory=lambda: os.urandom(16))
    _keys: dict[str, bytes] = field(default_factory=dict)

    def make_nonce(self, now: float) -> bytes:
        """A fresh nonce, valid until ``now + nonce_lifetime``."""
        expiry = f"{int(now + self.nonce_lifetime):x}".encode()
        mac = hmac.new(self._nonce_key, expiry, hashlib.sha1).hexdigest()[:_NONCE_MAC_LENGTH]
        return expiry + b"-" + mac.encode()

    def nonce_valid(self, nonce: bytes, now: float) -> bool:
        """True when ``nonce`` is one of ours and not expired."""
        expiry, sep, mac = nonce.partition(b"-")
        if not sep or len(mac) != _NONCE_MAC_LENGTH:
            return False
        expected = hmac.new(self._nonce_key, expiry, hashlib.sha1).hexdigest()[:_NONCE_MAC_LENGTH]
        if not hmac.compare_digest(mac, expected.encode()):
            return False
        try:
            return int(expiry, 16) > now
        except ValueError:
            return False

    def key_for(self, username: str) -> bytes | None:
        """The HMAC key of ``username``, or None for an unknown (or expired REST) user."""
        password = self.users.get(username)
        if password is None and self.secret is not None:
            expiry, sep, _ = username.partition(":")
            if sep and expiry.isdigit() and int(expiry) > self.wall_clock():
                password = rest_password(self.secret, username)
        if password is None:
            return None
        cached = self._keys.get(username + "\0" + password)
        if cached is None:
            cached = long_term_key(username, self.realm, password)
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[username + "\0" + password] = cached
        return cached
