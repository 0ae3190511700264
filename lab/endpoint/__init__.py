"""The simulated SIP endpoint: a library class (:class:`Endpoint`) and `gateway endpoint`."""

from lab.endpoint.agent import Call, CallFailed, CallState, Endpoint, OutgoingInvite
from lab.endpoint.config import EndpointConfig, ListenSpec

__all__ = [
    "Call",
    "CallFailed",
    "CallState",
    "Endpoint",
    "EndpointConfig",
    "ListenSpec",
    "OutgoingInvite",
]
