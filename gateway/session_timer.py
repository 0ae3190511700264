"""Session timers (RFC 4028), sans-IO: the Session-Expires and Min-SE headers, the
negotiation rules of the UAC (§7) and the UAS (§9), and the timing of one leg's session
(§10): when the refresher sends its refresh and when the session is given up with a BYE.

Roles are per transaction: ``refresher=uac`` names the side that sent the INVITE or
UPDATE carrying it, so each refresh renegotiates who refreshes. :class:`Session` records the
outcome together with our role in that transaction; :class:`SessionTimer` turns it into
deadlines (time is passed in; nothing here reads a clock).

Flow for a leg (the leg machine's part is in brackets):

- We send an INVITE: [add ``Supported: timer``] plus :func:`request_headers`. A 422 gives
  the next interval through :func:`interval_after_422` [resend]. The 2xx goes to
  :func:`uac_negotiate`: a :class:`Session` or None (no timer).
- We receive an INVITE or UPDATE: :func:`uas_negotiate` gives a :class:`Reject` (send 422
  with its headers) or an :class:`UasAnswer` (its headers go on the 2xx).
- With a session: ``timer = SessionTimer(session, now)``; [arm ``timer.get_timer()``];
  ``timer.handle_timer(now)`` says ``REFRESH`` [send re-INVITE/UPDATE with
  :func:`refresh_headers`] or ``EXPIRE`` [send BYE]. Every successful refresh, sent or
  received, gives a new session: ``timer.refreshed(session, now)``. A failed refresh goes to
  ``timer.refresh_failed(status, now)``.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field

from sip.errors import ParseError, RemoteProtocolError
from sip.extensions import TAG_TIMER, supports
from sip.headers import parse_params
from sip.message import Request, Response
from sip.uri import Params

__all__ = [
    "DEFAULT_INTERVAL",
    "MIN_SE_FLOOR",
    "Refresher",
    "Reject",
    "Session",
    "SessionExpires",
    "SessionTimer",
    "TimerAction",
    "TimerPolicy",
    "UasAnswer",
    "expiry_margin",
    "interval_after_422",
    "min_se_of",
    "parse_min_se",
    "refresh_headers",
    "request_headers",
    "session_expires_of",
    "uac_negotiate",
    "uas_negotiate",
]

MIN_SE_FLOOR = 90
"""§4, §5: no Session-Expires or Min-SE may be below 90 s; an absent Min-SE means 90."""
DEFAULT_INTERVAL = 1800
"""§4: the recommended Session-Expires (30 minutes)."""
_MAX_DELTA = 2**32 - 1  # delta-seconds is 1*DIGIT; bound it as RFC 3261 does for Expires


class Refresher(enum.Enum):
    """The ``refresher`` parameter: which end of the carrying transaction refreshes."""

    UAC = "uac"
    UAS = "uas"

    @property
    def other(self) -> Refresher:
        return Refresher.UAS if self is Refresher.UAC else Refresher.UAC


# §4: Session-Expires = ("Session-Expires" / "x") HCOLON delta-seconds *(SEMI se-params)
#     se-params = refresher-param / generic-param
#     refresher-param = "refresher" EQUAL ("uas" / "uac")
_DELTA = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*")
_SE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*(;.*)?", re.S)


def _delta(text: str, what: str) -> int:
    m = _DELTA.fullmatch(text)
    if m is None or int(m[1]) > _MAX_DELTA:
        raise ParseError(f"malformed {what} {text[:40]!r}")
    return int(m[1])


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """A Session-Expires value: interval, refresher and any other parameters."""

    interval: int
    """delta-seconds."""
    refresher: Refresher | None = None
    """Who refreshes; None when the parameter is absent."""
    params: Params = field(default_factory=Params)
    """Parameters other than refresher, kept as received."""

    @classmethod
    def parse(cls, text: str) -> SessionExpires:
        """Parse a Session-Expires value; raises ParseError (refresher other than uac/uas,
        a non-numeric interval, bad parameters)."""
        m = _SE.fullmatch(text)
        if m is None or int(m[1]) > _MAX_DELTA:
            raise ParseError(f"malformed Session-Expires {text[:60]!r}")
        params = parse_params((m[2] or "").rstrip(), "Session-Expires")
        refresher = None
        if "refresher" in params:
            value = (params.get("refresher") or "").lower()
            if value not in ("uac", "uas"):
                raise ParseError(f"Session-Expires refresher {value!r} is not uac or uas")
            refresher = Refresher(value)
            params = params.without("refresher")
        return cls(int(m[1]), refresher, params)

    def __str__(self) -> str:
        refresher = "" if self.refresher is None else f";refresher={self.refresher.value}"
        return f"{self.interval}{refresher}{self.params}"


def parse_min_se(text: str) -> int:
    """A Min-SE value (§5: ``Min-SE = "Min-SE" HCOLON delta-seconds *(SEMI generic-param)``)."""
    value, sep, params = text.partition(";")
    if sep:
        parse_params(sep + params.rstrip(), "Min-SE")
    return _delta(value, "Min-SE")


def session_expires_of(message: Request | Response) -> SessionExpires | None:
    """The message's Session-Expires (long or compact ``x``), None when absent; ParseError
    when malformed or repeated (it is a single-valued header)."""
    values = message.headers.get_all("Session-Expires")
    if not values:
        return None
    if len(values) > 1:
        raise ParseError("more than one Session-Expires")
    return SessionExpires.parse(values[0])


def min_se_of(message: Request | Response) -> int | None:
    """The message's Min-SE, None when absent; ParseError when malformed or repeated."""
    values = message.headers.get_all("Min-SE")
    if not values:
        return None
    if len(values) > 1:
        raise ParseError("more than one Min-SE")
    return parse_min_se(values[0])


