"""What call control needs from the running gateway, and nothing more.

:class:`CallServices` is the narrow view of ``gateway.runtime.Gateway`` the call adapter
works through (routing, trusted hosts, metrics, the media factory, the side agents, zone
hops): the adapter never imports the runtime, so there is no controller <-> runtime cycle,
and a test can hand it any object with these members.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from gateway.config import GatewayConfig, ZoneConfig
from gateway.metrics import GatewayMetrics
from gateway.routing import LocalIdentity, Router
from gateway.trusted import TrustedHosts
from gateway.views import LegSide
from media.events import MediaEvent
from media.ms_dialect import EncryptionPolicy
from media.port_pool import PortPool
from media.session import MediaSession
from sip.message import Request
from sip.stack import Hop

if TYPE_CHECKING:
    from gateway.broker import SipBroker
    from gateway.leg import SideAgent

__all__ = ["CallServices"]


class CallServices(Protocol):
    """The gateway as call control sees it."""

    config: GatewayConfig
    router: Router
    trusted: TrustedHosts
    metrics: GatewayMetrics
    pool: PortPool
    encryption: EncryptionPolicy
    """``b2bua.encryption`` as the media core's policy."""
    identity: LocalIdentity
    retry_after: int
    """Seconds in the Retry-After of a 503 for the call limit."""
    draining: bool

    @property
    def agents(self) -> Mapping[LegSide, SideAgent]:
        """The UA core of each side."""
        ...

    @property
    def broker(self) -> SipBroker | None:
        """The SIP broker toward IM&P, when it runs."""
        ...

    def hop_of(self, source: object) -> Hop:
        """The hop a request came from."""
        ...

    def source_zone(self, side: LegSide, request: Request) -> str | None:
        """The zone a request comes from (None: no known peer sent it)."""
        ...

    def zone_hops(self, zone: str) -> list[Hop]:
        """Where requests into ``zone`` go, one hop per peer."""
        ...

    def media_session(self, call_id: str, zone: ZoneConfig | None,
                      on_event: Callable[[MediaEvent], None]) -> MediaSession:
        """A media session for a new call whose video side is in ``zone``."""
        ...
