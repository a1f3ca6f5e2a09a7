"""Start a real RealtimeServer on a free loopback port inside the test's event loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from realtime_asyncio import RealtimeServer

from realtime_proto.jwt import encode_hs256

API_KEY = "test-api-key"
SECRET = "test-secret"
TRANSPORTS = ["websocket", "sse", "polling"]


def token(sub: str, *, channels: list[str] | None = None, ttl: int = 600,
          **claims: Any) -> str:
    """A connection token for the test server."""
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    if channels is not None:
        body["channels"] = channels
    return encode_hs256(body, SECRET)


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[RealtimeServer]:
    """A server on 127.0.0.1 with an ephemeral port, closed at the end."""
    options: dict[str, Any] = {"port": 0, "api_key": API_KEY, "jwt_secret": SECRET}
    options.update(settings)
    server = RealtimeServer(**options)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose(timeout=2)
