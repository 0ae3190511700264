"""The gateway configuration's enums: each member's value is how the file spells it."""

from __future__ import annotations

import enum

__all__ = [
    "Encryption",
    "IceStunDialect",
    "MediaEncryption",
    "MediaLatching",
    "OnMatch",
    "PatternBehavior",
    "PatternType",
    "RuleMode",
    "RuleProtocol",
    "TrustedHostType",
    "ZoneType",
]


class Encryption(enum.Enum):
    """Media encryption policy toward Microsoft."""

    REQUIRED = "required"
    """RequireEncryption: SRTP only (the product's default)."""
    SUPPORTED = "supported"
    """SupportEncryption: SRTP when the other side offers it."""
    OFF = "off"
    """DoNotSupportEncryption: plain RTP."""


class MediaEncryption(enum.Enum):
    """A zone's media encryption mode (the product's names): what the gateway offers the
    zone and what it accepts from it."""

    AUTO = "auto"
    """Follow the peer: answer SRTP to an SDES offer, RTP to RTP; offer RTP."""
    FORCE_ENCRYPTED = "force_encrypted"
    """SDES-SRTP only; an RTP offer from the zone is refused (488)."""
    FORCE_UNENCRYPTED = "force_unencrypted"
    """RTP only; an SRTP offer from the zone is refused (488)."""
    BEST_EFFORT = "best_effort"
    """Offer SDES-SRTP; take whatever the zone offers."""


class IceStunDialect(enum.Enum):
    """The STUN dialect of the ICE legs toward Microsoft (media.ms_stun)."""

    AUTO = "auto"
    """The peer's: [MS-ICE2] version 2 or RFC 5389, learned from its checks (the default)."""
    MS_ICE2 = "ms-ice2"
    """Only [MS-ICE2] version 2 (Lync 2013 / Skype for Business clients, libnice's OC2007R2)."""
    RFC5389 = "rfc5389"
    """Only RFC 5389 (standard ICE agents)."""


class MediaLatching(enum.Enum):
    """How the video leg learns where the endpoint's media comes from (media.rtp_leg)."""

    STRICT = "strict"
    """Latch to a source on the endpoint's SDP address, then only to it (the default)."""
    NAT = "nat"
    """Latch to the first source at all: endpoints behind a NAT (private SDP addresses)."""


class TrustedHostType(enum.Enum):
    """What a trusted host is."""

    MICROSOFT = "microsoft"
    """A Lync / Skype for Business FE, Director or HLB."""


class ZoneType(enum.Enum):
    """Kind of a configured zone (the Microsoft zone is created automatically)."""

    NEIGHBOR = "neighbor"


class PatternType(enum.Enum):
    """How a rule's pattern is compared with the alias."""

    REGEX = "regex"
    """The regular expression must match the whole alias."""
    PREFIX = "prefix"
    """The alias starts with the pattern."""
    SUFFIX = "suffix"
    """The alias ends with the pattern."""
    EXACT = "exact"
    """The alias equals the pattern."""


class PatternBehavior(enum.Enum):
    """What a matching rule does to the alias."""

    LEAVE = "leave"
    REPLACE = "replace"
    STRIP = "strip"
    """Remove the matched prefix or suffix (prefix and suffix patterns only)."""


class OnMatch(enum.Enum):
    """What the search does after a rule matched."""

    STOP = "stop"
    CONTINUE = "continue"


class RuleProtocol(enum.Enum):
    """Protocol of the requests a search rule applies to."""

    ANY = "any"
    SIP = "sip"
    H323 = "h323"


class RuleMode(enum.Enum):
    """Search rule mode."""

    ALIAS_PATTERN_MATCH = "alias pattern match"
    """The rule applies when its pattern matches the alias."""
    ANY_ALIAS = "any alias"
    """The rule applies to every alias (its pattern is not used)."""
