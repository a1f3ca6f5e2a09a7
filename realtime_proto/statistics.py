"""Frozen snapshots of a Hub's and a Node's counters, for /metrics, /health and /api/stats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from .events import BrokerReported
from .metrics import HistogramSnapshot

if TYPE_CHECKING:
    from .notify import WebhookStatistics

__all__ = ["HubStatistics", "NodeStatistics"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HubStatistics:
    """Counters and gauges of one Hub, for /metrics."""

    connections: Mapping[str, int]
    subscriptions: int
    channels: int
    messages_in: int
    messages_out: int
    published: int
    errors: Mapping[int, int]
    broker_connected: bool
    envelopes_lost: int
    envelopes_duplicate: int
    nodes: int
    recoveries: Mapping[bool, int]
    #: shared-history appends and reads that failed (messages went out without a position)
    history_failures: int
    #: envelopes of a previous run of a restarted node, dropped
    envelopes_stale: int = 0
    #: messages local subscribers were told they lost (`messages.lost`), per subscriber
    lost_reported: int = 0
    #: broker topics this node asked for: its channels, its users, and the cluster topic
    broker_topics: int
    #: publish on another node → delivery here
    broker_latency: HistogramSnapshot
    #: the broker driver's counters, as last reported by the adapter
    broker_driver: BrokerReported
    #: connections closed for a newer one of the same user (`Limits.replace_oldest`)
    connections_replaced: int = 0



@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatistics:
    """Counters and gauges of one Node (and its Hub), for /metrics and /health."""

    node_id: str
    runtime: str
    transports: int
    poll_sessions: int
    #: long-poll requests waiting for a message
    held_polls: int
    encodings: dict[str, int]
    #: Pusher webhook requests by outcome ("sent", "failed")
    #: Pusher webhook requests by outcome (sent, failed)
    pusher_webhooks: dict[str, int]
    slow_consumers: int
    #: messages dropped or conflated by the drop_oldest and latest policies
    dropped_messages: int
    #: bytes waiting per connection that has any (the slow ones)
    backlogs: dict[str, int]
    http_responses: dict[int, int]
    bytes_in: int
    bytes_out: int
    hub: HubStatistics
    #: the worker index under `realtime serve --workers`, else None
    worker: int | None = None
    #: requests for another node's connection: sent, answered, expired; and served here
    forwarded: dict[str, int] = field(default_factory=dict)
    #: each webhook URL's delivery counters
    webhooks: tuple[WebhookStatistics, ...] = ()
    #: connections refused at the door, by limit: "node" (503), "handshakes" (503),
    #: "user" (429)
    refused_connections: Mapping[str, int] = field(default_factory=dict)
