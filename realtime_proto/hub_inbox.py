"""What a client sends the Hub: subscribe, unsubscribe, client events (typing and read
signals among them), ping and refresh, each checked before anything changes."""

from __future__ import annotations

from typing import assert_never

from .actions import ClientEventSent, Notify, SaveReadPosition
from .channels import channel_kind, pattern_matches
from .channels import validate_channel_name as _valid
from .config import HubConfig
from .connection import Connection
from .errors import ErrorCode, MessageError
from .hub_connections import Connections
from .hub_history import ChannelHistory
from .hub_outbox import Outbox
from .hub_subscriptions import Subscriptions
from .hub_webhooks import WebhookEvents
from .message import Message, MessageType, decode_json
from .signals import READ_EVENT, TYPING_EVENT, ChannelSignals, read_position

__all__ = ["ClientMessages"]


class ClientMessages:
    """Reads a client's messages (rate limited) and hands each to the part that owns it;
    a bad one gets an `error` with its code and changes nothing."""

    def __init__(self, config: HubConfig, out: Outbox, connections: Connections,
                 subscriptions: Subscriptions, history: ChannelHistory,
                 signals: ChannelSignals, webhooks: WebhookEvents) -> None:
        self._config = config
        self._out = out
        self._connections = connections
        self._subscriptions = subscriptions
        self._history = history
        self._signals = signals
        self._webhooks = webhooks
        self.messages_in = 0

    def receive(self, conn: Connection, data: object, now: float) -> None:
        """One message from a client: JSON text or bytes, or an already decoded object."""
        conn.last_activity_at = now
        conn.pinged = False
        self.messages_in += 1
        if conn.message_bucket is not None and (wait := conn.message_bucket.take(now)):
            self._rate_limited(conn, wait, now)
            return
        try:
            if isinstance(data, str | bytes):
                message = Message.from_json(data,
                                            max_bytes=self._config.limits.max_message_bytes)
            else:
                message = Message.from_dict(data)
            self._dispatch(conn, message, now)
        except MessageError as error:
            channel = data.get("channel") if isinstance(data, dict) else None
            if channel is None and isinstance(data, str | bytes):
                channel = _channel_hint(data)
            self._out.error(conn, error.code, error.message, now,
                            channel if isinstance(channel, str) else None)

    def _dispatch(self, conn: Connection, message: Message, now: float) -> None:
        kind = message.type
        match kind:
            case MessageType.SUBSCRIBE:
                if conn.subscribe_bucket is not None and (
                        wait := conn.subscribe_bucket.take(now)):
                    self._rate_limited(conn, wait, now, message.channel)
                    return
                self._subscriptions.subscribe(conn, _valid(message.channel or ""),
                                              message.data, now)
            case MessageType.UNSUBSCRIBE:
                self._subscriptions.unsubscribe(conn, _valid(message.channel or ""), now)
            case MessageType.EVENT:
                self._client_event(conn, message, now)
            case MessageType.PING:
                _, payload = self._out.encode(MessageType.PONG, now)
                self._out.deliver((conn.id,), payload)
            case MessageType.REFRESH:
                self._connections.refresh(conn, message.data, now)
            case MessageType.PONG | MessageType.ERROR:
                pass
            case _:
                assert_never(kind)

    def _rate_limited(self, conn: Connection, wait: float, now: float,
                      channel: str | None = None) -> None:
        self._out.error(conn, ErrorCode.RATE_LIMITED, "rate limited", now, channel,
                        retry_after=round(wait, 3))

    def _client_event(self, conn: Connection, message: Message, now: float) -> None:
        if not message.channel or not message.event:
            raise MessageError(ErrorCode.MISSING_FIELD,
                               "a client event needs 'channel' and 'event'")
        channel = _valid(message.channel)
        if not channel_kind(channel).needs_authorization:
            raise MessageError(ErrorCode.FORBIDDEN,
                               "client events are allowed on private and presence channels only")
        if channel not in conn.channels:
            raise MessageError(ErrorCode.FORBIDDEN, f"not subscribed to {channel}")
        user_id = conn.member_id(channel)
        data = message.data
        ephemeral = message.event in (TYPING_EVENT, READ_EVENT)
        if message.event == TYPING_EVENT and user_id is not None and (
                not self._signals.typing_allowed(channel, user_id, now)):
            return  # coalesced: the others were told a moment ago
        if message.event == READ_EVENT:
            position = read_position(data)
            if user_id is None or not self._signals.read(channel, user_id, position):
                return
            data = {"position": position}
            streams = self._history.streams
            rule = streams.rule(channel)
            if rule is not None and streams.shared:
                self._out.actions.append(SaveReadPosition(channel=channel, user_id=user_id,
                                                          position=position, ttl=rule.ttl))
        self._history.broadcast(((channel, message.event, data, conn.id),), now, user_id,
                                ephemeral)
        if self._config.report_events:
            self._out.actions.append(
                ClientEventSent(channel, message.event, data, user_id, conn.id))
        if any(pattern_matches(p, channel) for p in self._config.client_event_webhooks):
            self._out.actions.append(Notify((self._webhooks.event(
                "client_event", now, channel=channel, event=message.event, data=data,
                user_id=user_id, connection_id=conn.id),)))


def _channel_hint(raw: str | bytes) -> str | None:
    """The `channel` of a message that failed validation, so the error can name it."""
    try:
        value = decode_json(raw)
    except MessageError:
        return None
    channel = value.get("channel") if isinstance(value, dict) else None
    return channel if isinstance(channel, str) else None
