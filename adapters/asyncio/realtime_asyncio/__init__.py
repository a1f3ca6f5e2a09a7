"""realtime_asyncio: the asyncio adapter, its embedding API, the ASGI application and the
Python client."""

from realtime_proto import User
from realtime_proto.actions import AuthenticationRequest, ConnectionInfo
from realtime_server.base import ServerNotStarted
from realtime_server.edge import Settings

from .client import Channel, RealtimeClient
from .server import RealtimeServer

__all__ = [
    "AuthenticationRequest",
    "Channel",
    "ConnectionInfo",
    "RealtimeClient",
    "RealtimeServer",
    "ServerNotStarted",
    "Settings",
    "User",
]
