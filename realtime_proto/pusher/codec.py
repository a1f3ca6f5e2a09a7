"""Pusher frames to the Hub's messages and back (protocol version 7).

A Pusher connection is a Hub connection like any other: `decode_frame` turns what pusher-js
sends into the native messages the Hub handles (plus the channel a signature authorized),
`encode_payload` turns a native payload the Hub delivers into the Pusher frame, once per
delivery, whoever receives it. Every `data` a Pusher frame carries is a JSON string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, final

from ..errors import ErrorCode, MessageError
from ..events import User
from ..history import HistoryRule
from ..message import JsonValue, decode_json, encode_json
from ..presence import Member
from .apps import PusherApp

__all__ = ["CACHE_PREFIXES", "CACHE_RULES", "CHANNEL_NAME", "PROTOCOL_VERSIONS",
           "USER_CHANNEL_PREFIX", "Inbound", "PusherClose", "close_code", "decode_frame",
           "encode_payload", "error_frame", "socket_id_for", "subscription_refused",
           "subscription_succeeded"]

#: the protocol versions this server speaks (pusher-js 8 sends 7)
PROTOCOL_VERSIONS = frozenset({"7"})
#: cache channels: the last event is delivered on subscribe (`pusher:cache_miss` when
#: there is none); the Hub's history keeps it, for as long as Pusher does (30 minutes)
CACHE_PREFIXES = ("cache-", "private-cache-", "presence-cache-")
CACHE_RULES = tuple(HistoryRule(f"{prefix}*", 1, 1800.0) for prefix in CACHE_PREFIXES)
#: the channel pusher-js subscribes to once signed in: what is sent to the user
USER_CHANNEL_PREFIX = "#server-to-user-"
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,200}")


class PusherClose:
    """Close codes of the Pusher protocol: 4000-4099 stop the client for good, 4100-4199
    make it reconnect after a back-off, 4200-4299 reconnect at once."""

    APP_NOT_FOUND = 4001
    UNSUPPORTED_PROTOCOL = 4007
    TERMINATED = 4009
    OVER_CAPACITY = 4100
    RECONNECT = 4200
    PONG_NOT_RECEIVED = 4201
    CLIENT_EVENT_RATE_LIMITED = 4301


@final
@dataclass(frozen=True, slots=True)
class Inbound:
    """What one frame from a Pusher client asks of the Node."""

    #: the native message for the Hub, or None
    message: dict[str, JsonValue] | None = None
    #: a channel (the Hub's name) the client's signature authorized, with the presence
    #: member its `channel_data` names
    grant: tuple[str, Member | None] | None = None
    #: a frame to answer (an error, or the answer to what the fields above ask)
    reply: bytes | None = None
    #: the user a `pusher:signin` signature vouches for
    user: User | None = None
    #: the user id of a `#server-to-user-{id}` subscription (the Node checks it is the
    #: connection's signed-in user)
    user_channel: str | None = None


def socket_id_for(connection_id: str) -> str:
    """A connection id of the digits-dot-digits form the SDKs insist on, from an
    unguessable random id (its bytes as two decimal numbers)."""
    number = int.from_bytes(connection_id.encode(), "big")
    high, low = divmod(number % 10**32, 10**16)
    return f"{high}.{low}"


def close_code(code: int) -> int:
    """The close code a Pusher client gets for one of the Hub's: the native 4000-4099
    codes would stop pusher-js for good, so the ones a client should recover from become
    the Pusher protocol's reconnect codes."""
    if code == ErrorCode.IDLE_TIMEOUT:
        return PusherClose.PONG_NOT_RECEIVED
    if code == ErrorCode.SLOW_CONSUMER:
        return PusherClose.OVER_CAPACITY
    if 4000 <= code < 4100 and code not in (PusherClose.APP_NOT_FOUND,
                                            PusherClose.UNSUPPORTED_PROTOCOL,
                                            PusherClose.TERMINATED):
        return PusherClose.RECONNECT
    return code


def error_frame(code: int | None, message: str) -> bytes:
    """A connection-level `pusher:error`."""
    return _frame("pusher:error", {"code": code, "message": message})


def _subscription_error(channel: str, kind: str, error: str, status: int) -> bytes:
    return _frame("pusher:subscription_error", {"type": kind, "error": error, "status": status},
                  channel)


def _frame(event: str, data: JsonValue, channel: str | None = None,
           user_id: str | None = None) -> bytes:
    frame: dict[str, JsonValue] = {"event": event}
    if channel is not None:
        frame["channel"] = channel
    frame["data"] = encode_json(data).decode()
    if user_id is not None:
        frame["user_id"] = user_id
    return encode_json(frame)


# -- client to server ---------------------------------------------------------------------


