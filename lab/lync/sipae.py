"""[MS-SIPAE] NTLM authentication and message signing, sans-IO, for the lab's FE and clients.

The SIP flavour of NTLM is connectionless (datagram) NTLMv2: the client's second REGISTER
carries an empty ``gssapi-data``, the server answers 401 with its CHALLENGE (no NEGOTIATE
message), the third REGISTER carries the AUTHENTICATE together with the first signature.
From then on every message is signed: the signed text is a list of header fields in angle
brackets (:func:`signature_text`), the signature an NTLM MAC with extended session
security, key exchange and a sequence number that stays at 100 (real servers and sipe both
use 100; the MAC input carries ``cnum``/``snum`` instead).

pyspnego does the NTLM messages (CHALLENGE/AUTHENTICATE packing) and the primitives
(NTOWFv2, the NTLMv2 response, SIGNKEY/SEALKEY, RC4, HMAC-MD5). It has no connectionless
mode: its contexts need a NEGOTIATE message first and keep one RC4 stream per direction,
while datagram NTLM re-keys RC4 for every message from MD5(SealingKey, SeqNum). That
composition (about 20 lines: :func:`_mac` and the server's check of the NTLMv2 proof) is the
hand-written part, kept here.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from spnego._ntlm_raw.crypto import (
    compute_response_v2,
    hmac_md5,
    md5,
    ntowfv1,
    ntowfv2,
    rc4k,
    sealkey,
    signkey,
)
from spnego._ntlm_raw.messages import (
    Authenticate,
    AvId,
    Challenge,
    FileTime,
    NegotiateFlags,
    TargetInfo,
    Version,
)

from sip.message import Request, Response

__all__ = [
    "REALM",
    "AuthError",
    "ClientHandshake",
    "SecurityAssociation",
    "ServerHandshake",
    "auth_params",
    "signature_text",
]

REALM = "SIP Communications Service"
SEQUENCE = 100
"""The MAC sequence number MS-SIPAE NTLM uses for every message."""

# What a connectionless client needs in the CHALLENGE (sipe refuses a challenge without
# SIGN, DATAGRAM, IDENTIFY, KEY_EXCH next to the NTLMv2 basics).
CHALLENGE_FLAGS = (
    NegotiateFlags.unicode | NegotiateFlags.request_target | NegotiateFlags.ntlm
    | NegotiateFlags.always_sign | NegotiateFlags.extended_session_security
    | NegotiateFlags.target_info | NegotiateFlags.version | NegotiateFlags.sign
    | NegotiateFlags.datagram | NegotiateFlags.identity | NegotiateFlags.key_exch
    | NegotiateFlags.key_128 | NegotiateFlags.key_56
)
REQUIRED_FLAGS = (
    NegotiateFlags.unicode | NegotiateFlags.ntlm | NegotiateFlags.extended_session_security
    | NegotiateFlags.sign | NegotiateFlags.datagram | NegotiateFlags.key_exch
)


class AuthError(Exception):
    """The handshake or a signature failed (the message says why)."""


_PARAM = re.compile(r'([\w-]+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')


def auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``NTLM qop="auth", realm="..."`` -> ("NTLM", {"qop": "auth", "realm": ...})."""
    scheme, _, rest = value.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    return scheme, params


def _address_url(value: str) -> str:
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        return value[start + 1:end] if end >= 0 else ""
    return value.split(";", 1)[0].strip()


def _tag(value: str) -> str:
    at = value.find(";tag=")
    return "" if at < 0 else value[at + 5:].split(";", 1)[0].strip()


