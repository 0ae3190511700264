"""Lync IM sessions: an INVITE whose SDP offers ``m=message <port> sip ...`` ([MS-SIP]).

Lync, Skype for Business and pidgin-sipe start instant messaging with an INVITE whose body
is a session description with one ``message`` media line (``x-ms-message`` from clients
older than OCS 2007) over the ``sip`` protocol, then send the text as MESSAGEs inside that
dialog and close it with BYE. No media flows, so such an INVITE is never a call: the SIP
broker carries the whole dialog to the IM&P nodes (:mod:`gateway.broker`), and without a
broker the gateway refuses it with :data:`NO_BROKER`.
"""

from __future__ import annotations

from sip.errors import ProtocolError
from sip.message import Request

__all__ = ["IM_MEDIA", "NO_BROKER", "is_im_session"]

IM_MEDIA = frozenset({"message", "x-ms-message"})
"""SDP media kinds of a Lync IM session (``x-ms-message``: OCS 2005 and older clients)."""
NO_BROKER = (488, "Not Acceptable Here: IM sessions go to IM&P and the SIP broker is off")
"""The answer to an IM session INVITE when no IM&P node is configured."""


def is_im_session(request: Request) -> bool:
    """Whether ``request`` is an INVITE offering only IM (``m=message ... sip``) media.

    Only the media lines are looked at: a session description that also offers audio or
    video is a call. A body that is not SDP, or not parseable, is not an IM session (the
    call path then answers it as it answers any bad offer).
    """
    if request.method != "INVITE" or not request.body:
        return False
    try:
        content_type = (request.content_type or "").split(";", 1)[0].strip().lower()
    except ProtocolError:
        return False
    if content_type != "application/sdp":
        return False
    kinds: list[tuple[str, str]] = []
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    # A scan of the m= lines, not media.sdp: every INVITE from Microsoft passes here before
    # the call path parses (and judges) its offer in full; this must be cheap and never raise.
    for line in text.splitlines():
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 3:
                return False
            kinds.append((fields[0].lower(), fields[2].lower()))
    return bool(kinds) and all(kind in IM_MEDIA and proto == "sip" for kind, proto in kinds)