def expiry_margin(interval: float) -> float:
    """§10: the BYE goes before the session expires, by the smaller of 32 s and a third of
    the interval."""
    return min(32.0, interval / 3)


@dataclass(frozen=True, slots=True)
class TimerPolicy:
    """What one side of the gateway asks for and accepts."""

    interval: int = DEFAULT_INTERVAL
    """Session-Expires we propose, and the longest we grant a peer asking for more."""
    min_se: int = MIN_SE_FLOOR
    """The shortest interval we accept (smaller requests get 422 with this Min-SE)."""
    enabled: bool = True
    """Use a session timer even when the peer did not ask for one (as UAS: ``refresher=uas``
    toward a peer without ``Supported: timer``)."""

    def __post_init__(self) -> None:
        if self.min_se < MIN_SE_FLOOR:
            raise ValueError(f"TimerPolicy.min_se must be at least {MIN_SE_FLOOR}: {self.min_se}")
        if self.interval < self.min_se:
            raise ValueError(
                f"TimerPolicy.interval {self.interval} is below min_se {self.min_se}"
            )


@dataclass(frozen=True, slots=True)
class Session:
    """A negotiated session timer, from one transaction (INVITE, re-INVITE or UPDATE)."""

    interval: int
    """The session interval in seconds."""
    refresher: Refresher
    """The refresher, relative to that transaction."""
    local_role: Refresher
    """Our end of that transaction: UAC when we sent the request."""

    @property
    def local_refresher(self) -> bool:
        """True when we send the refreshes."""
        return self.refresher is self.local_role

    @property
    def refresh_after(self) -> float:
        """§10: the refresher refreshes half-way through the interval."""
        return self.interval / 2

    @property
    def expire_after(self) -> float:
        """§10: with no refresh by then, the session is over (BYE)."""
        return self.interval - expiry_margin(self.interval)

    def refresher_for(self, *, we_send: bool) -> Refresher:
        """The ``refresher`` value that keeps the current refresher in a new transaction
        that we send (``we_send``) or receive."""
        ours = Refresher.UAC if we_send else Refresher.UAS
        return ours if self.local_refresher else ours.other


# -- UAC (§7) ----------------------------------------------------------------------------