def signature_text(message: Request | Response, *, protocol: str, rand: str, num: str,
                   realm: str, target: str, version: int = 4) -> str:
    """The text MS-SIPAE signs for ``message`` (version 3+ layout; 1-2 drop To URL and PAI)."""
    headers = message.headers
    from_ = headers.get("From") or ""
    to = headers.get("To") or ""
    cseq = headers.get("CSeq") or ""
    number, _, method = cseq.strip().partition(" ")
    if isinstance(message, Request):
        method = message.method
    pai = headers.get("P-Asserted-Identity") or headers.get("P-Preferred-Identity") or ""
    sip_uri = tel_uri = ""
    for part in re.findall(r"<([^>]*)>", pai):
        if part.lower().startswith("tel:"):
            tel_uri = part
        else:
            sip_uri = part
    expires = headers.get("Expires") or ""
    fields = [protocol, rand, num, realm, target, headers.get("Call-ID") or "", number,
              method.strip(), _address_url(from_), _tag(from_)]
    if version >= 3:
        fields += [_address_url(to), _tag(to), sip_uri, tel_uri]
    else:
        fields += [_tag(to)]
    fields.append(expires)
    text = "".join(f"<{f}>" for f in fields)
    if isinstance(message, Response):
        text += f"<{message.status}>"
    return text


def _mac(flags: int, sign_key: bytes, seal_key: bytes, text: str) -> bytes:
    """NTLMSSP_MESSAGE_SIGNATURE with ESS for a datagram context (RC4 keyed per message)."""
    seq = struct.pack("<I", SEQUENCE)
    checksum = hmac_md5(sign_key, seq + text.encode())[:8]
    if flags & NegotiateFlags.key_exch:
        checksum = rc4k(md5(seal_key + seq), checksum)
    return struct.pack("<I", 1) + checksum + seq


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    """An established MS-SIPAE NTLM context, seen from one side."""

    user: str
    """The account as the client named it (``DOMAIN\\user`` or ``user``)."""
    opaque: str
    target: str
    flags: int
    own_sign: bytes
    own_seal: bytes
    peer_sign: bytes
    peer_seal: bytes
    realm: str = REALM
    version: int = 4

    def sign(self, text: str) -> str:
        """Our signature of ``text``, hex as on the wire."""
        return _mac(self.flags, self.own_sign, self.own_seal, text).hex().upper()

    def verify(self, text: str, signature: str) -> bool:
        """Whether ``signature`` (hex) is the peer's signature of ``text``."""
        try:
            given = bytes.fromhex(signature)
        except ValueError:
            return False
        return hmac.compare_digest(given, _mac(self.flags, self.peer_sign, self.peer_seal,
                                              text))

    def sign_message(self, message: Request | Response, *, rand: str, num: str) -> str:
        """The hex signature of ``message`` with our ``rand``/``num``."""
        return self.sign(signature_text(message, protocol="NTLM", rand=rand, num=num,
                                        realm=self.realm, target=self.target,
                                        version=self.version))


