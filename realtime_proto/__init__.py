"""realtime_proto: the sans-IO core of a realtime messaging server."""

from .channels import ChannelKind, ChannelRule
from .config import Epoch, HubConfig, Limits, NodeConfig, StaticFile
from .errors import ConfigError, ErrorCode, LocalProtocolError, MessageError, RealtimeError
from .events import ConnectionId, TransportId, TransportKind, User
from .hub import Hub
from .message import Message, MessageType
from .node import Node
from .publication import Publication

#: the one version of the Python packages (hatch reads it; clients/js/package.json agrees)
__version__ = "0.1.0"

__all__ = [
    "ChannelKind",
    "ChannelRule",
    "ConfigError",
    "ConnectionId",
    "Epoch",
    "ErrorCode",
    "Hub",
    "HubConfig",
    "Limits",
    "LocalProtocolError",
    "Message",
    "MessageError",
    "MessageType",
    "Node",
    "NodeConfig",
    "Publication",
    "RealtimeError",
    "StaticFile",
    "TransportId",
    "TransportKind",
    "User",
]
