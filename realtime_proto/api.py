"""The HTTP API for backends: publish, send, disconnect, and read channels and presence."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from .channels import validate_channel_name
from .errors import DISCONNECTED, ErrorCode, MessageError
from .events import ConnectionId
from .hub import Hub
from .message import JsonValue, decode_json

__all__ = ["ApiResponse", "bearer_token", "handle_api", "reads_channel"]

#: (HTTP status, JSON body)
ApiResponse = tuple[int, JsonValue]

#: publishes one `POST /api/batch` may carry
MAX_BATCH = 1000


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer …` header, if any."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def error_body(code: int, message: str) -> dict[str, Any]:
    """The JSON body of every HTTP error answer."""
    return {"error": {"code": int(code), "message": message}}


def handle_api(hub: Hub, api_key: str | None, method: str, path: str,
               headers: Mapping[str, str], body: bytes, *, now: float,
               max_body_bytes: int, statistics: Callable[[], JsonValue] = dict) -> ApiResponse:
    """Answer one `/api/…` request; never raises for what the caller sent."""
    token = bearer_token(headers)
    if api_key is None or token is None or not hmac.compare_digest(token, api_key):
        return 401, error_body(ErrorCode.UNAUTHENTICATED, "missing or wrong API key")
    parts = [unquote(p) for p in path.split("/")[2:]]
    try:
        match method, parts:
            case "POST", ["publish"]:
                return _publish(hub, _object(body, max_body_bytes), now)
            case "POST", ["batch"]:
                return _batch(hub, _object(body, max_body_bytes), now)
            case "POST", ["users", user_id, "send"]:
                fields = _object(body, max_body_bytes)
                return 200, {"id": hub.send_to_user(user_id, _event(fields), fields.get("data"),
                                                    now=now)}
            case "POST", ["connections", connection_id, "send"]:
                fields = _object(body, max_body_bytes)
                return _to_connection(hub, ConnectionId(connection_id), fields, now)
            case "POST", ["connections", connection_id, "disconnect"]:
                code, reason = _close(_object(body, max_body_bytes, empty_ok=True))
                local = hub.is_local(ConnectionId(connection_id))
                if not hub.disconnect_connection(ConnectionId(connection_id), code, reason,
                                                 now=now):
                    return _no_connection()
                return (200, {"disconnected": True}) if local else (202, {"forwarded": True})
            case "POST", ["users", user_id, "disconnect"]:
                code, reason = _close(_object(body, max_body_bytes, empty_ok=True))
                return 200, {"local": hub.disconnect_user(user_id, code, reason, now=now)}
            case "POST", ["users", user_id, "unsubscribe"]:
                fields = _object(body, max_body_bytes)
                channel = fields.get("channel")
                if not isinstance(channel, str):
                    raise MessageError(ErrorCode.MISSING_FIELD, "'channel' (a string) is required")
                return 200, {"local": hub.unsubscribe_user(user_id, channel,
                                                           _reason(fields), now=now)}
            case "GET", ["stats"]:
                return 200, statistics()
            case "GET", ["channels"]:
                channels = [{"name": n, "subscribers": c} for n, c in hub.channels().items()]
                return 200, {"channels": channels}
            case "GET", ["channels", channel]:
                return 200, {"name": channel, "subscribers": hub.channels().get(channel, 0),
                             "members": _members(hub, channel)}
            case "GET", ["channels", channel, "members"]:
                return 200, {"members": _members(hub, channel) or []}
            case "GET", ["channels", channel, "reads"]:
                return 200, {"reads": hub.reads(channel)}
            case _:
                return 404, error_body(ErrorCode.MALFORMED_MESSAGE, f"no API call {method} {path}")
    except MessageError as error:
        status = 413 if error.code == ErrorCode.MESSAGE_TOO_LARGE else 400
        return status, error_body(error.code, error.message)


def reads_channel(method: str, path: str) -> str | None:
    """The channel of a `GET /api/channels/{channel}/reads` request, if it is one."""
    parts = [unquote(p) for p in path.split("/")[2:]]
    if method == "GET" and len(parts) == 3 and parts[0] == "channels" and parts[2] == "reads":
        return parts[1]
    return None


def _publish(hub: Hub, fields: dict[str, Any], now: float) -> ApiResponse:
    [ids] = _broadcast(hub, [_publication(fields)], now)
    return 200, {"id": ids[0], "ids": ids}


def _batch(hub: Hub, fields: dict[str, Any], now: float) -> ApiResponse:
    """Many publishes in one call, in order; all checked before any goes out."""
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MessageError(ErrorCode.MISSING_FIELD, "'messages' (a list of publishes) is required")
    if len(messages) > MAX_BATCH:
        raise MessageError(ErrorCode.INVALID_FIELD, f"at most {MAX_BATCH} messages per batch")
    publications = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise MessageError(ErrorCode.NOT_AN_OBJECT, f"messages[{index}] is not an object")
        try:
            publications.append(_publication(message))
        except MessageError as error:
            raise MessageError(error.code, f"messages[{index}]: {error.message}") from None
    return 200, {"ids": _broadcast(hub, publications, now)}


_Publication = tuple[list[str], str, Any, ConnectionId | None]


def _publication(fields: dict[str, Any]) -> _Publication:
    """The channels, event, data and excluded connection of one publish, checked."""
    channels = fields.get("channels", [fields.get("channel")] if "channel" in fields else None)
    if not isinstance(channels, list) or not channels:
        raise MessageError(ErrorCode.MISSING_FIELD, "'channel' or 'channels' is required")
    for channel in channels:
        if not isinstance(channel, str):
            raise MessageError(ErrorCode.MISSING_FIELD, "'channel' or 'channels' is required")
        validate_channel_name(channel)
    exclude = fields.get("exclude_connection_id")
    if exclude is not None and not isinstance(exclude, str):
        raise MessageError(ErrorCode.INVALID_FIELD, "'exclude_connection_id' must be a string")
    return channels, _event(fields), fields.get("data"), ConnectionId(exclude) if exclude else None


def _broadcast(hub: Hub, publications: list[_Publication], now: float) -> list[list[str]]:
    """Publish in order; per publication, the message id of each of its channels."""
    ids = iter(hub.broadcast_many([(channel, event, data, exclude)
                                   for channels, event, data, exclude in publications
                                   for channel in channels], now=now))
    return [[next(ids) for _ in publication[0]] for publication in publications]


def _to_connection(hub: Hub, connection_id: ConnectionId, fields: dict[str, Any],
                   now: float) -> ApiResponse:
    """`POST /api/connections/{id}/send`: 200 when delivered here, 202 when handed to the
    node that holds the connection, 404 when no node can."""
    local = hub.is_local(connection_id)
    sent = hub.send(connection_id, _event(fields), fields.get("data"), now=now)
    if sent is None:
        return _no_connection()
    return (200, {"id": sent}) if local else (202, {"id": sent, "forwarded": True})


def _no_connection() -> ApiResponse:
    return 404, error_body(ErrorCode.UNKNOWN_CONNECTION,
                           "no such connection: not on this node, and no node of the "
                           "cluster has that id")


def _close(fields: dict[str, Any]) -> tuple[int, str]:
    """The close code (default 4010) and reason of a disconnect call."""
    code = fields.get("code", DISCONNECTED)
    if type(code) is not int:
        raise MessageError(ErrorCode.INVALID_FIELD, "'code' must be an integer")
    return code, _reason(fields)


def _reason(fields: dict[str, Any]) -> str:
    reason = fields.get("reason", "")
    if not isinstance(reason, str):
        raise MessageError(ErrorCode.INVALID_FIELD, "'reason' must be a string")
    return reason


def _object(body: bytes, max_bytes: int, empty_ok: bool = False) -> dict[str, Any]:
    if empty_ok and not body.strip():
        return {}
    value = decode_json(body, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise MessageError(ErrorCode.NOT_AN_OBJECT, "the body must be a JSON object")
    return value


def _event(fields: dict[str, Any]) -> str:
    event = fields.get("event")
    if not isinstance(event, str) or not event:
        raise MessageError(ErrorCode.MISSING_FIELD, "'event' (a string) is required")
    return event


def _members(hub: Hub, channel: str) -> list[dict[str, Any]] | None:
    if not channel.startswith("presence-"):
        return None
    return [m.to_dict() for m in hub.members(channel)]