def decode_frame(app: PusherApp, socket_id: str, raw: str | bytes, *, max_bytes: int) -> Inbound:
    """One frame from a Pusher client; never raises."""
    try:
        value = decode_json(raw, max_bytes=max_bytes)
    except MessageError as error:
        return Inbound(reply=error_frame(int(error.code), error.message))
    event = value.get("event") if isinstance(value, dict) else None
    if not isinstance(event, str):
        return Inbound(reply=error_frame(ErrorCode.MISSING_FIELD,
                                         "a frame is a JSON object with an 'event' string"))
    data = value.get("data")
    if event == "pusher:ping":
        return Inbound({"type": "ping"})
    if event == "pusher:pong":
        return Inbound({"type": "pong"})
    if isinstance(data, str) and event.startswith("pusher:"):
        try:  # the protocol allows its own objects as JSON strings
            data = json.loads(data)
        except ValueError:
            data = None
    if event == "pusher:signin":
        return _signin(app, socket_id, data)
    if event in ("pusher:subscribe", "pusher:unsubscribe"):
        channel = data.get("channel") if isinstance(data, dict) else None
        if isinstance(channel, str) and channel.startswith(USER_CHANNEL_PREFIX):
            user_id = channel.removeprefix(USER_CHANNEL_PREFIX)
            return Inbound(user_channel=user_id) if event == "pusher:subscribe" else Inbound()
        if not isinstance(channel, str) or not CHANNEL_NAME.fullmatch(channel):
            return Inbound(reply=error_frame(ErrorCode.INVALID_CHANNEL_NAME,
                                             f"{event} needs a valid 'channel' in its data"))
        if event == "pusher:unsubscribe":
            return Inbound({"type": "unsubscribe", "channel": app.hub_channel(channel)})
        assert isinstance(data, dict)
        return _subscribe(app, socket_id, channel, data)
    if event.startswith("client-"):
        channel = value.get("channel")
        if not isinstance(channel, str) or not CHANNEL_NAME.fullmatch(channel):
            return Inbound(reply=error_frame(ErrorCode.INVALID_CHANNEL_NAME,
                                             "a client event needs a valid 'channel'"))
        if not channel.startswith(("private-", "presence-")):
            return Inbound(reply=error_frame(ErrorCode.FORBIDDEN, "client events are allowed "
                                             "on private and presence channels only"))
        return Inbound({"type": "event", "channel": app.hub_channel(channel), "event": event,
                        "data": data})
    return Inbound(reply=error_frame(ErrorCode.UNKNOWN_TYPE, f"unsupported event {event!r}"))


def _signin(app: PusherApp, socket_id: str, data: object) -> Inbound:
    """`pusher:signin`: `user_data` (JSON with a string `id`) signed by the backend over
    `socket_id::user::user_data`."""
    user_data = data.get("user_data") if isinstance(data, dict) else None
    auth = data.get("auth") if isinstance(data, dict) else None
    if not isinstance(user_data, str) or not isinstance(auth, str):
        return Inbound(reply=error_frame(ErrorCode.MISSING_FIELD,
                                         "pusher:signin needs 'user_data' and 'auth'"))
    key, _, signature = auth.partition(":")
    if key != app.key or not app.signature_ok(f"{socket_id}::user::{user_data}", signature):
        return Inbound(reply=error_frame(ErrorCode.UNAUTHENTICATED, "invalid signin signature"))
    try:
        value = json.loads(user_data)
    except ValueError:
        value = None
    user_id = value.get("id") if isinstance(value, dict) else None
    if not isinstance(user_id, str) or not user_id:
        return Inbound(reply=error_frame(ErrorCode.INVALID_FIELD,
                                         "'user_data' needs a string 'id'"))
    info = value.get("user_info") if isinstance(value, dict) else None
    return Inbound(reply=_frame("pusher:signin_success", {"user_data": user_data}),
                   user=User(id=user_id, info=info if isinstance(info, dict) else {}))


def subscription_succeeded(channel: str) -> bytes:
    """`pusher_internal:subscription_succeeded` of a channel that is not presence."""
    return _frame("pusher_internal:subscription_succeeded", {}, channel)


def subscription_refused(channel: str, message: str) -> bytes:
    """A channel-level refusal (pusher-js hands it to the channel: Echo's `.error()`)."""
    return _subscription_error(channel, "AuthError", message, 403)


