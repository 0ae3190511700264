"""Call routing (sans-IO): transforms, then search rules by priority, into zones.

The alias examined is the Request-URI's ``user@host[:port]``. The first matching
transform (lowest priority number first) rewrites it; then search rules are tried in
priority order (equal priorities in file order). A rule that matches with ``stop`` ends
the search; with ``continue`` its target is kept as a candidate and the search goes on
with the (possibly rewritten) alias. Nothing matched: 404. Max-Forwards 0: 483. A
request carrying one of our own Vias: 482.

Patterns compare case-insensitively; a regex must match the whole alias.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.config import (
    MICROSOFT_ZONE,
    GatewayConfig,
    OnMatch,
    PatternBehavior,
    PatternType,
    RuleMode,
    RuleProtocol,
    SearchRuleConfig,
    TransformConfig,
    compile_regex,
)
from sip.errors import ParseError
from sip.message import Request
from sip.transport import Transport, TransportAddress
from sip.uri import URI, format_host

__all__ = [
    "DEFAULT_MAX_FORWARDS",
    "MICROSOFT_ZONE_HOP_COUNT",
    "LocalIdentity",
    "MatchStep",
    "Pattern",
    "RouteDecision",
    "RouteRefusal",
    "RouteTarget",
    "Router",
    "RoutingResult",
    "StepKind",
    "alias_of",
    "alias_to_uri",
    "is_looped",
]

DEFAULT_MAX_FORWARDS = 70
"""Max-Forwards assumed when a request carries none (RFC 3261 §8.1.1.6)."""
MICROSOFT_ZONE_HOP_COUNT = 15
"""Hop count of the automatic Microsoft zone (the product's zone default)."""


def alias_of(uri: URI) -> str:
    """The alias a Request-URI is routed by: ``user@host[:port]`` (host alone without user)."""
    if uri.opaque is not None:
        return uri.opaque
    host = format_host(uri.host)
    if uri.port is not None:
        host = f"{host}:{uri.port}"
    return host if uri.user is None else f"{uri.user}@{host}"


def alias_to_uri(alias: str, template: URI) -> URI:
    """``template`` with user, host and port taken from a routed alias."""
    user, sep, hostport = alias.rpartition("@")
    text = f"{template.scheme}:{alias}" if sep else f"{template.scheme}:{hostport}"
    try:
        parsed = URI.parse(text)
    except ParseError as exc:
        raise ValueError(f"alias {alias!r} is not a SIP address: {exc.message}") from None
    return replace(template, user=parsed.user, host=parsed.host, port=parsed.port)


# -- patterns ------------------------------------------------------------------------------


class Pattern:
    """A compiled pattern with its behaviour: ``apply(alias)`` -> new alias, or None."""

    __slots__ = ("behavior", "pattern_type", "regex", "replace_with", "text")

    def __init__(
        self,
        pattern_type: PatternType,
        text: str,
        behavior: PatternBehavior = PatternBehavior.LEAVE,
        replace_with: str | None = None,
    ) -> None:
        self.pattern_type = pattern_type
        self.text = text
        self.behavior = behavior
        self.replace_with = replace_with
        if pattern_type is PatternType.REGEX:
            self.regex = compile_regex(text)
        elif pattern_type is PatternType.SUFFIX:
            self.regex = re.compile(re.escape(text) + r"\Z", re.IGNORECASE)
        else:
            self.regex = re.compile(re.escape(text), re.IGNORECASE)

    def apply(self, alias: str) -> str | None:
        """The alias after a match (leave, replace or strip), or None when no match."""
        kind = self.pattern_type
        if kind is PatternType.REGEX or kind is PatternType.EXACT:
            match = self.regex.fullmatch(alias)
        elif kind is PatternType.PREFIX:
            match = self.regex.match(alias)
        else:
            match = self.regex.search(alias)
        if match is None:
            return None
        if self.behavior is PatternBehavior.LEAVE:
            return alias
        new = self.replace_with or ""
        if kind is PatternType.REGEX and self.behavior is PatternBehavior.REPLACE:
            return match.expand(new)
        if kind is PatternType.PREFIX:
            rest = alias[match.end() :]
            return rest if self.behavior is PatternBehavior.STRIP else new + rest
        if kind is PatternType.SUFFIX:
            head = alias[: match.start()]
            return head if self.behavior is PatternBehavior.STRIP else head + new
        return new  # exact + replace


# -- results -------------------------------------------------------------------------------


class StepKind(enum.Enum):
    """What produced a search-history step."""

    TRANSFORM = "transform"
    SEARCH_RULE = "search rule"


@dataclass(frozen=True, slots=True)
class MatchStep:
    """A transform or search rule that matched (the search history shown in /status)."""

    kind: StepKind
    """Transform or search rule."""
    name: str
    """Rule or transform name."""
    priority: int
    """Its priority."""
    alias_before: str
    """Alias it was given."""
    alias_after: str
    """Alias it produced."""
    target: str | None = None
    """Search rule: the zone it sends to."""
    on_match: OnMatch | None = None
    """Search rule: stop or continue."""


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One place to send the request."""

    zone: str
    """Zone name (a neighbor zone or the Microsoft zone)."""
    alias: str
    """Alias to put in the Request-URI there."""
    rule: str
    """Search rule that chose it."""
    max_forwards: int
    """Max-Forwards for the outgoing request (decremented, capped by the zone hop count)."""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes: try ``targets`` in order until one answers."""

    original_alias: str
    """Alias of the Request-URI as received."""
    alias: str
    """Alias after transforms (what the search started from)."""
    targets: tuple[RouteTarget, ...]
    """Candidates in search order; more than one only through ``continue`` rules."""
    history: tuple[MatchStep, ...]
    """Transforms and rules that matched, in order."""

    @property
    def zone(self) -> str:
        """The first target's zone."""
        return self.targets[0].zone

    @property
    def target_alias(self) -> str:
        """The first target's alias."""
        return self.targets[0].alias


@dataclass(frozen=True, slots=True)
class RouteRefusal:
    """A request that cannot be routed, with the SIP response to send."""

    status: int
    """404, 482 or 483."""
    reason: str
    """Reason phrase (names the alias for 404)."""
    alias: str
    """Alias examined (after transforms when they ran)."""
    history: tuple[MatchStep, ...] = ()
    """Transforms and rules that matched before the search gave up."""


RoutingResult = RouteDecision | RouteRefusal


# -- loops ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """How our own Via entries look, to recognise a request that came back to us."""

    sent_by: frozenset[tuple[str, int]]
    """(host, port) pairs we write as Via sent-by (our listeners)."""
    branch_prefix: str = ""
    """Prefix of every branch we generate (after the magic cookie); "" to check sent-by only."""

    @classmethod
    def from_addresses(
        cls, addresses: Iterable[TransportAddress], branch_prefix: str = ""
    ) -> LocalIdentity:
        """Identity from our listen addresses."""
        return cls(frozenset((a.host.lower(), a.port) for a in addresses), branch_prefix)


_MAGIC_COOKIE = "z9hG4bK"


def is_looped(request: Request, identity: LocalIdentity) -> bool:
    """True when a Via of ``request`` is one we wrote: the request has looped back (482).

    A Via is ours when its sent-by is one of our addresses or its branch starts with our
    branch prefix. A request whose Vias cannot be parsed is not judged here.
    """
    try:
        vias = request.via
    except ParseError:
        return False
    prefix = identity.branch_prefix
    if prefix and not prefix.startswith(_MAGIC_COOKIE):
        prefix = _MAGIC_COOKIE + prefix
    for via in vias:
        try:
            transport = Transport.parse(via.transport)
            default_port = transport.default_port
        except ValueError:
            default_port = 5060
        port = via.port if via.port is not None else default_port
        if (via.host.lower(), port) in identity.sent_by:
            return True
        branch = via.branch
        if prefix and branch is not None and branch.startswith(prefix):
            return True
    return False


# -- the router ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Transform:
    config: TransformConfig
    pattern: Pattern


@dataclass(frozen=True, slots=True)
class _Rule:
    config: SearchRuleConfig
    pattern: Pattern | None
    """None for mode 'any alias'."""


class Router:
    """Routes aliases with a configuration's transforms, search rules and zones."""

    def __init__(self, config: GatewayConfig) -> None:
        # sorted() is stable: equal priorities keep file order.
        transforms = sorted((t for t in config.transforms if t.enabled), key=lambda t: t.priority)
        self._transforms = tuple(
            _Transform(t, Pattern(t.pattern_type, t.pattern, t.behavior, t.replace))
            for t in transforms
        )
        rules = sorted((r for r in config.search_rules if r.enabled), key=lambda r: r.priority)
        self._rules = tuple(
            _Rule(
                r,
                Pattern(r.pattern_type, r.pattern, r.behavior, r.replace)
                if r.mode is RuleMode.ALIAS_PATTERN_MATCH
                else None,
            )
            for r in rules
        )
        self._hop_counts = {zone.name: zone.hop_count for zone in config.zones}
        self._hop_counts[MICROSOFT_ZONE] = MICROSOFT_ZONE_HOP_COUNT

    def transform(self, alias: str) -> tuple[str, MatchStep | None]:
        """Apply the first matching transform (the product applies only one)."""
        for item in self._transforms:
            result = item.pattern.apply(alias)
            if result is not None:
                step = MatchStep(
                    StepKind.TRANSFORM, item.config.name, item.config.priority, alias, result
                )
                return result, step
        return alias, None

    def route(
        self,
        alias: str,
        *,
        source_zone: str | None = None,
        protocol: RuleProtocol = RuleProtocol.SIP,
        max_forwards: int | None = None,
    ) -> RoutingResult:
        """Route an alias.

        ``source_zone`` is the zone the request came from (None: not from a zone; only
        rules with source ``any`` apply). ``max_forwards`` is the received value.
        """
        if max_forwards is not None and max_forwards <= 0:
            return RouteRefusal(483, "Too Many Hops", alias)
        received = DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards
        current, step = self.transform(alias)
        history: list[MatchStep] = [] if step is None else [step]
        after_transform = current
        targets: list[RouteTarget] = []
        for item in self._rules:
            rule = item.config
            if rule.source != "any" and rule.source != source_zone:
                continue
            if rule.protocol is not RuleProtocol.ANY and rule.protocol is not protocol:
                continue
            result = current if item.pattern is None else item.pattern.apply(current)
            if result is None:
                continue
            history.append(
                MatchStep(
                    StepKind.SEARCH_RULE,
                    rule.name,
                    rule.priority,
                    current,
                    result,
                    rule.target,
                    rule.on_match,
                )
            )
            hop_count = self._hop_counts[rule.target]
            target = RouteTarget(rule.target, result, rule.name, min(received - 1, hop_count))
            if all((t.zone, t.alias) != (target.zone, target.alias) for t in targets):
                targets.append(target)
            current = result
            if rule.on_match is OnMatch.STOP:
                break
        if not targets:
            return RouteRefusal(
                404,
                f"Not Found: no search rule matches {after_transform}",
                after_transform,
                tuple(history),
            )
        return RouteDecision(alias, after_transform, tuple(targets), tuple(history))

    def route_request(
        self,
        request: Request,
        *,
        source_zone: str | None = None,
        identity: LocalIdentity | None = None,
    ) -> RoutingResult:
        """Route a SIP request: loop check (482), Max-Forwards (483), then :meth:`route`."""
        alias = alias_of(request.uri)
        if identity is not None and is_looped(request, identity):
            return RouteRefusal(482, "Loop Detected", alias)
        try:
            max_forwards = request.max_forwards
        except ParseError:
            max_forwards = None
        return self.route(
            alias, source_zone=source_zone, protocol=RuleProtocol.SIP, max_forwards=max_forwards
        )