def request_headers(
    policy: TimerPolicy,
    *,
    interval: int | None = None,
    refresher: Refresher | None = None,
) -> tuple[tuple[str, str], ...]:
    """Session-Expires and Min-SE for an INVITE we send (§7.1); ``interval`` after a 422
    (:func:`interval_after_422`). The caller puts ``timer`` in ``Supported``."""
    value = policy.interval if interval is None else interval
    # §7.3: after a 422, Min-SE carries the largest minimum seen (the retried interval).
    min_se = policy.min_se if interval is None else max(policy.min_se, interval)
    return (
        ("Session-Expires", str(SessionExpires(value, refresher))),
        ("Min-SE", str(min_se)),
    )


def refresh_headers(session: Session, policy: TimerPolicy) -> tuple[tuple[str, str], ...]:
    """Session-Expires (keeping the current refresher) and Min-SE for a refresh we send
    (§7.4), plus ``Supported: timer``."""
    refresher = session.refresher_for(we_send=True)
    return (
        ("Session-Expires", str(SessionExpires(session.interval, refresher))),
        ("Min-SE", str(max(policy.min_se, MIN_SE_FLOOR))),
        ("Supported", TAG_TIMER),
    )


def interval_after_422(response: Response, sent_interval: int) -> int:
    """The interval to retry with after a 422 (§7.3): the 422's Min-SE (never lower than
    what we sent). Raises RemoteProtocolError for a 422 without a usable Min-SE."""
    if response.status != 422:
        raise ValueError(f"not a 422: {response.status}")
    try:
        min_se = min_se_of(response)
    except ParseError as error:
        raise RemoteProtocolError(f"422 with a malformed Min-SE: {error.message}", 502) from None
    if min_se is None:
        raise RemoteProtocolError("422 without Min-SE", 502)
    if min_se <= sent_interval:
        # Retrying with the same value would loop on the same 422.
        raise RemoteProtocolError(
            f"422 with Min-SE {min_se} not above the Session-Expires {sent_interval} sent", 502
        )
    return min_se


def uac_negotiate(response: Response) -> Session | None:
    """The session timer a 2xx to our INVITE or UPDATE sets (§7.2), None when the 2xx has
    no Session-Expires (no expiration; no refreshes). A refresher missing from the 2xx
    (the UAS must set it, §9) makes us the refresher: refreshing keeps the session alive
    whatever the peer meant."""
    se = session_expires_of(response)
    if se is None:
        return None
    if se.interval < MIN_SE_FLOOR:
        raise RemoteProtocolError(
            f"2xx with Session-Expires {se.interval} below {MIN_SE_FLOOR}", 502
        )
    return Session(se.interval, se.refresher or Refresher.UAC, Refresher.UAC)


# -- UAS (§9) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the request with 422 (§6): its Session-Expires is below our minimum."""

    min_se: int
    """Our Min-SE, sent in the 422."""
    status: int = 422
    reason: str = "Session Interval Too Small"

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("Min-SE", str(self.min_se)),)


@dataclass(frozen=True, slots=True)
class UasAnswer:
    """Accept the request; ``headers`` go on its 2xx."""

    session: Session | None
    """The negotiated timer, None when no session timer is used."""
    headers: tuple[tuple[str, str], ...] = ()
    """Session-Expires with refresher (and ``Require: timer`` when the UAC refreshes)."""


