"""The message value: its fields, validation, and JSON encoding and decoding."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, TypeAlias, final

from .errors import ErrorCode, MessageError
from .jsoncodec import dumps, loads_exact, quote

__all__ = ["EventEncoder", "JsonValue", "Message", "MessageType", "decode_json",
           "encode_json", "encode_message"]

#: Anything `json` can encode; kept loose because payloads are the application's.
JsonValue: TypeAlias = Any

_FIELDS = ("id", "type", "channel", "event", "data", "timestamp", "user_id", "offset", "epoch")


class MessageType(enum.StrEnum):
    """The seven message types of the wire protocol."""

    #: an application or system event
    EVENT = "event"
    #: a client asks to join a channel
    SUBSCRIBE = "subscribe"
    #: a client asks to leave a channel
    UNSUBSCRIBE = "unsubscribe"
    #: something went wrong; `data` holds `code` and `message`
    ERROR = "error"
    #: a liveness probe; answered with `pong`
    PING = "ping"
    #: the answer to `ping`
    PONG = "pong"
    #: a client hands in a new connection token (`data.token`) before the old one expires
    REFRESH = "refresh"


_NEEDS_CHANNEL = frozenset({MessageType.SUBSCRIBE, MessageType.UNSUBSCRIBE})


def _check(value: object, kind: type | tuple[type, ...], name: str) -> None:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise MessageError(ErrorCode.INVALID_FIELD, f"field {name!r} has the wrong type")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One protocol message; validated when built, so an invalid one cannot exist.

    Raises:
        MessageError: a field has the wrong type or a required field is missing.
    """

    type: MessageType
    id: str | None = None
    channel: str | None = None
    event: str | None = None
    data: JsonValue = None
    #: milliseconds since the Unix epoch
    timestamp: int | None = None
    #: the sender's user id, set by the server on client events
    user_id: str | None = None
    #: position in the channel's stream, on channels that keep history
    offset: int | None = None
    #: the stream's epoch, which changes when its history may have been lost
    epoch: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.type, MessageType):
            raise MessageError(ErrorCode.INVALID_FIELD, "field 'type' must be a MessageType")
        for name in ("id", "channel", "event", "user_id", "epoch"):
            _check(getattr(self, name), str, name)
        _check(self.timestamp, int, "timestamp")
        _check(self.offset, int, "offset")
        if self.type in _NEEDS_CHANNEL and not self.channel:
            raise MessageError(ErrorCode.MISSING_FIELD, f"a {self.type} message needs 'channel'")

    def to_dict(self) -> dict[str, JsonValue]:
        """The message as a plain dict; `user_id`, `offset` and `epoch` only when set."""
        result: dict[str, JsonValue] = {
            "id": self.id,
            "type": self.type.value,
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
            "timestamp": self.timestamp,
        }
        for name in ("user_id", "offset", "epoch"):
            if getattr(self, name) is not None:
                result[name] = getattr(self, name)
        return result

    def to_json(self) -> str:
        """The message as compact JSON text."""
        return dumps(self.to_dict()).decode()

    def encode(self) -> bytes:
        """The message as compact UTF-8 JSON bytes, ready for any framing."""
        return encode_json(self.to_dict())

    @classmethod
    def from_dict(cls, value: object) -> Message:
        """Build a message from a decoded JSON value.

        Raises:
            MessageError: not an object (4004), unknown type (4006), a wrong field type
                (4005), or a missing required field (4007).
        """
        if not isinstance(value, dict):
            raise MessageError(ErrorCode.NOT_AN_OBJECT, "a message must be a JSON object")
        kind = value.get("type")
        if kind is None:
            raise MessageError(ErrorCode.MISSING_FIELD, "a message needs 'type'")
        if not isinstance(kind, str):
            raise MessageError(ErrorCode.INVALID_FIELD, "field 'type' must be a string")
        try:
            message_type = MessageType(kind)
        except ValueError:
            raise MessageError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}") from None
        fields = {name: value.get(name) for name in _FIELDS if name != "type"}
        return cls(type=message_type, **fields)

    @classmethod
    def from_json(cls, raw: str | bytes, *, max_bytes: int | None = None) -> Message:
        """Decode and validate one message.

        Raises:
            MessageError: too large (4009), not UTF-8 (4002), not JSON (4000), or any
                error of `from_dict`.
        """
        return cls.from_dict(decode_json(raw, max_bytes=max_bytes))