@dataclass(slots=True)
class ServerHandshake:
    """The FE's side of one handshake: :meth:`challenge`, then :meth:`accept`."""

    target: str
    """Our FQDN (``targetname``)."""
    domain: str = "EXAMPLE"
    opaque: str = ""
    _challenge: bytes = b""
    _server_challenge: bytes = b""

    def challenge(self) -> str:
        """The CHALLENGE message, base64 for ``gssapi-data``."""
        self.opaque = os.urandom(4).hex().upper()
        self._server_challenge = os.urandom(8)
        info = TargetInfo()
        host = self.target.split(".", 1)[0].upper()
        info[AvId.nb_domain_name] = self.domain
        info[AvId.nb_computer_name] = host
        info[AvId.dns_domain_name] = self.target.partition(".")[2] or self.target
        info[AvId.dns_computer_name] = self.target
        info[AvId.timestamp] = FileTime.now()
        message = Challenge(flags=CHALLENGE_FLAGS, server_challenge=self._server_challenge,
                            target_name=self.domain, target_info=info,
                            version=Version(10, 0, 17763, 15))
        self._challenge = message.pack()
        return base64.b64encode(self._challenge).decode()

    def accept(self, gssapi_data: str, passwords: Mapping[str, str]) -> SecurityAssociation:
        """Check an AUTHENTICATE (base64) against ``passwords`` (lower-case account names,
        ``user`` and ``user@domain``); the context, or AuthError."""
        if not self._server_challenge:
            raise AuthError("no challenge was sent on this handshake")
        try:
            message = Authenticate.unpack(base64.b64decode(gssapi_data, validate=True))
            user = message.user_name or ""
            domain = message.domain_name or ""
            nt_response = message.nt_challenge_response or b""
        except Exception as error:  # any malformed token is a refusal, never a crash
            raise AuthError(f"malformed AUTHENTICATE message: {error}") from None
        flags = message.flags
        if flags & REQUIRED_FLAGS != REQUIRED_FLAGS:
            raise AuthError(f"NTLM flags {flags:#x} lack connectionless signing")
        if len(nt_response) <= 24:
            raise AuthError("NTLMv1 responses are not accepted")
        account = user.lower()
        password = passwords.get(account)
        if password is None:
            raise AuthError(f"no account {user!r}")
        key = ntowfv2(user, ntowfv1(password), domain)
        proof, blob = nt_response[:16], nt_response[16:]
        if not hmac.compare_digest(proof, hmac_md5(key, self._server_challenge + blob)):
            raise AuthError(f"wrong password for {user!r}")
        session_base_key = hmac_md5(key, proof)
        exported = session_base_key
        if flags & NegotiateFlags.key_exch:
            exported = rc4k(session_base_key, message.encrypted_random_session_key or b"")
        name = f"{domain}\\{user}" if domain else user
        return SecurityAssociation(
            user=name, opaque=self.opaque, target=self.target, flags=flags,
            own_sign=signkey(flags, exported, "accept"),
            own_seal=sealkey(flags, exported, "accept"),
            peer_sign=signkey(flags, exported, "initiate"),
            peer_seal=sealkey(flags, exported, "initiate"))


@dataclass(slots=True)
class ClientHandshake:
    """A client's side: answer a CHALLENGE (base64) with an AUTHENTICATE, as sipe does."""

    user: str
    password: str
    domain: str = ""
    workstation: str = "LAB"

    def authenticate(self, challenge_b64: str, *, opaque: str, target: str,
                     version: int = 4) -> tuple[str, SecurityAssociation]:
        """The AUTHENTICATE (base64) and the client's context."""
        try:
            challenge = Challenge.unpack(base64.b64decode(challenge_b64, validate=True))
        except Exception as error:
            raise AuthError(f"malformed CHALLENGE message: {error}") from None
        server_flags = challenge.flags
        if server_flags & REQUIRED_FLAGS != REQUIRED_FLAGS:
            raise AuthError(f"server NTLM flags {server_flags:#x} lack connectionless signing")
        flags = (server_flags & CHALLENGE_FLAGS) | NegotiateFlags.request_target
        if flags & NegotiateFlags.key_128:
            flags &= ~NegotiateFlags.key_56
        info = challenge.target_info or TargetInfo()
        stamp = info.get(AvId.timestamp) or FileTime.now()
        client_challenge = os.urandom(8)
        key = ntowfv2(self.user, ntowfv1(self.password), self.domain)
        nt_response, lm_response, session_base_key = compute_response_v2(
            key, challenge.server_challenge, client_challenge, stamp, info)
        exported = os.urandom(16)
        encrypted = rc4k(session_base_key, exported)
        message = Authenticate(flags=flags, lm_challenge_response=lm_response,
                               nt_challenge_response=nt_response, domain_name=self.domain,
                               username=self.user, workstation=self.workstation,
                               encrypted_session_key=encrypted)
        context = SecurityAssociation(
            user=self.user, opaque=opaque, target=target, flags=flags,
            own_sign=signkey(flags, exported, "initiate"),
            own_seal=sealkey(flags, exported, "initiate"),
            peer_sign=signkey(flags, exported, "accept"),
            peer_seal=sealkey(flags, exported, "accept"), version=version)
        return base64.b64encode(message.pack()).decode(), context
