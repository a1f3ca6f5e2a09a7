"""The example chat: rooms, who is online, typing indicators and read receipts.

    python examples/chat/server.py --port 6001

then open http://127.0.0.1:6001/ in two browser windows. Messages are client events on
`private-room.NAME`; who is online is the presence channel `presence-room.NAME`. A
backend can post into a room through the HTTP API (shown as a system message):

    curl -H "Authorization: Bearer $KEY" -d '{"channel":"private-room.general",
      "event":"message.sent","data":{"user":"server","text":"Hello from the API"}}' \\
      http://127.0.0.1:6001/api/publish

Authentication is a demo: the token is the display name the user picked, with a key the
browser keeps (`{"name": …, "key": …}` as JSON, or just the name). A name that is online
belongs to the key that took it: another key is refused (401) until every connection of
that name has gone, so nobody else is shown its messages as their own. A real application
would verify a session or a signed token here.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path

from realtime_asyncio import RealtimeServer, User

MAX_NAME_LENGTH = 32


def display_name(token: str | None) -> str | None:
    """The token as a display name: 1-32 characters, no control characters."""
    if token is None:
        return None
    name = token.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return None
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        return None
    return name


def credentials(token: str | None) -> tuple[str | None, str | None]:
    """The display name and the browser's key in a token (the key is None for a bare name)."""
    if token is None or not token.startswith("{"):
        return display_name(token), None
    try:
        fields = json.loads(token)
    except ValueError:
        return None, None
    if not isinstance(fields, dict) or not isinstance(fields.get("name"), str):
        return None, None
    key = fields.get("key")
    return display_name(fields["name"]), key if isinstance(key, str) else None


class Names:
    """Who holds each name: the key of the browser that took it, while it is online."""

    def __init__(self, online: Callable[[str], bool]) -> None:
        self._online = online
        self._keys: dict[str, str | None] = {}

    def claim(self, name: str, key: str | None) -> bool:
        """Take `name` for `key`, unless another key holds it while it is online."""
        if name in self._keys and self._keys[name] != key and self._online(name):
            return False
        self._keys[name] = key
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description="The realtime_proto example chat.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=6001, help="port to listen on")
    parser.add_argument(
        "--api-key", default=None, help="key for the HTTP API (generated and printed if not given)"
    )
    args = parser.parse_args()

    server = RealtimeServer(
        host=args.host,
        port=args.port,
        static_dir=Path(__file__).parent,
        api_key=args.api_key,
        history="private-room.*=100:300",  # a new joiner sees the last messages
    )

    names = Names(lambda name: bool(server.node.hub.connection_ids(user_id=name)))

    @server.authenticate
    def authenticate(request) -> User | bool | None:  # type: ignore[no-untyped-def]
        # request.token: str | None, request.headers, request.query
        name, key = credentials(request.token)
        if name is None:
            return None  # anonymous: public channels only
        if not names.claim(name, key):
            return False  # 401: the page says the name is taken
        return User(id=name, info={"name": name})

    server.channel("private-room.*").authorize(
        lambda connection, channel: connection.authenticated
    )
    # A dict means allowed, with the presence info the other members see.
    server.channel("presence-room.*").authorize(
        lambda connection, channel: {"name": connection.user_id}
    )

    print(f"chat on http://{args.host}:{args.port}/", flush=True)
    print(f"API key: {server.settings.api_key}", flush=True)
    server.run()  # blocks; Ctrl-C stops


if __name__ == "__main__":
    main()
