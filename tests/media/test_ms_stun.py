"""The [MS-ICE2] / RFC 5389 STUN codec against real libnice OC2007R2 datagrams
(tests/data/stun/ms-ice2) and the RFC 5769 vectors (tests/data/stun)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from media.ms_stun import (
    FINGERPRINT,
    MESSAGE_INTEGRITY,
    MS_CANDIDATE_IDENTIFIER,
    MS_IMPLEMENTATION_VERSION,
    DialectPolicy,
    Fingerprint,
    StunDecodeError,
    StunDialect,
    decode,
    encode,
    legacy_crc32,
    pad_value,
    verify_integrity,
)

STUN = Path(__file__).resolve().parent.parent / "data" / "stun"
MS = STUN / "ms-ice2"
VECTORS = json.loads((MS / "vectors.json").read_text())
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
MS_FILES = ["libnice-request.bin", "libnice-response.bin", "gateway-request.bin",
            "gateway-response.bin"]


def load(name: str) -> bytes:
    return (MS / name).read_bytes()


def key(name: str) -> bytes:
    return str(VECTORS["files"][name]["password"]).encode()


def test_libnice_check_decodes_with_its_ms_ice2_attributes() -> None:
    message = decode(load("libnice-request.bin"))
    assert message.message_type == 0x0001
    assert message.fingerprint is Fingerprint.STANDARD
    assert message.implementation_version == 2
    assert message.hint is StunDialect.MS_ICE2
    raw_username = message.get(0x0006)
    assert raw_username is not None and len(raw_username) == 12  # "gw01:xxxx" + 3 NULs
    assert message.username == f"gw01:{VECTORS['libnice']['ufrag']}"
    assert message.get(MS_CANDIDATE_IDENTIFIER) == b"1\0\0\0"
    assert message.get(0x0025) == b""  # USE-CANDIDATE: libnice nominates aggressively
    assert message.get(0x802A) is not None  # ICE-CONTROLLING


@pytest.mark.parametrize("name", MS_FILES)
def test_ms_ice2_integrity_verifies_only_the_ms_ice2_way(name: str) -> None:
    message = decode(load(name))
    assert verify_integrity(message, key(name)) is StunDialect.MS_ICE2
    assert verify_integrity(message, key(name), (StunDialect.RFC5389,)) is None
    assert verify_integrity(message, b"not the password") is None


@pytest.mark.parametrize("name", MS_FILES)
def test_encoder_reproduces_libnice_bytes(name: str) -> None:
    """Re-encoding a message from its attributes gives the captured bytes: MESSAGE-INTEGRITY
    and FINGERPRINT are computed exactly as libnice computes (and checks) them."""
    data = load(name)
    message = decode(data)
    attributes = [(a.type, a.value) for a in message.attributes
                  if a.type not in (MESSAGE_INTEGRITY, FINGERPRINT)]
    assert encode(message.message_type, message.transaction_id, attributes,
                  StunDialect.MS_ICE2, key=key(name)) == data


def test_libnice_response_carries_our_address_and_version() -> None:
    message = decode(load("libnice-response.bin"))
    assert message.message_type == 0x0101
    assert message.implementation_version == 2
    assert message.username == f"{VECTORS['libnice']['ufrag']}:gw01"


def test_legacy_copy_is_dropped_but_its_crc_is_microsofts() -> None:
    data = load("libnice-request-legacy.bin")
    with pytest.raises(StunDecodeError, match="FINGERPRINT"):
        decode(data)  # MS-IMPLEMENTATION-VERSION present: a version-2 sender's copy
    value = struct.unpack("!I", data[-4:])[0]
    assert value == legacy_crc32(data[:-8]) ^ 0x5354554E
    import binascii
    assert value != binascii.crc32(data[:-8]) ^ 0x5354554E


def test_legacy_fingerprint_accepted_from_a_version_1_sender() -> None:
    tid = bytes(range(12))
    # Search for a body whose CRC meets the wrong table entry, as the capture tool does.
    for n in range(2000):
        attributes = [(0x0006, pad_value(f"a:{n}".encode()))]
        data = encode(0x0001, tid, attributes, StunDialect.MS_ICE2, key=b"k",
                      legacy_fingerprint=True)
        standard = encode(0x0001, tid, attributes, StunDialect.MS_ICE2, key=b"k")
        if data != standard:
            break
    else:
        pytest.fail("no message met the legacy table entry")
    message = decode(data)
    assert message.fingerprint is Fingerprint.LEGACY
    assert verify_integrity(message, b"k") is StunDialect.MS_ICE2


@pytest.mark.parametrize("name", ["rfc5769-2.1-request.bin", "rfc5769-2.2-ipv4-response.bin",
                                  "rfc5769-2.3-ipv6-response.bin"])
def test_rfc5769_vectors_are_rfc5389(name: str) -> None:
    message = decode((STUN / name).read_bytes())
    assert message.aligned
    assert message.fingerprint is Fingerprint.STANDARD
    assert message.implementation_version is None
    assert verify_integrity(message, RFC5769_PASSWORD) is StunDialect.RFC5389
    assert verify_integrity(message, RFC5769_PASSWORD, (StunDialect.MS_ICE2,)) is None


def test_unaligned_attributes_decode_as_written() -> None:
    """A peer may leave an odd-length value unpadded ([MS-ICE2] layout): the next attribute
    follows at once. An aligned reader cannot read it; ours can."""
    tid = bytes(12)
    attributes = [(0x8022, b"odd"), (0x0006, b"abcd:efgh"),
                  (MS_IMPLEMENTATION_VERSION, struct.pack("!I", 2))]
    data = encode(0x0001, tid, attributes, StunDialect.MS_ICE2, key=b"pw")
    message = decode(data)
    assert not message.aligned
    assert message.get(0x8022) == b"odd"
    assert message.username == "abcd:efgh"
    assert verify_integrity(message, b"pw") is StunDialect.MS_ICE2


def test_rfc5389_round_trip_pads_between_attributes() -> None:
    tid = bytes(range(12))
    data = encode(0x0001, tid, [(0x0006, b"abcd:efgh")], StunDialect.RFC5389, key=b"pw")
    assert data[20:36] == b"\x00\x06\x00\x09abcd:efgh\x00\x00\x00"
    message = decode(data)
    assert message.aligned and message.hint is StunDialect.RFC5389
    assert verify_integrity(message, b"pw") is StunDialect.RFC5389


def test_garbage_only_raises_the_decode_error() -> None:
    rng = random.Random(5389)
    samples = [load(name) for name in MS_FILES] + [load("libnice-request-legacy.bin")]
    for _ in range(3000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        try:
            decode(bytes(data))
        except StunDecodeError:
            pass


def test_policy_alternates_until_the_peer_is_known() -> None:
    policy = DialectPolicy("test")
    tid = b"t" * 12
    first = [policy.request_dialect(tid) for _ in range(4)]
    assert first == [StunDialect.MS_ICE2, StunDialect.RFC5389] * 2
    policy.learned(StunDialect.RFC5389, None, "test")
    assert policy.request_dialect(b"u" * 12) is StunDialect.RFC5389
    pinned = DialectPolicy.pinned("client", StunDialect.MS_ICE2)
    assert {pinned.request_dialect(tid) for _ in range(3)} == {StunDialect.MS_ICE2}
    pinned.reply_to(tid, StunDialect.RFC5389)  # not spoken: answered in its own dialect
    assert pinned.reply_dialect(tid) is StunDialect.MS_ICE2


async def test_protocol_drops_bad_stun_and_passes_other_data_on() -> None:
    """A malformed attribute (3-byte PRIORITY) or a legacy copy never reaches the media sink
    and never raises out of the datagram handler; non-STUN data does reach it."""
    from media.ms_stun import DialectProtocol

    class Receiver:
        stun_policy = DialectPolicy("test")
        data: list[bytes] = []
        requests: list[object] = []

        def data_received(self, data: bytes, component: int) -> None:
            self.data.append(data)

        def request_received(self, message: object, addr: object, protocol: object) -> None:
            self.requests.append(message)

    class Local:
        component = 1

    receiver = Receiver()
    protocol = DialectProtocol(receiver)  # type: ignore[arg-type]
    protocol.local_candidate = Local()  # type: ignore[assignment]
    bad = encode(0x0001, bytes(12), [(0x0024, b"abc")], StunDialect.RFC5389)
    protocol.datagram_received(bad, ("10.0.0.1", 1))
    protocol.datagram_received(load("libnice-request-legacy.bin"), ("10.0.0.1", 1))
    protocol.datagram_received(b"not stun at all", ("10.0.0.1", 1))
    protocol.datagram_received(load("libnice-request.bin"), ("10.0.0.1", 1))
    assert receiver.data == [b"not stun at all"]
    assert len(receiver.requests) == 1


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent.append(data)


class _Agent:
    def __init__(self, policy: DialectPolicy) -> None:
        self.stun_policy = policy
        self.local_password = "gatewaypassword0123456789"
        self.remote_password = "peerpassword0123456789"
        self.verified: list[bool] = []

    def data_received(self, data: bytes, component: int) -> None:
        raise AssertionError("STUN reached the media sink")

    def request_received(self, message: Any, addr: object, protocol: object) -> None:
        self.verified.append(message.check_message_integrity(self.local_password.encode()))


def _protocol(policy: DialectPolicy) -> tuple[Any, _Agent, _Transport]:
    from media.ms_stun import DialectProtocol

    class Local:
        component = 1
        foundation = "6"

    agent, transport = _Agent(policy), _Transport()
    protocol = DialectProtocol(agent)  # type: ignore[arg-type]
    protocol.local_candidate = Local()  # type: ignore[assignment]
    protocol.transport = transport  # type: ignore[assignment]
    return protocol, agent, transport


def _check(tid: bytes) -> Any:
    from aioice.stun import Class, Message, Method
    message = Message(Method.BINDING, Class.REQUEST, transaction_id=tid)
    message.attributes["USERNAME"] = "peer:gw01"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 1
    message.add_message_integrity(b"ignored: the protocol signs with the remote password")
    return message


def _tid(n: int) -> bytes:
    return bytes([n % 256]) * 12


async def test_ms_ice2_client_sends_version_1_copies_only_when_they_differ() -> None:
    tids = [_tid(n) for n in range(256)]
    copies = 0
    for tid in tids:
        protocol, _, transport = _protocol(DialectPolicy.pinned("client", StunDialect.MS_ICE2))
        protocol.send_stun(_check(tid), ("10.0.0.2", 5000))  # first try: MS-ICE2
        first = decode(transport.sent[0])
        assert first.implementation_version == 2
        assert first.get(MS_CANDIDATE_IDENTIFIER) == b"6\0\0\0"
        assert verify_integrity(first, b"peerpassword0123456789") is StunDialect.MS_ICE2
        if len(transport.sent) == 2:
            copies += 1
            copy = transport.sent[1]
            assert copy[:-4] == transport.sent[0][:-4]
            assert struct.unpack("!I", copy[-4:])[0] == legacy_crc32(copy[:-8]) ^ 0x5354554E
            with pytest.raises(StunDecodeError):
                decode(copy)  # what a version-2 receiver (libnice, the gateway) does
    assert 0 < copies < len(tids)


async def test_version_1_peer_gets_legacy_fingerprints() -> None:
    protocol, agent, transport = _protocol(DialectPolicy("gw", legacy_copies=True))
    for n in range(500):  # a version-1 check whose legacy CRC differs from the standard one
        attributes = [(0x0006, pad_value(f"gw01:p{n}".encode())),
                      (0x0024, struct.pack("!I", 1))]
        data = encode(0x0001, bytes(12), attributes, StunDialect.MS_ICE2,
                      key=agent.local_password.encode(), legacy_fingerprint=True)
        if decode(data).fingerprint is Fingerprint.LEGACY:
            break
    protocol.datagram_received(data, ("10.0.0.2", 5000))
    assert agent.verified == [True]
    policy = agent.stun_policy
    assert policy.peer is StunDialect.MS_ICE2 and policy.peer_legacy_crc
    from aioice.stun import Class, Message, Method
    response = Message(Method.BINDING, Class.RESPONSE, transaction_id=bytes(12))
    response.attributes["XOR-MAPPED-ADDRESS"] = ("10.0.0.2", 5000)
    response.add_message_integrity(b"x")
    protocol.send_stun(response, ("10.0.0.2", 5000))
    (sent,) = transport.sent
    assert struct.unpack("!I", sent[-4:])[0] == legacy_crc32(sent[:-8]) ^ 0x5354554E
