"""What a refused or failed call answers, and why: the mapping from the errors call set-up
may legitimately meet to SIP statuses (pure functions, no I/O)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from gateway.metrics import RefusalReason
from gateway.sdp_bridge import BadAnswer, TooManyMediaLines
from media.ms_dialect import EncryptionMismatch
from media.port_pool import PortPoolExhausted
from media.rewrite import NoCommonCodec
from sip.errors import ProtocolError, RemoteProtocolError
from sip.headers import Address
from sip.message import Response
from sip.uri import Params

__all__ = [
    "EXPECTED_ERRORS",
    "ICE_FAILURE_TEXT",
    "Refusal",
    "callee_final",
    "callee_refusal",
    "media_refusal",
    "relayed_headers",
    "rewrite_ip_from",
    "sdp_refusal",
    "status_of",
]

ICE_FAILURE_TEXT = "failed to get media connectivity"
"""The Reason text of the BYEs sent when ICE toward Microsoft fails."""
EXPECTED_ERRORS = (ProtocolError, OSError)
"""What a call's set-up and offer/answer may legitimately raise (bad or refused SDP, no port,
a socket error), each mapped to its SIP status by :func:`media_refusal`. Anything else is a
coding error: logged with its traceback and the call failed once with 500, never turned
into a quiet 488."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A final error for a call (or a new INVITE refused before anything was set up)."""

    status: int
    reason: str
    """Reason phrase (says why)."""
    metric: RefusalReason | None = None
    """Counter to bump."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers (Retry-After)."""


def rewrite_ip_from(address: Address, domain: str) -> Address:
    """A From holding only an IP address (``<sip:10.10.2.1>``) becomes routable:
    the IP is kept as the user part, at our SIP domain (``sip:10.10.2.1@video.example.com``).

    Microsoft answers 488 to a From without a user@domain; keeping the IP as the user
    still shows the lab engineer which device called.
    """
    uri = address.uri
    if uri.user is not None or not uri.host:
        return address
    try:
        ipaddress.ip_address(uri.host.strip("[]"))
    except ValueError:
        return address
    new_uri = replace(uri, user=uri.host.strip("[]"), host=domain, port=None, params=Params())
    return replace(address, uri=new_uri)


def status_of(error: ProtocolError, default: int) -> int:
    return error.status_hint if 400 <= error.status_hint <= 699 else default


def sdp_refusal(error: ProtocolError) -> Refusal:
    """The refusal for an INVITE body that cannot be used."""
    if isinstance(error, TooManyMediaLines):
        return Refusal(488, error.message, RefusalReason.TOO_MANY_MEDIA_LINES)
    return Refusal(status_of(error, 400), error.message, RefusalReason.BAD_SDP)


def media_refusal(error: BaseException) -> Refusal:
    """The refusal for a failure while setting up or rewriting media."""
    if isinstance(error, TooManyMediaLines):
        return sdp_refusal(error)
    if isinstance(error, PortPoolExhausted):
        return Refusal(503, f"Service Unavailable: {error.message}",
                       RefusalReason.PORT_POOL_EXHAUSTED)
    if isinstance(error, EncryptionMismatch):
        return Refusal(488, EncryptionMismatch.reason_phrase, RefusalReason.ENCRYPTION_MISMATCH)
    if isinstance(error, NoCommonCodec):
        return Refusal(488, f"Not Acceptable Here: {error.message}",
                       RefusalReason.NO_COMMON_CODEC)
    if isinstance(error, ProtocolError):
        return Refusal(status_of(error, 500), error.message, RefusalReason.MEDIA_SETUP_FAILED)
    if isinstance(error, OSError):
        return Refusal(503, f"Service Unavailable: media ports: {error.strerror or error}",
                       RefusalReason.MEDIA_SETUP_FAILED)
    return Refusal(500, "Server Internal Error: media set-up failed",
                   RefusalReason.MEDIA_SETUP_FAILED)


def callee_refusal(error: BaseException) -> Refusal:
    """The caller's answer when the callee's 2xx cannot be relayed: the callee's fault
    (an answer breaking RFC 3264, an SDP we cannot parse) is a 502 naming it, never the
    400 the caller would read as its own; codecs and encryption keep their 488."""
    if isinstance(error, BadAnswer):
        return Refusal(502, error.message, RefusalReason.MEDIA_SETUP_FAILED)
    refusal = media_refusal(error)
    if isinstance(error, RemoteProtocolError) and refusal.status < 500 and refusal.status != 488:
        return Refusal(502, f"Bad Gateway: the called side's answer is unusable: "
                            f"{error.message}", RefusalReason.MEDIA_SETUP_FAILED)
    return refusal


def relayed_headers(response: Response) -> tuple[tuple[str, str], ...]:
    """Headers of a final error worth passing on (Retry-After, Warning, Reason)."""
    keep = []
    for name in ("Retry-After", "Warning", "Reason"):
        value = response.headers.get(name)
        if value:
            keep.append((name, value))
    return tuple(keep)


Header = tuple[str, str]


def callee_final(status: int, reason: str, headers: tuple[Header, ...]
                 ) -> tuple[int, str, tuple[Header, ...]]:
    """The callee's final error as the caller gets it. A B2BUA ends the callee's
    transaction and starts its own answer, so what only makes sense hop by hop is
    translated, the rest relayed as is (486, 404, 6xx, with their Reason and Warning):

    - 503 (and its Retry-After) would say that the *gateway* is overloaded, and a caller
      such as the Lync FE would try another gateway or avoid this one (RFC 3261 §21.5.4);
      like a proxy (§16.7 step 6) we answer 500 naming the callee's 503;
    - a 3xx cannot be followed by the caller: its Contact is the other network's, which a
      B2BUA does not show; the caller gets 480 naming the redirect (not followed here);
    - 401/407 challenge the gateway's INVITE, which the caller has no credential for: 403.
    """
    kept = tuple(h for h in headers if h[0].lower() != "retry-after")
    if status == 503:
        return 500, f"Server Internal Error: the called side answered 503 {reason}", kept
    if 300 <= status < 400:
        return 480, (f"Temporarily Unavailable: the called side redirected the call "
                     f"({status} {reason}), which the gateway does not follow"), kept
    if status in (401, 407):
        return 403, (f"Forbidden: the called side challenged the gateway ({status} "
                     f"{reason}); no credentials are configured for it"), kept
    return status, reason, headers
