"""The FE's Media Relay Authentication Service ([MS-AVEDGEA]): TURN credentials for clients.

A client that read ``mrasUri`` from provisioning sends a SERVICE there with a
``credentialsRequest``; the answer names the A/V Edge relays and the account to use on
them. As a real MRAS, the FE derives time-limited credentials from a key it shares with the
A/V Edge (``turn.auth.mras_credentials``: the username carries its expiry, the password is a
MAC of it), valid for the ``duration`` asked (minutes, at most 8 hours); the Edge's MS-TURN
checks them with the same key, keeping no per-user table. Without a key the configured
static account is handed out (the lab's older behaviour, for standard TURN clients).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from turn.auth import mras_credentials

__all__ = ["CONTENT_TYPE", "CredentialsRequest", "MrasAnswer", "MrasError", "Relay", "answer",
           "answer_with_key", "parse_answer", "parse_request", "request_body"]

CONTENT_TYPE = "application/msrtc-media-relay-auth+xml"
_NS = "{http://schemas.microsoft.com/2006/09/sip/mrasp}"


class MrasError(ValueError):
    """A request body MRAS cannot answer (the message says why)."""


@dataclass(frozen=True, slots=True)
class CredentialsRequest:
    request_id: str
    credentials_request_id: str
    identity: str
    location: str
    """"internet" (through the Edge) or "intranet"."""
    duration: int
    sender: str
    to: str


def _root(body: bytes, kind: str) -> ET.Element:
    """The MRAS ``request`` or ``response`` element of ``body``; MrasError otherwise."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise MrasError(f"not XML: {error}") from None
    if root.tag != f"{_NS}{kind}":
        raise MrasError(f"root element {root.tag} is not an MRAS {kind}")
    return root


def parse_request(body: bytes) -> CredentialsRequest:
    root = _root(body, "request")
    request = root.find(f"{_NS}credentialsRequest")
    if request is None:
        raise MrasError("no credentialsRequest")
    duration = (request.findtext(f"{_NS}duration") or "480").strip()
    if not duration.isdigit():
        raise MrasError(f"duration {duration!r} is not a number of minutes")
    return CredentialsRequest(
        request_id=root.get("requestID", ""),
        credentials_request_id=request.get("credentialsRequestID", ""),
        identity=(request.findtext(f"{_NS}identity") or "").strip(),
        location=(request.findtext(f"{_NS}location") or "intranet").strip(),
        duration=int(duration), sender=root.get("from", ""), to=root.get("to", ""))


@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    udp_port: int
    tcp_port: int


def answer_with_key(request: CredentialsRequest, *, secret: str, identity: str, now: float,
                    relays: tuple[Relay, ...], max_duration: int = 480) -> str:
    """The response body with credentials issued under ``secret`` for ``identity`` (the
    signed-in user), valid ``min(asked, max_duration)`` minutes from ``now``."""
    duration = max(1, min(request.duration, max_duration))
    issued = mras_credentials(secret, identity, now, duration * 60)
    return answer(request, username=issued.username, password=issued.password,
                  relays=relays, max_duration=duration)


def answer(request: CredentialsRequest, *, username: str, password: str,
           relays: tuple[Relay, ...], max_duration: int = 480) -> str:
    """The response body: credentials valid ``min(asked, max_duration)`` minutes."""
    duration = min(request.duration, max_duration)
    relay_list = "".join(
        f"<mediaRelay><location>{escape(request.location)}</location>"
        f"<hostName>{escape(r.host)}</hostName><udpPort>{r.udp_port}</udpPort>"
        f"<tcpPort>{r.tcp_port}</tcpPort></mediaRelay>" for r in relays)
    return (
        '<response xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"'
        f" requestID={quoteattr(request.request_id)} version=\"1.0\" serverVersion=\"2.0\""
        f" to={quoteattr(request.sender)} from={quoteattr(request.to)}"
        ' reasonPhrase="OK">'
        f"<credentialsResponse credentialsRequestID={quoteattr(request.credentials_request_id)}>"
        f"<credentials><username>{escape(username)}</username>"
        f"<password>{escape(password)}</password><duration>{duration}</duration>"
        "</credentials>"
        f"<mediaRelayList>{relay_list}</mediaRelayList>"
        "</credentialsResponse></response>")


# -- the client's side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MrasAnswer:
    """What a client reads from an MRAS response."""

    username: str
    """As sent (base64 for MRAS-issued credentials; clients decode it before use)."""
    password: str
    duration: int
    """Minutes the credentials are valid."""
    relays: tuple[Relay, ...]


def request_body(*, request_id: str, sender: str, mras_uri: str, identity: str,
                 location: str, duration: int = 480) -> str:
    """A client's credentialsRequest ([MS-AVEDGEA] 2.2.1), as Lync clients and sipe send it
    in a SERVICE to the ``mrasUri`` of provisioning."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<request xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp"'
        f' requestID={quoteattr(request_id)} version="1.0" to={quoteattr(mras_uri)}'
        f' from={quoteattr(sender)}>'
        f"<credentialsRequest credentialsRequestID={quoteattr(request_id)}>"
        f"<identity>{escape(identity)}</identity><location>{escape(location)}</location>"
        f"<duration>{duration}</duration></credentialsRequest></request>")


def parse_answer(body: bytes) -> MrasAnswer:
    """The credentials and relays of an MRAS response; MrasError says what is missing."""
    root = _root(body, "response")
    credentials = root.find(f"{_NS}credentialsResponse/{_NS}credentials")
    if credentials is None:
        raise MrasError(f"no credentials (reasonPhrase {root.get('reasonPhrase')!r})")
    username = (credentials.findtext(f"{_NS}username") or "").strip()
    password = (credentials.findtext(f"{_NS}password") or "").strip()
    duration = (credentials.findtext(f"{_NS}duration") or "").strip()
    if not username or not password or not duration.isdigit():
        raise MrasError("credentials lack a username, password or duration")
    relays = []
    for relay in root.iterfind(f"{_NS}credentialsResponse/{_NS}mediaRelayList/{_NS}mediaRelay"):
        host = (relay.findtext(f"{_NS}hostName") or "").strip()
        udp = (relay.findtext(f"{_NS}udpPort") or "0").strip()
        tcp = (relay.findtext(f"{_NS}tcpPort") or "0").strip()
        if host and udp.isdigit() and tcp.isdigit():
            relays.append(Relay(host, int(udp), int(tcp)))
    if not relays:
        raise MrasError("no mediaRelay with a hostName and ports")
    return MrasAnswer(username, password, int(duration), tuple(relays))
