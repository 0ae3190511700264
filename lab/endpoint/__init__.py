"""The simulated SIP endpoint: a library class (:class:`Endpoint`) and `gateway endpoint`."""

from lab.endpoint.agent import Call, CallFailed, CallState, Endpoint, OutgoingInvite
from lab.endpoint.config import EndpointConfig, ListenSpec, SipTarget
from lab.endpoint.handle import EndpointCall
from lab.endpoint.registration import Registration, RegistrationError

__all__ = [
    "Call",
    "CallFailed",
    "CallState",
    "Endpoint",
    "EndpointCall",
    "EndpointConfig",
    "ListenSpec",
    "OutgoingInvite",
    "Registration",
    "RegistrationError",
    "SipTarget",
]