def decode_json(raw: str | bytes, *, max_bytes: int | None = None) -> JsonValue:
    """Decode JSON from a peer, mapping each failure to its error code.

    What it returns can be encoded again: text that holds or escapes a lone surrogate
    (`"\\ud800"`), which no UTF-8 encoder takes, is refused.

    Raises:
        MessageError: too large (4009), not UTF-8 or a lone surrogate (4002), not JSON
            (4000).
    """
    try:
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if max_bytes is not None and size > max_bytes:
            raise MessageError(ErrorCode.MESSAGE_TOO_LARGE, f"message over {max_bytes} bytes")
        if isinstance(raw, bytes):
            try:  # orjson when it decodes as `json` does (text it refuses says why below)
                return loads_exact(raw)
            except LookupError:
                raw = raw.decode()
    except UnicodeError:  # bytes that are not UTF-8, or text with a surrogate in it
        raise MessageError(ErrorCode.INVALID_UTF8, "message is not valid UTF-8") from None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise MessageError(ErrorCode.MALFORMED_MESSAGE, "message is not valid JSON") from None
    # a backslash is a byte to find (memchr); a surrogate escape is rarer, a lone one rarest
    if "\\" in raw and _SURROGATE_ESCAPE.search(raw) and _lone_surrogate_escape(raw):
        raise MessageError(ErrorCode.INVALID_UTF8, "message escapes a lone surrogate")
    return value


_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate_escape(text: str) -> bool:
    """Whether valid JSON text escapes a surrogate that is not half of a pair (a high one
    escaped right before a low one)."""
    # Escaped backslashes become another character first (JSON pairs a run of them from
    # its start, as `replace` does), so that every `\\u` left starts an escape and no
    # two halves come together; then the pairs go: any surrogate escape left is lone.
    unpaired = _PAIR.sub("", text.replace("\\\\", "_"))
    return _SURROGATE_ESCAPE.search(unpaired) is not None


def encode_message(message_id: str, kind: MessageType, channel: str | None, event: str | None,
                   data: JsonValue, timestamp: int, user_id: str | None = None) -> bytes:
    """The bytes of `Message(...).encode()` for a message the server makes, without
    building one (the publish path): only `data` goes through the JSON encoder.

    Raises:
        TypeError, ValueError: as `encode_json`, for `data` JSON cannot hold.
    """
    return b"".join((b'{"id":', quote(message_id), _middle(kind, channel, event), dumps(data),
                     _tail(timestamp, user_id)))


class EventEncoder:
    """Events of one publish call encoded as `encode_message` encodes each: what they share
    (the time, the user, each pair of channel and event names) is encoded once."""

    def __init__(self, timestamp: int, user_id: str | None = None) -> None:
        self._tail = _tail(timestamp, user_id)
        self._middles: dict[tuple[str, str], bytes] = {}

    def encode(self, quoted_id: bytes, channel: str, event: str, data: JsonValue) -> bytes:
        """An event's bytes; `quoted_id` is its id as a JSON string (`jsoncodec.quote`).

        Raises:
            TypeError, ValueError: as `encode_json`, for `data` JSON cannot hold.
        """
        middle = self._middles.get((channel, event))
        if middle is None:
            middle = self._middles[channel, event] = _middle(MessageType.EVENT, channel, event)
        return b'{"id":%s%s%s%s' % (quoted_id, middle, dumps(data), self._tail)


def _middle(kind: MessageType, channel: str | None, event: str | None) -> bytes:
    """A message's bytes between its id and its data."""
    return b',"type":"%s","channel":%s,"event":%s,"data":' % (
        kind.value.encode(), _string(channel), _string(event))


def _tail(timestamp: int, user_id: str | None) -> bytes:
    """A message's bytes after its data."""
    if user_id is None:
        return b',"timestamp":%d}' % timestamp
    return b',"timestamp":%d,"user_id":%s}' % (timestamp, quote(user_id))


def _string(value: str | None) -> bytes:
    return b"null" if value is None else quote(value)


def encode_json(value: JsonValue) -> bytes:
    """Compact UTF-8 JSON, the one encoding used for every body the core writes.

    Raises:
        TypeError: a value JSON cannot hold; ValueError: a circular reference.
    """
    return dumps(value)
