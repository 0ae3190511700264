"""Allocation state (RFC 8656 §5) and the actions the sans-IO core asks its adapter to do.

Nothing here touches a socket or a clock: deadlines are absolute floats in the caller's
time base (the asyncio adapter passes ``loop.time()``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

Address = tuple[str, int]


class Transport(enum.IntEnum):
    """IP protocol numbers, as in REQUESTED-TRANSPORT."""

    TCP = 6
    UDP = 17


class FiveTuple(NamedTuple):
    """Client-side 5-tuple of a control (or RFC 6062 data) connection.

    A NamedTuple rather than a dataclass: it is hashed once per relayed packet.
    """

    transport: Transport
    client: Address
    server: Address


class AllocationState(enum.Enum):
    PENDING = "pending"
    """Relay port chosen, waiting for the adapter to bind it."""
    ACTIVE = "active"


class ConnectionState(enum.Enum):
    """RFC 6062 peer data connections."""

    CONNECTING = "connecting"
    """Outgoing connect to the peer in progress (Connect request)."""
    AWAITING_BIND = "awaiting-bind"
    """Peer connection up, waiting for the client's ConnectionBind."""
    BOUND = "bound"
    """Piping bytes between the client data connection and the peer."""


@dataclass(slots=True)
class Channel:
    peer: Address
    expiry: float


@dataclass(slots=True, eq=False)
class MsTurnState:
    """What an MS-TURN ([MS-TURN]) allocation holds beyond an RFC 8656 one."""

    connection_id: bytes
    """The 20-byte connection id of MS-SEQUENCE-NUMBER, issued in the Allocate response."""
    version: int = 1
    """MS-VERSION the client sent (echoed in the Allocate response)."""
    sequence: int = 0
    """Highest MS-SEQUENCE-NUMBER accepted; later requests must be above it."""
    active_destination: tuple[str, int] | None = None
    """Peer set by Set Active Destination: its data travels without encapsulation."""
    sad_tid: bytes = b""
    """Transaction id of the last accepted Set Active Destination (retransmissions)."""
    sad_response: bytes = b""
    """Its response, sent again to a retransmission."""
    streams: set[tuple[str, int]] = field(default_factory=set)
    """TCP allocations: peers with a TCP connection at the relayed address (open or being
    opened); data to and from each travels as that connection's byte stream."""
    held: set[tuple[str, int]] = field(default_factory=set)
    """Of ``streams``: peers that connected before the client sent to their IP; their bytes
    wait, unread, until it does (``ResumePeerStream``)."""


@dataclass(slots=True, eq=False)
class Allocation:
    """One relayed transport address and what the client may do with it."""

    id: int
    five_tuple: FiveTuple
    username: str
    key: bytes
    transport: Transport
    expiry: float
    relay_port: int
    relay_host: str
    """Address put in XOR-RELAYED-ADDRESS."""
    state: AllocationState = AllocationState.PENDING
    allocate_tid: bytes = b""
    allocate_response: bytes = b""
    lifetime: int = 0
    reserve_next: bool = False
    """EVEN-PORT with R bit: keep relay_port + 1 for a later RESERVATION-TOKEN."""
    reservation_token: bytes | None = None
    bind_attempts: int = 0
    tried_ports: set[int] = field(default_factory=set)
    permissions: dict[str, float] = field(default_factory=dict)
    """Peer IP -> expiry."""
    channels: dict[int, Channel] = field(default_factory=dict)
    peer_channels: dict[Address, int] = field(default_factory=dict)
    connections: set[int] = field(default_factory=set)
    """RFC 6062 connection ids of this allocation."""
    ms: MsTurnState | None = None
    """Set for an MS-TURN allocation (the client spoke MS-TURN when allocating)."""

    @property
    def relayed_address(self) -> Address:
        return (self.relay_host, self.relay_port)

    def permitted(self, host: str, now: float) -> bool:
        expiry = self.permissions.get(host)
        return expiry is not None and expiry > now

    def __repr__(self) -> str:
        return (
            f"<Allocation #{self.id} {self.username} {self.transport.name} relay {self.relay_port}>"
        )


