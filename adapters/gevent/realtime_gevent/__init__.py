"""realtime_gevent: the gevent adapter, with the embedding API all runtimes share."""

from realtime_proto import User
from realtime_proto.actions import AuthenticationRequest, ConnectionInfo
from realtime_server.base import ServerNotStarted
from realtime_server.edge import Settings

from .server import RealtimeServer

__all__ = ["AuthenticationRequest", "ConnectionInfo", "RealtimeServer", "ServerNotStarted",
           "Settings", "User"]
