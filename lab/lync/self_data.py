"""What the FE tells a signed-in user about themself: the bodies of the self-subscriptions.

A Lync client (and sipe) subscribes to its own AOR for provisioning (one-off, ``Expires:
0``), its roaming contacts, ACL, categories/containers/subscribers, and its pending
watchers. Bodies follow [MS-SIP] / [MS-PRES] as far as clients read them: the lab keeps no
contact lists, so they are the empty documents a new user gets, and provisioning-v2 carries
the server configuration clients act on (the A/V encryption policy and the MRAS URI).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from xml.sax.saxutils import escape

__all__ = ["SELF_EVENTS", "AvEncryption", "SelfDocument", "self_document"]


class AvEncryption(enum.Enum):
    """``ucPC2PCAVEncryption``: the A/V encryption policy clients must follow."""

    REQUIRED = "RequireEncryption"
    SUPPORTED = "SupportEncryption"
    NOT_SUPPORTED = "DoNotSupportEncryption"


@dataclass(frozen=True, slots=True)
class SelfDocument:
    """One self-subscription's state: its MIME type, body and whether it is one-off."""

    content_type: str
    body: str
    one_off: bool = False
    """Provisioning: answered once, subscription terminated."""


SELF_EVENTS = (
    "vnd-microsoft-provisioning-v2",
    "vnd-microsoft-roaming-contacts",
    "vnd-microsoft-roaming-ACL",
    "vnd-microsoft-roaming-self",
    "presence.wpending",
)
"""What the FE answers itself (and offers in the REGISTER 200's Allow-Events)."""


def self_document(event: str, aor: str, *, encryption: AvEncryption, mras_uri: str,
                  focus_factory_uri: str = "") -> SelfDocument | None:
    """The first notification body of ``event`` for user ``aor`` (None: not ours)."""
    uri = escape(f"sip:{aor}", {'"': "&quot;"})
    match event.lower():
        case "vnd-microsoft-provisioning-v2":
            focus = (f"<focusFactoryUri>{escape(focus_factory_uri)}</focusFactoryUri>"
                     if focus_factory_uri else "")
            body = (
                '<provisionGroupList xmlns="http://schemas.microsoft.com/2006/09/sip/'
                'provisiongrouplist">'
                f'<provisionGroup name="ServerConfiguration">{focus}'
                f"<mrasUri>{escape(mras_uri)}</mrasUri>"
                f"<ucPC2PCAVEncryption>{encryption.value}</ucPC2PCAVEncryption>"
                "<ucPortRangeEnabled>false</ucPortRangeEnabled>"
                "</provisionGroup>"
                '<provisionGroup name="ucPolicy"><enableCallTransfer>true</enableCallTransfer>'
                "</provisionGroup>"
                "</provisionGroupList>")
            return SelfDocument("application/vnd-microsoft-roaming-provisioning-v2+xml", body,
                                one_off=True)
        case "vnd-microsoft-roaming-contacts":
            body = ('<contactList deltaNum="1" xmlns="http://schemas.microsoft.com/2006/09/'
                    'sip/roaming-contacts">'
                    '<group id="1" name="~" externalURI=""/></contactList>')
            return SelfDocument("application/vnd-microsoft-roaming-contacts+xml", body)
        case "vnd-microsoft-roaming-acl":
            body = ('<acl deltaNum="1" xmlns="http://schemas.microsoft.com/2006/09/sip/'
                    'roaming-acls"/>')
            return SelfDocument("application/vnd-microsoft-roaming-acls+xml", body)
        case "vnd-microsoft-roaming-self":
            body = ('<roamingData xmlns="http://schemas.microsoft.com/2006/09/sip/roaming-self"'
                    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                    '<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories"'
                    f' uri="{uri}"/>'
                    '<containers xmlns="http://schemas.microsoft.com/2006/09/sip/'
                    'container-management"/>'
                    '<subscribers xmlns="http://schemas.microsoft.com/2006/09/sip/'
                    'presence-subscribers"/>'
                    "</roamingData>")
            return SelfDocument("application/vnd-microsoft-roaming-self+xml", body)
        case "presence.wpending":
            body = ('<watchers xmlns="http://schemas.microsoft.com/2006/09/sip/'
                    'presence-wpending"/>')
            return SelfDocument("text/xml+msrtc.wpending", body)
    return None
