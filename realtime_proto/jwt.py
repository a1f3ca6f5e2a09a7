"""Tokens: JSON Web Tokens signed with HS256, RS256 or ES256 (RFC 7519, RFC 7515, RFC 7518)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, final

from .errors import ErrorCode, MessageError
from .events import User

__all__ = ["JwtConfig", "decode_hs256", "encode_hs256", "user_from_claims", "verify_token"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class JwtConfig:
    """How tokens are checked: an HS256 secret and/or a public key, and expected claims."""

    #: HS256 shared secret
    secret: str | None = None
    #: PEM public key: an RSA key verifies RS256, an EC P-256 key verifies ES256
    public_key: str | None = None
    #: when set, the token's `aud` must name it
    audience: str | None = None
    #: when set, the token's `iss` must equal it
    issuer: str | None = None
    #: seconds of clock difference tolerated on `exp` and `nbf`
    leeway: float = 0.0


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _refuse(reason: str) -> MessageError:
    return MessageError(ErrorCode.UNAUTHENTICATED, reason)


def encode_hs256(claims: dict[str, Any], secret: str) -> str:
    """Sign claims as an HS256 JWT (for tests, examples and the CLI's `token` command)."""
    header = _b64encode(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64encode(signature)}"


def decode_hs256(token: str, secret: str, *, now_unix: float, leeway: float = 0.0) -> dict[
        str, Any]:
    """Verify an HS256 JWT and return its claims (see `verify_token`)."""
    return verify_token(token, JwtConfig(secret=secret, leeway=leeway), now_unix=now_unix)


def verify_token(token: str, config: JwtConfig, *, now_unix: float) -> dict[str, Any]:
    """Verify a JWT's signature and standard claims; its claims.

    Raises:
        MessageError: 4001 when the token is malformed, forged, signed with an algorithm
            this configuration has no key for, expired (`exp`), not yet valid (`nbf`),
            for another audience (`aud`) or from another issuer (`iss`).
    """
    try:
        header_part, body_part, signature_part = token.split(".")
        header = json.loads(_b64decode(header_part))
        claims = json.loads(_b64decode(body_part))
        signature = _b64decode(signature_part)
    except (ValueError, TypeError):
        raise _refuse("malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _refuse("malformed token")
    signed = f"{header_part}.{body_part}".encode()
    if not _signature_valid(header.get("alg"), signed, signature, config):
        raise _refuse("bad token signature")
    _check_claims(claims, config, now_unix)
    return claims


def _signature_valid(alg: object, signed: bytes, signature: bytes, config: JwtConfig) -> bool:
    if alg == "HS256" and config.secret is not None:
        expected = hmac.new(config.secret.encode(), signed, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)
    if alg in ("RS256", "ES256") and config.public_key is not None:
        return _public_key_valid(str(alg), signed, signature, config.public_key)
    raise _refuse(f"tokens signed with {alg!r} are not accepted here")


def _public_key_valid(alg: str, signed: bytes, signature: bytes, pem: str) -> bool:
    # cryptography is an optional extra, needed only for public-key tokens
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = serialization.load_pem_public_key(pem.encode())
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            return True
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            # JWS carries r || s (RFC 7518 §3.4); cryptography wants DER
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big"))
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    raise _refuse(f"the configured public key cannot verify {alg}")


def _check_claims(claims: dict[str, Any], config: JwtConfig, now_unix: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if exp is not None and (not isinstance(exp, int | float) or now_unix > exp + config.leeway):
        raise _refuse("token expired")
    if nbf is not None and (not isinstance(nbf, int | float) or now_unix + config.leeway < nbf):
        raise _refuse("token not yet valid")
    if config.audience is not None:
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if config.audience not in audiences:
            raise _refuse("token is for another audience")
    if config.issuer is not None and claims.get("iss") != config.issuer:
        raise _refuse("token is from another issuer")


def user_from_claims(claims: dict[str, Any]) -> User:
    """The user a verified token names (`sub`, `info`, `channels`).

    Raises:
        MessageError: 4001 when `sub` is missing or a claim has the wrong type.
    """
    sub = claims.get("sub")
    info = claims.get("info", {})
    channels = claims.get("channels", [])
    if not isinstance(sub, str | int) or isinstance(sub, bool) or sub == "":
        raise _refuse("token needs a 'sub' claim")
    if not isinstance(info, dict):
        raise _refuse("claim 'info' must be an object")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise _refuse("claim 'channels' must be a list of strings")
    exp = claims.get("exp")
    expires_ms = round(exp * 1000) if isinstance(exp, int | float) and \
        not isinstance(exp, bool) else None
    return User(id=str(sub), info=info, channels=tuple(channels), expires_ms=expires_ms)
