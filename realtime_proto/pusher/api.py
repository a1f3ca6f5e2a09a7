"""The Pusher HTTP API under `/apps/{id}/`, signed the Pusher way, on the Hub."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ErrorCode, MessageError
from ..events import ConnectionId
from ..hub import Hub
from ..message import JsonValue, decode_json
from .apps import SOCKET_ID, PusherApp
from .codec import CHANNEL_NAME, USER_CHANNEL_PREFIX, PusherClose

__all__ = ["MAX_BATCH", "MAX_CHANNELS", "handle_pusher_api"]

#: channels one `POST events` may name, and events one `POST batch_events` may carry
MAX_CHANNELS = 100
MAX_BATCH = 10
#: how far a request's `auth_timestamp` may be from the server's clock, in seconds
MAX_CLOCK_SKEW = 600
_MAX_EVENT_NAME = 200
#: the close code of a terminated connection (pusher-js does not reconnect)
TERMINATED = PusherClose.TERMINATED

ApiResponse = tuple[int, JsonValue]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def handle_pusher_api(hub: Hub, apps: Sequence[PusherApp], method: str, path: str,
                      query: Mapping[str, str], body: bytes, *, now: float, unix_now: float,
                      max_body_bytes: int) -> ApiResponse:
    """Answer one `/apps/{id}/…` request; never raises for what the caller sent.

    Errors are `{"error": message}` with 400 (bad request), 401 (signature, key or
    timestamp), 404 (no such app or call) or 413 (body too large).
    """
    if path.startswith("/users/"):  # where the Python SDK sends terminate_connections
        parts = path.split("/")[1:]
        app = next((a for a in apps if a.key == query.get("auth_key")), None)
    else:
        _, _, app_id, *parts = path.split("/")
        app = next((a for a in apps if a.id == app_id), None)
    if app is None:
        return 404, {"error": "no such app"}
    try:
        _check_signature(app, method, path, query, body, unix_now)
        match method, parts:
            case "POST", ["events"]:
                return 200, _events(hub, app, _object(body, max_body_bytes), now)
            case "POST", ["batch_events"]:
                return 200, _batch(hub, app, _object(body, max_body_bytes), now)
            case "GET", ["channels"]:
                return 200, _channels(hub, app, query)
            case "GET", ["channels", channel]:
                return 200, _channel(hub, app, _name(channel), query)
            case "POST", ["users", user_id, "terminate_connections"]:
                hub.terminate_user(app.hub_user(user_id), TERMINATED,
                                   "terminated by the application", now=now)
                return 200, {}
            case "GET", ["channels", channel, "users"]:
                if not channel.startswith("presence-"):
                    raise _BadRequest(400, "users are known for presence channels only")
                return 200, {"users": [{"id": m.user_id}
                                       for m in hub.members(app.hub_channel(_name(channel)))]}
            case _:
                return 404, {"error": f"no API call {method} {path}"}
    except _BadRequest as error:
        return error.status, {"error": error.message}


def _check_signature(app: PusherApp, method: str, path: str, query: Mapping[str, str],
                     body: bytes, unix_now: float) -> None:
    params = {name.lower(): value for name, value in query.items()}
    signature = params.pop("auth_signature", "")
    if not hmac.compare_digest(params.get("auth_key", ""), app.key):
        raise _BadRequest(401, "unknown auth_key")
    try:
        timestamp = int(params.get("auth_timestamp", ""))
    except ValueError:
        raise _BadRequest(401, "auth_timestamp must be Unix seconds") from None
    if abs(unix_now - timestamp) > MAX_CLOCK_SKEW:
        raise _BadRequest(401, f"auth_timestamp is more than {MAX_CLOCK_SKEW} s away from "
                               "the server's clock")
    if (body or "body_md5" in params) and params.get("body_md5") != hashlib.md5(body).hexdigest():
        raise _BadRequest(401, "body_md5 does not match the body")
    text = "\n".join([method, path, "&".join(f"{k}={v}" for k, v in sorted(params.items()))])
    if not app.signature_ok(text, signature):
        raise _BadRequest(401, "invalid auth_signature")


def _object(body: bytes, max_bytes: int) -> dict[str, Any]:
    try:
        value = decode_json(body, max_bytes=max_bytes)
    except MessageError as error:
        status = 413 if error.code == ErrorCode.MESSAGE_TOO_LARGE else 400
        raise _BadRequest(status, error.message) from None
    if not isinstance(value, dict):
        raise _BadRequest(400, "the body must be a JSON object")
    return value


def _name(channel: object, *, user_channel: bool = False) -> str:
    if user_channel and isinstance(channel, str) and channel.startswith(USER_CHANNEL_PREFIX) \
            and CHANNEL_NAME.fullmatch(channel.removeprefix(USER_CHANNEL_PREFIX)):
        return channel
    if not isinstance(channel, str) or not CHANNEL_NAME.fullmatch(channel):
        raise _BadRequest(400, f"invalid channel name {channel!r}")
    return channel


def _value(data: object) -> JsonValue:
    """An event's `data` as the Hub keeps it: the JSON the string holds (so native
    clients get the value), else the string itself."""
    if not isinstance(data, str):
        raise _BadRequest(400, "'data' must be a string")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except ValueError:
        return data


def _no_constant(name: str) -> None:
    raise ValueError(name)


_Event = tuple[list[str], str, JsonValue, ConnectionId | None]


def _event(fields: Mapping[str, Any], channels: object) -> _Event:
    name = fields.get("name")
    if not isinstance(name, str) or not name or len(name) > _MAX_EVENT_NAME:
        raise _BadRequest(400, f"'name' must be a string of 1 to {_MAX_EVENT_NAME} characters")
    if not isinstance(channels, list) or not channels:
        raise _BadRequest(400, "'channels' (a list) or 'channel' is required")
    if len(channels) > MAX_CHANNELS:
        raise _BadRequest(400, f"at most {MAX_CHANNELS} channels per event")
    socket_id = fields.get("socket_id")
    if socket_id is not None and (not isinstance(socket_id, str)
                                  or not SOCKET_ID.fullmatch(socket_id)):
        raise _BadRequest(400, "'socket_id' must be digits.digits")
    info = fields.get("info")
    if info is not None and (not isinstance(info, str) or (
            "user_count" in info.split(",")
            and not all(isinstance(c, str) and c.startswith("presence-") for c in channels))):
        raise _BadRequest(400, "'info' is a comma list; user_count needs presence channels")
    return ([_name(c, user_channel=True) for c in channels], name, _value(fields.get("data")),
            ConnectionId(socket_id) if socket_id else None)


def _info(hub: Hub, app: PusherApp, channel: str, attributes: object) -> dict[str, JsonValue]:
    wanted = attributes.split(",") if isinstance(attributes, str) else []
    hub_channel = app.hub_channel(channel)
    info: dict[str, JsonValue] = {}
    if "subscription_count" in wanted:
        info["subscription_count"] = hub.subscription_count(hub_channel)
    if "user_count" in wanted:
        if not channel.startswith("presence-"):
            raise _BadRequest(400, "user_count is known for presence channels only")
        info["user_count"] = len(hub.members(hub_channel))
    return info


def _publish(hub: Hub, app: PusherApp, event: _Event, now: float) -> None:
    channels, name, data, exclude = event
    for channel in channels:
        if channel.startswith(USER_CHANNEL_PREFIX):  # the SDKs' sendToUser
            user_id = channel.removeprefix(USER_CHANNEL_PREFIX)
            hub.send_to_user(app.hub_user(user_id), name, data, now=now)
        else:
            hub.broadcast(app.hub_channel(channel), name, data, now=now, exclude=exclude)


def _events(hub: Hub, app: PusherApp, fields: dict[str, Any], now: float) -> JsonValue:
    channels = fields["channels"] if "channels" in fields else [fields.get("channel")]
    event = _event(fields, channels)
    _publish(hub, app, event, now)
    info = fields.get("info")
    if info is None:
        return {}
    return {"channels": {c: _info(hub, app, c, info) for c in event[0]}}


def _batch(hub: Hub, app: PusherApp, fields: dict[str, Any], now: float) -> JsonValue:
    """Up to `MAX_BATCH` events, all checked before any goes out."""
    batch = fields.get("batch")
    if not isinstance(batch, list) or not batch:
        raise _BadRequest(400, "'batch' (a list of events) is required")
    if len(batch) > MAX_BATCH:
        raise _BadRequest(400, f"at most {MAX_BATCH} events per batch")
    if not all(isinstance(item, dict) for item in batch):
        raise _BadRequest(400, "every item of 'batch' must be an object")
    events = [_event(item, [item.get("channel")]) for item in batch]
    for event in events:
        _publish(hub, app, event, now)
    if not any("info" in item for item in batch):
        return {}
    return {"batch": [_info(hub, app, event[0][0], item.get("info"))
                      for event, item in zip(events, batch, strict=True)]}


def _channels(hub: Hub, app: PusherApp, query: Mapping[str, str]) -> JsonValue:
    """The app's occupied channels, over every node."""
    prefix = query.get("filter_by_prefix", "")
    info = query.get("info")
    if info is not None and "user_count" in info.split(",") and \
            not prefix.startswith("presence-"):
        raise _BadRequest(400, "info=user_count needs filter_by_prefix=presence-")
    channels: dict[str, JsonValue] = {}
    for hub_name in sorted({*hub.subscription_counts(), *hub.presence_channels()}):
        name, _, namespace = hub_name.partition(":")
        if (f":{namespace}" if namespace else "") == app.namespace and name.startswith(prefix):
            channels[name] = _info(hub, app, name, info)
    return {"channels": channels}


def _channel(hub: Hub, app: PusherApp, channel: str, query: Mapping[str, str]) -> JsonValue:
    hub_channel = app.hub_channel(channel)
    occupied = hub.subscription_count(hub_channel) > 0 or (
        channel.startswith("presence-") and bool(hub.members(hub_channel)))
    return {"occupied": occupied, **_info(hub, app, channel, query.get("info"))}
