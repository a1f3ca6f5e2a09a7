"""Public-key tokens (RS256, ES256), audience and issuer, and per-channel subscription tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from realtime_proto import ErrorCode, HubConfig, MessageError, User
from realtime_proto.jwt import JwtConfig, encode_hs256, verify_token

from .hubkit import error_codes, make


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict[str, Any], key: Any, alg: str) -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    if alg == "RS256":
        signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{head}.{body}.{b64(signature)}"


def pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256")])
def test_public_key_tokens_verify_and_forgeries_do_not(key: Any, alg: str) -> None:
    config = JwtConfig(public_key=pem(key), audience="realtime", issuer="auth.example")
    good = {"sub": "alice", "exp": 2000, "aud": "realtime", "iss": "auth.example"}
    assert verify_token(sign(good, key, alg), config, now_unix=1000)["sub"] == "alice"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048) \
        if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    refused = [
        sign(good, other_key, alg),                               # forged
        sign({**good, "exp": 500}, key, alg),                     # expired
        sign({**good, "aud": "someone-else"}, key, alg),          # wrong audience
        sign({**good, "iss": "evil.example"}, key, alg),          # wrong issuer
        encode_hs256(good, pem(key)),                             # HS256 keyed with the public key
    ]
    for token in refused:
        with pytest.raises(MessageError) as caught:
            verify_token(token, config, now_unix=1000)
        assert caught.value.code == ErrorCode.UNAUTHENTICATED


def test_subscription_token_allows_one_user_one_channel() -> None:
    _, transport, _ = make(HubConfig(jwt=JwtConfig(secret="k")))
    alice = transport.connect(User(id="alice"))
    transport.take(alice)
    good = encode_hs256({"sub": "alice", "channel": "presence-vip", "info": {"vip": True}}, "k")
    transport.send(alice, {"type": "subscribe", "channel": "presence-vip",
                           "data": {"token": good}})
    got = transport.take(alice)
    assert got[-1]["event"] == "presence.sync"
    assert got[-1]["data"]["members"] == [{"user_id": "alice", "info": {"vip": True}}]
    for token in (encode_hs256({"sub": "bob", "channel": "private-x"}, "k"),
                  encode_hs256({"sub": "alice", "channel": "private-other"}, "k"),
                  encode_hs256({"sub": "alice", "channel": "private-x"}, "wrong")):
        transport.send(alice, {"type": "subscribe", "channel": "private-x",
                               "data": {"token": token}})
        assert error_codes(transport.take(alice)) == [ErrorCode.FORBIDDEN]