def _subscribe(app: PusherApp, socket_id: str, channel: str, data: dict[str, Any]) -> Inbound:
    hub_channel = app.hub_channel(channel)
    message: dict[str, JsonValue] = {"type": "subscribe", "channel": hub_channel}
    if channel.startswith(CACHE_PREFIXES):
        message["data"] = {"history": 1}  # the last event, kept by `CACHE_RULES`
    presence = channel.startswith("presence-")
    if not presence and not channel.startswith("private-"):
        return Inbound(message)
    channel_data = data.get("channel_data") if presence else None
    if presence and not isinstance(channel_data, str):
        return Inbound(reply=_subscription_error(
            channel, "AuthError", "a presence subscription needs 'channel_data'", 400))
    if not app.channel_auth_ok(socket_id, channel, data.get("auth"), channel_data):
        return Inbound(reply=_subscription_error(
            channel, "AuthError", f"invalid signature for {channel}", 401))
    member = None
    if presence:
        assert isinstance(channel_data, str)
        member = _member(channel_data)
        if member is None:
            return Inbound(reply=_subscription_error(
                channel, "AuthError", "'channel_data' needs a 'user_id' and an object "
                "'user_info'", 400))
    return Inbound(message, (hub_channel, member))


def _member(channel_data: str) -> Member | None:
    try:
        value = json.loads(channel_data)
    except ValueError:
        return None
    user_id = value.get("user_id") if isinstance(value, dict) else None
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    info = value.get("user_info", {}) if isinstance(value, dict) else None
    if not isinstance(user_id, str) or not user_id or not isinstance(info, dict | None):
        return None
    return Member(user_id=user_id, info=info or {})


# -- server to client ---------------------------------------------------------------------

#: native error codes a subscription answers with, as the `type` and HTTP-like `status`
#: of `pusher:subscription_error` (pusher-js passes them to the channel: Echo's `.error()`)
_SUBSCRIPTION_ERRORS = {
    ErrorCode.UNAUTHENTICATED: ("AuthError", 401),
    ErrorCode.FORBIDDEN: ("AuthError", 403),
    ErrorCode.INTERNAL_ERROR: ("AuthError", 500),
    ErrorCode.INVALID_CHANNEL_NAME: ("SubscriptionError", 400),
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: ("LimitReached", 400),
    ErrorCode.TOO_MANY_PENDING: ("LimitReached", 400),
}


def encode_payload(payload: bytes, user_id: str | None = None) -> list[bytes]:
    """The Pusher frames of a native payload the Hub delivers: none when the Pusher
    protocol has nothing to say (an unsubscription's acknowledgement, the plain
    `subscription.succeeded` ahead of a presence channel's member list), two for a cache
    channel's subscription without a cached event (`pusher:cache_miss` follows the
    success, or a presence channel's member list).

    Args:
        user_id: the signed-in user of the connection, for an event sent to the user
            (no channel): it goes to `#server-to-user-{user_id}`.
    """
    message = json.loads(payload)
    channel = message.get("channel")
    name = channel.partition(":")[0] if channel else None  # without an app's namespace
    frame = _encode(message, name, user_id)
    if frame is None:
        return []
    if name is not None and name.startswith(CACHE_PREFIXES) and message["type"] == "event" \
            and message.get("event") in ("subscription.succeeded", "presence.sync") \
            and not (message.get("data") or {}).get("replayed"):
        # (a presence channel's success is its member list, sent before the cached event)
        return [frame, _frame("pusher:cache_miss", {}, name)]
    return [frame]


def _encode(message: Any, name: str | None, user_id: str | None) -> bytes | None:
    """The one frame of a native message (decoded), or None."""
    kind, event, data = message["type"], message.get("event"), message.get("data")
    if kind == "ping":
        return _frame("pusher:ping", {})
    if kind == "pong":
        return _frame("pusher:pong", {})
    if kind == "error":
        code = data.get("code") if isinstance(data, dict) else None
        text = str(data.get("message", "")) if isinstance(data, dict) else ""
        if name is not None and code in _SUBSCRIPTION_ERRORS:
            error_kind, status = _SUBSCRIPTION_ERRORS[code]
            return _subscription_error(name, error_kind, text, status)
        if code == ErrorCode.RATE_LIMITED:
            code = PusherClose.CLIENT_EVENT_RATE_LIMITED
        return error_frame(code, text)
    if name is None:
        if event == "connection.established":
            timeout = max(1, round(float(data["heartbeat"])))
            return _frame("pusher:connection_established",
                          {"socket_id": data["connection_id"], "activity_timeout": timeout})
        return _frame(event, data, USER_CHANNEL_PREFIX + user_id if user_id else None)
    if event == "subscription.succeeded":
        return None if name.startswith("presence-") else \
            subscription_succeeded(name)
    if event == "presence.sync":
        members = data["members"]
        return _frame("pusher_internal:subscription_succeeded", {"presence": {
            "ids": [m["user_id"] for m in members],
            "hash": {m["user_id"]: m["info"] for m in members},
            "count": len(members)}}, name)
    if event == "user.joined":
        return _frame("pusher_internal:member_added",
                      {"user_id": data["user_id"], "user_info": data["info"]}, name)
    if event == "user.left":
        return _frame("pusher_internal:member_removed", {"user_id": data["user_id"]}, name)
    if event == "unsubscription.succeeded":
        return None
    return _frame(event, data, name, message.get("user_id"))
