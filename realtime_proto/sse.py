"""SSE connections on the Node: the stream that replaces an HTTP request, and the
subscriptions its URL asks for (resumed from the browser's `Last-Event-ID`)."""

from __future__ import annotations

from . import jsonwire
from .config import NodeConfig
from .framing import RequestReceived
from .framing.sse import SseFraming
from .message import JsonValue
from .sockets import Transport

__all__ = ["start_stream", "subscriptions"]


def start_stream(transport: Transport, config: NodeConfig,
                 cors: tuple[tuple[str, str], ...], now: float) -> None:
    """Turn the socket of a `GET /sse` into an event stream in the native codec."""
    transport.framing.take_over()  # type: ignore[union-attr]
    transport.framing = SseFraming(now=now, extra_headers=cors,
                                   heartbeat_interval=config.sse_heartbeat_interval,
                                   retry_ms=config.sse_retry_ms)
    transport.codec = jsonwire.SSE


def subscriptions(request: RequestReceived) -> list[dict[str, JsonValue]]:
    """The `subscribe` messages of `?channels=a,b`. EventSource resends the id of the last
    event with one (WHATWG SSE §9.2.4): "epoch:offset:channel" of a channel with history,
    so that channel recovers from there."""
    last_epoch, _, rest = request.headers.get("last-event-id", "").partition(":")
    last_offset, _, last_channel = rest.partition(":")
    messages: list[dict[str, JsonValue]] = []
    for channel in filter(None, request.query.get("channels", "").split(",")):
        message: dict[str, JsonValue] = {"type": "subscribe", "channel": channel}
        if channel == last_channel and last_offset.isdigit():
            message["data"] = {"recover": {"epoch": last_epoch, "offset": int(last_offset)}}
        messages.append(message)
    return messages
