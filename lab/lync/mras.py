"""The FE's Media Relay Authentication Service ([MS-AVEDGEA]): TURN credentials for clients.

A client that read ``mrasUri`` from provisioning sends a SERVICE there with a
``credentialsRequest``; the answer names the A/V Edge relays and the account to use on
them. The lab's A/V Edge has static long-term accounts, so MRAS hands out the configured
one (a real MRAS derives a short-lived password from a secret shared with the Edge).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

__all__ = ["CONTENT_TYPE", "CredentialsRequest", "MrasError", "answer", "parse_request"]

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


def parse_request(body: bytes) -> CredentialsRequest:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise MrasError(f"not XML: {error}") from None
    if root.tag != f"{_NS}request":
        raise MrasError(f"root element {root.tag} is not an MRAS request")
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
