"""Option tags and method lists (RFC 3261 §19.2, §20.5, §20.32, §20.37, §20.40): what a
message requires, supports and allows, read without splitting inside quotes."""

from __future__ import annotations

from collections.abc import Iterable

from sip.message import Request, Response

__all__ = [
    "TAG_100REL",
    "TAG_TIMER",
    "allows",
    "option_tags",
    "requires",
    "supports",
    "unsupported_tags",
]

TAG_100REL = "100rel"
"""RFC 3262 reliable provisional responses."""
TAG_TIMER = "timer"
"""RFC 4028 session timers."""


def option_tags(message: Request | Response, header: str) -> frozenset[str]:
    """The option tags of every ``header`` line (Require, Supported, Proxy-Require,
    Unsupported), lower-cased: option tags compare case-insensitively (§19.2)."""
    return frozenset(
        tag.strip().lower() for tag in message.headers.getlist(header) if tag.strip()
    )


def requires(message: Request | Response, tag: str) -> bool:
    """True when ``tag`` is in the message's ``Require``."""
    return tag.lower() in option_tags(message, "Require")


def supports(message: Request | Response, tag: str) -> bool:
    """True when the sender declared ``tag`` in ``Supported`` or ``Require`` (requiring an
    extension implies supporting it)."""
    tag = tag.lower()
    return tag in option_tags(message, "Supported") or tag in option_tags(message, "Require")


def unsupported_tags(message: Request, supported: Iterable[str]) -> list[str]:
    """``Require`` tags not in ``supported``, in the request's order and spelling (the
    ``Unsupported`` of a 420, §8.2.2.3)."""
    ours = {tag.lower() for tag in supported}
    out: list[str] = []
    for tag in message.headers.getlist("Require"):
        tag = tag.strip()
        if tag and tag.lower() not in ours and tag not in out:
            out.append(tag)
    return out


def allows(message: Request | Response, method: str) -> bool | None:
    """Whether the sender's ``Allow`` lists ``method`` (methods are case-sensitive, §7.1);
    None when the message has no ``Allow``, which says nothing either way (§20.5)."""
    if "Allow" not in message.headers:
        return None
    return method in {m.strip() for m in message.headers.getlist("Allow")}
