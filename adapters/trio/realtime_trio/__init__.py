"""realtime_trio: the trio adapter, with the embedding API of realtime_asyncio.

``RealtimeServer`` is imported on first use, so that the two runtime-neutral modules here,
``realtime_trio.base`` (what every runtime's server shares) and ``realtime_trio.bridge``
(asyncio broker clients for other runtimes), import without trio: the gevent adapter and
the selectors example use them too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from realtime_asyncio.edge import Settings

from realtime_proto import User
from realtime_proto.actions import AuthenticationRequest, ConnectionInfo

if TYPE_CHECKING:
    from .server import RealtimeServer

__all__ = ["AuthenticationRequest", "ConnectionInfo", "RealtimeServer", "Settings", "User"]


def __getattr__(name: str) -> object:
    if name == "RealtimeServer":
        from .server import RealtimeServer

        return RealtimeServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
