"""realtime_trio: the trio adapter, with the embedding API of realtime_asyncio."""

from realtime_asyncio.base import ServerNotStarted
from realtime_asyncio.edge import Settings
from realtime_proto import User
from realtime_proto.actions import AuthenticationRequest, ConnectionInfo

from .server import RealtimeServer

__all__ = ["AuthenticationRequest", "ConnectionInfo", "RealtimeServer", "ServerNotStarted",
           "Settings", "User"]