def uas_negotiate(
    request: Request, policy: TimerPolicy, *, keep: Refresher | None = None
) -> Reject | UasAnswer:
    """Negotiate the session timer of a received INVITE or UPDATE (§9).

    - Session-Expires below our ``min_se`` (or 90): :class:`Reject` (422 with Min-SE).
    - Otherwise the interval is the requested one, reduced to our ``policy.interval`` when
      larger but never below the request's Min-SE nor ours.
    - A refresher in the request is honoured. Without one we choose: ``keep`` (for a
      refresh, ``Session.refresher_for(we_send=False)``, so the refresher stays the same),
      else ``uac`` when the UAC supports timer, else ``uas`` (it cannot refresh).
    - No Session-Expires: a timer only when ``policy.enabled`` (at least the request's
      Min-SE), with ``refresher=uas`` unless the UAC supports timer.
    - ``refresher=uac`` in the 2xx comes with ``Require: timer``.

    Raises ParseError for malformed Session-Expires / Min-SE (answer 400).
    """
    se = session_expires_of(request)
    requested_min = min_se_of(request)
    peer_supports = supports(request, TAG_TIMER)
    floor = max(requested_min or MIN_SE_FLOOR, policy.min_se, MIN_SE_FLOOR)
    if se is not None:
        if se.interval < max(policy.min_se, MIN_SE_FLOOR):
            return Reject(max(policy.min_se, MIN_SE_FLOOR))  # §6: our own minimum
        interval = min(se.interval, max(policy.interval, floor))
        refresher = se.refresher
    elif policy.enabled:
        interval = max(policy.interval, floor)
        refresher = None
    else:
        return UasAnswer(None)
    if refresher is None:
        if not peer_supports:
            refresher = Refresher.UAS
        else:
            refresher = keep or Refresher.UAC
    headers: list[tuple[str, str]] = [
        ("Session-Expires", str(SessionExpires(interval, refresher)))
    ]
    if refresher is Refresher.UAC:
        headers.append(("Require", TAG_TIMER))
    return UasAnswer(Session(interval, refresher, Refresher.UAS), tuple(headers))


# -- timing (§10) ------------------------------------------------------------------------


class TimerAction(enum.Enum):
    """What a leg must do when its session timer fires."""

    REFRESH = "send a session refresh (re-INVITE or UPDATE)"
    EXPIRE = "the session expired: send BYE"


class SessionTimer:
    """The deadlines of one leg's session: refresh (when we refresh) and expiry.

    The refresher refreshes at half the interval; either side gives the session up at
    ``interval - min(32, interval/3)`` after the last successful refresh (the refresher too:
    when its refreshes keep failing the peer will give up at the same moment).
    """

    __slots__ = ("session", "started", "refresh_at", "expire_at", "expired")

    def __init__(self, session: Session, now: float) -> None:
        self.session = session
        """The session as last negotiated."""
        self.started = now
        """When it was negotiated (the last successful refresh)."""
        self.refresh_at: float | None = None
        """When to send the next refresh; None when the peer refreshes or one is pending."""
        self.expire_at = math.inf
        """When to give the session up."""
        self.expired = False
        """True once EXPIRE was returned (it is returned once)."""
        self.refreshed(session, now)

    def refreshed(self, session: Session, now: float) -> None:
        """A refresh (sent or received) succeeded, or the session was first negotiated."""
        self.session = session
        self.started = now
        self.refresh_at = now + session.refresh_after if session.local_refresher else None
        self.expire_at = now + session.expire_after

    def get_timer(self) -> float | None:
        """The next deadline for ``handle_timer``; None once expired."""
        if self.expired:
            return None
        if self.refresh_at is not None:
            return min(self.refresh_at, self.expire_at)
        return self.expire_at

    def handle_timer(self, now: float) -> TimerAction | None:
        """The action due at ``now``: EXPIRE (once) or REFRESH (once per deadline)."""
        if self.expired:
            return None
        if now >= self.expire_at:
            self.expired = True
            self.refresh_at = None
            return TimerAction.EXPIRE
        if self.refresh_at is not None and now >= self.refresh_at:
            self.refresh_at = None  # the refresh is in flight until refreshed/refresh_failed
            return TimerAction.REFRESH
        return None

    def refresh_failed(self, status: int | None, now: float, *,
                       retry_after: float | None = None) -> TimerAction | None:
        """Our refresh failed with ``status`` (None: transaction timeout).

        §10: a timeout, 408 or 481 ends the session now (EXPIRE: send BYE). Otherwise the
        session stands until its expiry; the refresh is tried again after ``retry_after``
        seconds when given (a 491: ``sip.update.glare_retry_delay``; a 422: at once with
        the larger interval) and never past the expiry.
        """
        if self.expired:
            return None
        if status is None or status in (408, 481):
            self.expired = True
            self.refresh_at = None
            return TimerAction.EXPIRE
        if retry_after is not None and self.session.local_refresher:
            self.refresh_at = min(now + retry_after, self.expire_at)
        return None
