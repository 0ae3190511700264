"""lab.lync.sipae against a real OCS 2007 R2 sign-in (vectors in tests/data/lync): the
server checks the client's NTLMv2 AUTHENTICATE, derives the same keys, verifies the
client's REGISTER signature and produces the server's signature byte for byte; signed
texts are built from the messages as sipe builds them. Plus the round trip and refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lab.lync.sipae import (
    AuthError,
    ClientHandshake,
    ServerHandshake,
    auth_params,
    signature_text,
)
from sip.message import Request, Response, parse_message

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "data" / "lync"
                      / "sipae_ocs2007r2.json").read_text())


def _server() -> ServerHandshake:
    return ServerHandshake(VECTORS["target"], opaque="2BDBAC9D",
                           _server_challenge=bytes.fromhex(VECTORS["server_challenge"]))


def test_signed_texts_match_the_captured_exchange() -> None:
    request = parse_message(VECTORS["request"].encode())
    response = parse_message(VECTORS["response"].encode())
    assert isinstance(request, Request) and isinstance(response, Response)
    _, asked = auth_params(request.headers.get("Proxy-Authorization") or "")
    assert signature_text(request, protocol="NTLM", rand=asked["crand"], num=asked["cnum"],
                          realm=asked["realm"], target=asked["targetname"]) == \
        VECTORS["request_signed_text"]
    _, info = auth_params(response.headers.get("Authentication-Info") or "")
    assert signature_text(response, protocol="NTLM", rand=info["srand"], num=info["snum"],
                          realm=info["realm"], target=info["targetname"]) == \
        VECTORS["response_signed_text"]


def test_server_accepts_the_real_client_and_signs_as_the_real_server() -> None:
    context = _server().accept(VECTORS["authenticate"], {"user": VECTORS["password"]})
    assert context.user == "COSMO\\User"
    assert context.verify(VECTORS["request_signed_text"], VECTORS["request_signature"])
    assert context.sign(VECTORS["response_signed_text"]) == VECTORS["response_signature"]
    # Any change to the signed text breaks the signature.
    assert not context.verify(VECTORS["request_signed_text"] + "x",
                              VECTORS["request_signature"])


def test_wrong_password_unknown_user_and_garbage_are_refused() -> None:
    with pytest.raises(AuthError, match="wrong password"):
        _server().accept(VECTORS["authenticate"], {"user": "not-it"})
    with pytest.raises(AuthError, match="no account"):
        _server().accept(VECTORS["authenticate"], {"someone": VECTORS["password"]})
    with pytest.raises(AuthError, match="malformed"):
        _server().accept(base64.b64encode(b"NTLMSSP\0junk").decode(), {})
    with pytest.raises(AuthError, match="no challenge"):
        ServerHandshake("fe").accept(VECTORS["authenticate"], {})


def test_client_and_server_round_trip() -> None:
    server = ServerHandshake("fe.example.com")
    challenge = server.challenge()
    token, client = ClientHandshake("alice.parkes", "secret", "EXAMPLE").authenticate(
        challenge, opaque=server.opaque, target="fe.example.com")
    context = server.accept(token, {"alice.parkes": "secret"})
    text = "<NTLM><1><1><SIP Communications Service><fe.example.com>"
    assert context.verify(text, client.sign(text))
    assert client.verify(text, context.sign(text))
    assert not client.verify(text, client.sign(text))  # directions have their own keys
