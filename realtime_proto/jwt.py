"""Connection tokens: JSON Web Tokens signed with HS256 (RFC 7519, RFC 7515)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from .errors import ErrorCode, MessageError
from .events import User

__all__ = ["decode_hs256", "encode_hs256", "user_from_claims"]


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
    """Verify an HS256 JWT and return its claims.

    Raises:
        MessageError: 4001 when the token is malformed, forged, uses another algorithm,
            is expired (`exp`) or not yet valid (`nbf`).
    """
    try:
        header_part, body_part, signature_part = token.split(".")
        header = json.loads(_b64decode(header_part))
        claims = json.loads(_b64decode(body_part))
        signature = _b64decode(signature_part)
    except (ValueError, TypeError):
        raise _refuse("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise _refuse("token must be signed with HS256")
    expected = hmac.new(secret.encode(), f"{header_part}.{body_part}".encode(),
                        hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise _refuse("bad token signature")
    if not isinstance(claims, dict):
        raise _refuse("token claims must be an object")
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, int | float) or now_unix > exp + leeway):
        raise _refuse("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or now_unix + leeway < nbf):
        raise _refuse("token not yet valid")
    return claims


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
    return User(id=str(sub), info=info, channels=tuple(channels))
