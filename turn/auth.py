"""Long-term credentials (RFC 8489 §9.2), TURN REST and MRAS shared-secret passwords.

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

from .ms_turn import long_term_key as ms_long_term_key

_NONCE_MAC_LENGTH = 12


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password) (RFC 8489 §9.2.2, SASLprep omitted: ASCII)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def rest_password(secret: str, username: str) -> str:
    """TURN REST API password: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


MRAS_LIFETIME = 8 * 3600
"""Seconds MRAS credentials stay valid (the FE hands out 8-hour credentials)."""


@dataclass(frozen=True, slots=True)
class MrasCredentials:
    """A/V Edge credentials as the FE's MRAS service hands them out (base64 text)."""

    username: str
    """base64 of the username bytes ``<expiry-unix-seconds>:<identity>``."""
    password: str
    """base64 of HMAC-SHA1(shared key, username bytes)."""
    expires: int
    """Unix time after which the Edge refuses them."""
    duration: int
    """Validity in seconds (MRAS ``duration``), from issue time."""


def mras_credentials(
    secret: str, identity: str, now: float, lifetime: int = MRAS_LIFETIME
) -> MrasCredentials:
    """Issue MRAS credentials under the key the FE shares with the A/V Edge.

    [MS-AVEDGEA]: the Edge and FE share a key; the username carries its expiry, the password
    is a MAC of the username, so the Edge checks credentials without a per-user table.
    MS clients (and libnice's MS modes) base64-decode both before use.
    """
    expires = int(now) + lifetime
    user = f"{expires}:{identity}".encode()
    return MrasCredentials(
        username=base64.b64encode(user).decode("ascii"),
        password=base64.b64encode(_mras_mac(secret, user)).decode("ascii"),
        expires=expires,
        duration=lifetime,
    )


def _mras_mac(secret: str, username: bytes) -> bytes:
    return hmac.new(secret.encode(), username, hashlib.sha1).digest()


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
    """Unix time, only for REST / MRAS usernames whose expiry is a Unix timestamp."""
    ms_secret: str | None = None
    """MRAS key shared with the FE: MS-TURN usernames ``expiry:identity`` (binary-safe)."""
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

    def ms_key_for(self, username: bytes, realm: bytes) -> bytes | None:
        """The MS-TURN long-term key of raw ``username``: MRAS (unexpired) or a static user."""
        password: bytes | None = None
        if self.ms_secret is not None:
            expiry, sep, _ = username.partition(b":")
            if sep and expiry.isdigit() and int(expiry) > self.wall_clock():
                password = _mras_mac(self.ms_secret, username)
        if password is None:
            try:
                text = self.users.get(username.decode("utf-8"))
            except UnicodeDecodeError:
                text = None
            if text is not None:
                password = text.encode()
        if password is None:
            return None
        return ms_long_term_key(username, realm, password)
