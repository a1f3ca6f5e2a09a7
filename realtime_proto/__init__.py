"""realtime_proto: the sans-IO core of a realtime messaging server."""

from .channels import ChannelKind, ChannelRule
from .config import Epoch, HubConfig, Limits, NodeConfig, StaticFile
from .errors import ConfigError, ErrorCode, LocalProtocolError, MessageError, RealtimeError
from .events import ConnectionId, TransportId, User
from .hub import Hub
from .message import Message, MessageType
from .node import Node

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
    "RealtimeError",
    "StaticFile",
    "TransportId",
    "User",
]
