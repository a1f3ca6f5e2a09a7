"""Pusher applications (id, key, secret) and the HMAC-SHA256 signatures they check."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import final

from ..errors import ConfigError

__all__ = ["SOCKET_ID", "PusherApp", "parse_app", "parse_apps", "sign"]

#: what the SDKs accept as a socket id (they refuse other forms)
SOCKET_ID = re.compile(r"\d+\.\d+")
_APP_ID = re.compile(r"[0-9]+")
_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def sign(secret: str, text: str) -> str:
    """The hex HMAC-SHA256 of `text` under `secret`, as every Pusher signature is."""
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


@final
@dataclass(frozen=True, slots=True)
class PusherApp:
    """One Pusher application; the secret never appears in its repr."""

    id: str
    key: str
    secret: str = field(repr=False)
    #: added to its channel names in the Hub when several apps share a server (isolation);
    #: empty with one app, whose channels are the native protocol's channels
    namespace: str = ""

    def signature_ok(self, text: str, signature: str) -> bool:
        """Whether `signature` is this app's HMAC of `text` (constant-time)."""
        return hmac.compare_digest(sign(self.secret, text), signature)

    def channel_auth_ok(self, socket_id: str, channel: str, auth: object,
                        channel_data: str | None) -> bool:
        """Whether `auth` ("key:signature") signs `socket_id:channel[:channel_data]`,
        with `channel_data` exactly as the client sent it."""
        if not isinstance(auth, str):
            return False
        key, _, signature = auth.partition(":")
        text = f"{socket_id}:{channel}" + (f":{channel_data}" if channel_data is not None else "")
        return hmac.compare_digest(key, self.key) and self.signature_ok(text, signature)

    def hub_channel(self, name: str) -> str:
        """The Hub's name of one of this app's channels."""
        return f"{name}{self.namespace}" if self.namespace else name

    def hub_user(self, user_id: str) -> str:
        """The Hub's id of one of this app's users (namespaced like its channels)."""
        return f"{user_id}{self.namespace}" if self.namespace else user_id


def parse_app(text: str, *, namespaced: bool = False) -> PusherApp:
    """`ID:KEY:SECRET` (the `--pusher-app` option) as an app.

    Raises:
        ConfigError: not three parts, a non-numeric id or a key with other characters.
    """
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError("--pusher-app must be ID:KEY:SECRET")
    app_id, key, secret = parts
    if not _APP_ID.fullmatch(app_id):
        raise ConfigError(f"--pusher-app: the app id must be digits, not {app_id!r}")
    if not _KEY.fullmatch(key):
        raise ConfigError("--pusher-app: the key may hold letters, digits, '-' and '_' only")
    return PusherApp(app_id, key, secret, f":app{app_id}" if namespaced else "")


def parse_apps(items: tuple[str, ...]) -> tuple[PusherApp, ...]:
    """Every `--pusher-app`; several apps get separate channel namespaces.

    Raises:
        ConfigError: a bad item, or two apps with the same id or key.
    """
    apps = tuple(parse_app(item, namespaced=len(items) > 1) for item in items)
    if len({a.id for a in apps}) != len(apps) or len({a.key for a in apps}) != len(apps):
        raise ConfigError("--pusher-app: two apps have the same id or key")
    return apps
