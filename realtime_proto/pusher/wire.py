"""The Pusher protocol as a wire codec over WebSocket (one codec per app)."""

from __future__ import annotations

from dataclasses import replace

from ..events import ConnectionId
from ..framing.websocket import frame_message
from ..wire import HubInputs, WireCodec
from . import codec
from .apps import PusherApp

__all__ = ["PusherCodec"]


class PusherCodec(WireCodec):
    """pusher-js and the Pusher SDKs on the Hub: frames translated by `codec`."""

    name = "pusher"
    #: a socket id is no secret (the app backend and webhooks see it): the native
    #: `/send` and `/close` must not reach these connections
    http_commands = False

    def __init__(self, app: PusherApp) -> None:
        self.app = app

    def encode(self, payload: bytes, event_id: str | None, user: str | None) -> bytes:
        return b"".join(frame_message(f) for f in codec.encode_payload(payload, user))

    def notice(self, payload: bytes) -> bytes:
        return self.encode(payload, None, None)

    def decode(self, connection_id: ConnectionId, user: str | None, data: str | bytes, *,
               max_bytes: int) -> HubInputs:
        inbound = codec.decode_frame(self.app, connection_id, data, max_bytes=max_bytes)
        if inbound.user is not None:
            signed_in = replace(inbound.user, id=self.app.hub_user(inbound.user.id))
            return HubInputs(reply=_framed(inbound.reply), user=signed_in,
                           user_tag=inbound.user.id)
        if inbound.user_channel is not None:
            channel = codec.USER_CHANNEL_PREFIX + inbound.user_channel
            return HubInputs(reply=frame_message(
                codec.subscription_succeeded(channel) if inbound.user_channel == user else
                codec.subscription_refused(channel, "not signed in as that user")))
        return HubInputs(message=inbound.message, grant=inbound.grant,
                       reply=_framed(inbound.reply))

    def close_code(self, code: int) -> int:
        return codec.close_code(code)

    def error(self, code: int, message: str) -> bytes:
        return frame_message(codec.error_frame(code, message))


def _framed(frame: bytes | None) -> bytes | None:
    return None if frame is None else frame_message(frame)
