"""Routing: transforms, search rules, zones, 404/482/483 refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as cfg
from gateway.config import MICROSOFT_ZONE, OnMatch, PatternBehavior, PatternType, RuleProtocol
from gateway.routing import (
    LocalIdentity,
    Pattern,
    RouteDecision,
    Router,
    RouteRefusal,
    RoutingResult,
    StepKind,
    alias_of,
    alias_to_uri,
    is_looped,
)
from sip.message import Headers, Request
from sip.transport import Transport, TransportAddress
from sip.uri import URI

LAB = Path(__file__).parent.parent / "data" / "gateway" / "lab.toml"


@pytest.fixture(scope="module")
def lab_router() -> Router:
    return Router(cfg.load(LAB, environ={}))


def decision(result: RoutingResult) -> RouteDecision:
    assert isinstance(result, RouteDecision), result
    return result


def refusal(result: RoutingResult) -> RouteRefusal:
    assert isinstance(result, RouteRefusal), result
    return result


def router(text: str) -> Router:
    zones = """
    [[zones]]
    name = "A"
    peers = ["127.0.3.1"]
    [[zones]]
    name = "B"
    peers = ["127.0.3.2"]
    hop_count = 5
    """
    return Router(cfg.loads(zones + text))


def request(uri: str, *, vias: list[str] | None = None, max_forwards: int | None = 70) -> Request:
    headers = Headers()
    for via in vias or ["SIP/2.0/TLS 127.0.1.1:5061;branch=z9hG4bKfe01"]:
        headers.add("Via", via)
    if max_forwards is not None:
        headers.add("Max-Forwards", str(max_forwards))
    headers.add("From", "<sip:alice.parkes@example.com>;tag=1")
    headers.add("To", f"<{uri}>")
    headers.add("Call-ID", "c1@127.0.1.1")
    headers.add("CSeq", "1 INVITE")
    return Request("INVITE", URI.parse(uri), headers)


# -- the lab's rules -----------------------------------------------------------------------


def test_lab_transform_strips_the_port_then_routes_to_cucm(lab_router: Router) -> None:
    result = decision(lab_router.route("3001@video.example.com:5060"))
    assert result.original_alias == "3001@video.example.com:5060"
    assert result.alias == "3001@video.example.com"
    assert result.zone == "CUCM Neighbor"
    assert result.target_alias == "3001@video.example.com"
    transform, rule = result.history
    assert transform.kind is StepKind.TRANSFORM and transform.priority == 5
    assert transform.alias_after == "3001@video.example.com"
    assert (rule.kind, rule.name, rule.target) == (
        StepKind.SEARCH_RULE,
        "Route to CUCM",
        "CUCM Neighbor",
    )


def test_lab_microsoft_users_go_to_the_microsoft_zone(lab_router: Router) -> None:
    result = decision(lab_router.route("alice.parkes@example.com"))
    assert result.zone == MICROSOFT_ZONE
    assert [s.name for s in result.history] == ["To Microsoft environment"]


def test_lab_regex_must_match_the_whole_alias(lab_router: Router) -> None:
    # ".+@example\.com" must not match a video-domain alias by a partial match.
    refused = refusal(lab_router.route("4001@video.example.com"))
    assert refused.status == 404
    assert "4001@video.example.com" in refused.reason
    assert refusal(lab_router.route("30011@video.example.com")).status == 404
    assert refusal(lab_router.route("x3001@video.example.com")).status == 404


def test_aliases_compare_case_insensitively(lab_router: Router) -> None:
    assert decision(lab_router.route("David.Jones@EXAMPLE.com")).zone == MICROSOFT_ZONE


def test_route_request_uses_the_request_uri(lab_router: Router) -> None:
    result = decision(lab_router.route_request(request("sip:3001@video.example.com:5060")))
    assert result.zone == "CUCM Neighbor"
    assert result.targets[0].max_forwards == 15  # min(70 - 1, hop_count 15)


# -- aliases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "alias"),
    [
        ("sip:3001@video.example.com", "3001@video.example.com"),
        ("sip:3001@video.example.com:5060;transport=tcp", "3001@video.example.com:5060"),
        ("sips:alice.parkes@example.com", "alice.parkes@example.com"),
        ("sip:127.0.3.1:5060", "127.0.3.1:5060"),
        ("sip:bob@[::1]:5060", "bob@[::1]:5060"),
        ("tel:+15551234", "+15551234"),
    ],
)
def test_alias_of(uri: str, alias: str) -> None:
    assert alias_of(URI.parse(uri)) == alias


def test_alias_to_uri_keeps_scheme_and_params() -> None:
    template = URI.parse("sip:3001@video.example.com:5060;user=phone")
    uri = alias_to_uri("3001@cucm.video.example.com", template)
    assert str(uri) == "sip:3001@cucm.video.example.com;user=phone"
    with pytest.raises(ValueError):
        alias_to_uri("a b@@", template)


# -- patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "pattern", "behavior", "replace", "alias", "expected"),
    [
        (
            PatternType.REGEX,
            r"(3\d{3})@video\.example\.com",
            "leave",
            None,
            "3001@video.example.com",
            "3001@video.example.com",
        ),  # noqa: E501
        (
            PatternType.REGEX,
            r"(3\d{3})@video\.example\.com",
            "replace",
            r"\1@cucm.lab",
            "3001@video.example.com",
            "3001@cucm.lab",
        ),  # noqa: E501
        (
            PatternType.REGEX,
            r"(.+):.*",
            "replace",
            r"\1",
            "3001@video.example.com:5060",
            "3001@video.example.com",
        ),  # noqa: E501
        (PatternType.REGEX, r"3\d{3}", "leave", None, "3001@video.example.com", None),
        (
            PatternType.PREFIX,
            "9",
            "strip",
            None,
            "93001@video.example.com",
            "3001@video.example.com",
        ),  # noqa: E501
        (PatternType.PREFIX, "9", "replace", "0", "93001@x", "03001@x"),
        (PatternType.PREFIX, "9", "leave", None, "3001@x", None),
        (PatternType.SUFFIX, "@video.example.com", "strip", None, "3001@video.example.com", "3001"),  # noqa: E501
        (
            PatternType.SUFFIX,
            "@VIDEO.example.com",
            "replace",
            "@example.com",
            "a@video.example.com",
            "a@example.com",
        ),  # noqa: E501
        (PatternType.SUFFIX, ".com", "leave", None, "a@b.org", None),
        (PatternType.EXACT, "3001@x", "replace", "3002@y", "3001@X", "3002@y"),
        (PatternType.EXACT, "3001@x", "leave", None, "3001@xy", None),
        (PatternType.PREFIX, "a.b", "leave", None, "axb", None),  # a literal, not a regex
    ],
)
def test_pattern(
    kind: PatternType,
    pattern: str,
    behavior: str,
    replace: str | None,
    alias: str,
    expected: str | None,
) -> None:
    assert Pattern(kind, pattern, PatternBehavior(behavior), replace).apply(alias) == expected


# -- search order --------------------------------------------------------------------------


def test_lower_priority_number_first_and_equal_keeps_file_order() -> None:
    r = router(
        """
        [[search_rules]]
        name = "late"
        priority = 200
        pattern = "3"
        target = "A"
        [[search_rules]]
        name = "first of 100"
        pattern = "3"
        target = "B"
        [[search_rules]]
        name = "second of 100"
        pattern = "3"
        target = "A"
        """
    )
    result = decision(r.route("3001@x"))
    assert result.zone == "B"
    assert [s.name for s in result.history] == ["first of 100"]


def test_continue_carries_the_replaced_alias_and_keeps_candidates() -> None:
    r = router(
        r"""
        [[search_rules]]
        name = "add domain"
        priority = 10
        pattern_type = "regex"
        pattern = '(\d+)'
        behavior = "replace"
        replace = '\1@video.example.com'
        on_match = "continue"
        target = "A"
        [[search_rules]]
        name = "not reached by the original alias"
        priority = 20
        pattern_type = "suffix"
        pattern = "@video.example.com"
        target = "B"
        [[search_rules]]
        name = "after stop"
        priority = 30
        pattern = "3"
        target = "A"
        """
    )
    result = decision(r.route("3001"))
    assert [(t.zone, t.alias, t.rule) for t in result.targets] == [
        ("A", "3001@video.example.com", "add domain"),
        ("B", "3001@video.example.com", "not reached by the original alias"),
    ]
    assert [s.on_match for s in result.history] == [OnMatch.CONTINUE, OnMatch.STOP]
    assert result.history[0].alias_before == "3001"


def test_continue_without_a_later_match_still_routes() -> None:
    r = router(
        """
        [[search_rules]]
        name = "try A"
        pattern = "3"
        on_match = "continue"
        target = "A"
        """
    )
    assert [t.zone for t in decision(r.route("3001@x")).targets] == ["A"]


def test_only_the_first_matching_transform_applies() -> None:
    r = router(
        """
        [[transforms]]
        priority = 2
        pattern = "9"
        behavior = "strip"
        [[transforms]]
        priority = 1
        pattern = "99"
        behavior = "replace"
        replace = "8"
        [[transforms]]
        priority = 3
        pattern = "disabled"
        behavior = "strip"
        enabled = false
        [[search_rules]]
        name = "all"
        mode = "any alias"
        target = "A"
        """
    )
    result = decision(r.route("993001"))
    assert result.alias == "83001"
    assert [s.name for s in result.history] == ["transform 1", "all"]
    assert decision(r.route("disabled3")).alias == "disabled3"


def test_disabled_rules_never_match() -> None:
    r = router(
        """
        [[search_rules]]
        name = "off"
        pattern = "3"
        target = "A"
        enabled = false
        """
    )
    assert refusal(r.route("3001@x")).status == 404


def test_source_and_protocol_filter_rules() -> None:
    r = router(
        """
        [[search_rules]]
        name = "from A only"
        priority = 1
        source = "A"
        pattern = "3"
        target = "B"
        [[search_rules]]
        name = "h323 only"
        priority = 2
        protocol = "h323"
        pattern = "3"
        target = "B"
        [[search_rules]]
        name = "any"
        priority = 3
        pattern = "3"
        target = "A"
        """
    )
    assert decision(r.route("3001@x", source_zone="A")).targets[0].rule == "from A only"
    assert decision(r.route("3001@x", source_zone=MICROSOFT_ZONE)).targets[0].rule == "any"
    assert decision(r.route("3001@x")).targets[0].rule == "any"
    assert decision(r.route("3001@x", protocol=RuleProtocol.H323)).targets[0].rule == "h323 only"


def test_404_keeps_the_history_of_transforms() -> None:
    r = router(
        """
        [[transforms]]
        pattern = "sip-"
        behavior = "strip"
        """
    )
    refused = refusal(r.route("sip-3001@x"))
    assert (refused.status, refused.alias) == (404, "3001@x")
    assert refused.reason == "Not Found: no search rule matches 3001@x"
    assert [s.kind for s in refused.history] == [StepKind.TRANSFORM]


# -- hops and loops ------------------------------------------------------------------------


def test_max_forwards_zero_is_483(lab_router: Router) -> None:
    refused = refusal(
        lab_router.route_request(request("sip:3001@video.example.com", max_forwards=0))
    )
    assert (refused.status, refused.reason) == (483, "Too Many Hops")


def test_outgoing_max_forwards_is_capped_by_the_zone_hop_count() -> None:
    r = router(
        """
        [[search_rules]]
        name = "to B"
        pattern = "3"
        target = "B"
        """
    )
    assert decision(r.route("3001@x", max_forwards=70)).targets[0].max_forwards == 5
    assert decision(r.route("3001@x", max_forwards=3)).targets[0].max_forwards == 2
    assert decision(r.route("3001@x")).targets[0].max_forwards == 5


OUR_IDENTITY = LocalIdentity.from_addresses(
    [
        TransportAddress(Transport.TLS, "127.0.2.1", 65072),
        TransportAddress(Transport.UDP, "127.0.2.1", 5060),
    ],
    branch_prefix="gw-exp01-",
)


@pytest.mark.parametrize(
    ("vias", "looped"),
    [
        (["SIP/2.0/TLS 127.0.1.1:5061;branch=z9hG4bKfe"], False),
        (
            [
                "SIP/2.0/TLS 127.0.1.1;branch=z9hG4bKfe",
                "SIP/2.0/TLS 127.0.2.1:65072;branch=z9hG4bKx",
            ],
            True,
        ),  # noqa: E501
        (["SIP/2.0/UDP 127.0.2.1;branch=z9hG4bKx"], True),  # default port 5060 is ours
        (["SIP/2.0/TLS 127.0.2.1;branch=z9hG4bKx"], False),  # 5061: not a listener of ours
        (["SIP/2.0/TCP 127.0.3.1:5060;branch=z9hG4bKgw-exp01-abc"], True),  # our branch prefix
        (["SIP/2.0/TCP 127.0.3.1:5060;branch=z9hG4bKgw-exp02-abc"], False),
    ],
)
def test_loop_detection(vias: list[str], looped: bool) -> None:
    assert is_looped(request("sip:3001@video.example.com", vias=vias), OUR_IDENTITY) is looped


def test_looped_request_is_refused_482(lab_router: Router) -> None:
    looped = request(
        "sip:3001@video.example.com", vias=["SIP/2.0/TLS 127.0.2.1:65072;branch=z9hG4bKgw-exp01-1"]
    )
    refused = refusal(lab_router.route_request(looped, identity=OUR_IDENTITY))
    assert (refused.status, refused.reason) == (482, "Loop Detected")
    assert decision(lab_router.route_request(looped)).zone == "CUCM Neighbor"