@dataclass(slots=True, eq=False)
class TcpConnection:
    """An RFC 6062 peer TCP connection of a TCP allocation."""

    id: int
    allocation: Allocation
    peer: Address
    state: ConnectionState
    deadline: float
    connect_tid: bytes = b""
    """Transaction id of the Connect request to answer (outgoing connections)."""
    data_five_tuple: FiveTuple | None = None


# -- actions for the adapter ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send ``data`` (one STUN message or ChannelData) on the control 5-tuple."""

    five_tuple: FiveTuple
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToPeer:
    """Send ``data`` from the allocation's UDP relay socket to ``peer`` (an MS-TURN TCP
    allocation: write it to the peer's TCP connection, see ``OpenPeerStream``)."""

    allocation: Allocation
    peer: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenRelay:
    """Bind the relay socket(s) of ``allocation`` on its ``relay_port``, then report back
    with ``TurnCore.relay_opened`` or ``TurnCore.relay_failed``."""

    allocation: Allocation


@dataclass(frozen=True, slots=True)
class CloseRelay:
    """Close the relay socket(s) of a deleted allocation."""

    allocation: Allocation


@dataclass(frozen=True, slots=True)
class ConnectPeer:
    """Open a TCP connection to ``peer`` for connection ``connection_id`` (RFC 6062 Connect);
    report with ``TurnCore.peer_connected`` / ``peer_connect_failed``."""

    connection_id: int
    allocation: Allocation
    peer: Address


@dataclass(frozen=True, slots=True)
class AttachData:
    """After the ConnectionBind success response: pipe ``five_tuple`` <-> the peer connection."""

    connection_id: int
    five_tuple: FiveTuple


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the peer connection (and data connection, if any) of ``connection_id``."""

    connection_id: int


@dataclass(frozen=True, slots=True)
class OpenPeerStream:
    """MS-TURN TCP allocation: connect from the relayed address to ``peer``; ``SendToPeer``
    data for it is queued until connected. Report a failure or close with
    ``MsTurnHandler.stream_closed``."""

    allocation: Allocation
    peer: Address


@dataclass(frozen=True, slots=True)
class ResumePeerStream:
    """MS-TURN TCP allocation: the client sent to a held peer's IP; read its connection."""

    allocation: Allocation
    peer: Address


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close a client TCP connection (framing lost, or its allocation is gone)."""

    five_tuple: FiveTuple


Action = (
    SendToClient
    | SendToPeer
    | OpenRelay
    | CloseRelay
    | ConnectPeer
    | AttachData
    | CloseConnection
    | CloseClient
    | OpenPeerStream
    | ResumePeerStream
)


@dataclass(frozen=True, slots=True)
class TurnStats:
    """Counters a gateway status page shows."""

    clients: int
    """Distinct client IP addresses holding at least one allocation."""
    allocations: int
    """Active allocations (relays)."""
    tcp_allocations: int
    """Of which RFC 6062 TCP relays."""
    permissions: int
    """Unexpired permissions over all allocations."""
    channels: int
    """Unexpired channel bindings."""
    tcp_connections: int
    """RFC 6062 peer connections."""
    packets_to_peer: int
    bytes_to_peer: int
    packets_to_client: int
    bytes_to_client: int
    auth_failures: int
    """Requests refused 401 for a bad password or unknown user."""
    peers_denied: int
    """Requests refused 403 for a forbidden peer address."""


@dataclass(slots=True)
class Counters:
    """The mutable counters behind ``TurnStats`` (adapters add RFC 6062 pipe traffic)."""

    packets_to_peer: int = 0
    bytes_to_peer: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0
    auth_failures: int = 0
    peers_denied: int = 0
