"""Node statistics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from .errors import ErrorCode

if TYPE_CHECKING:
    from .statistics import NodeStatistics

__all__ = ["Histogram", "HistogramSnapshot", "render_metrics"]

#: upper bounds in seconds, for delivery latencies
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@final
@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative counts per upper bound, the sum and the count (Prometheus histogram)."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float
    count: int


class Histogram:
    """Counts observations into fixed buckets."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Count `count` observations of one value."""
        self._counts[bisect.bisect_left(self._bounds, value)] += count
        self._total += value * count

    def snapshot(self) -> HistogramSnapshot:
        """A frozen copy for statistics."""
        cumulative, running = [], 0
        for count in self._counts[:-1]:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self._bounds, tuple(cumulative), self._total,
                                 sum(self._counts))


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(stats: NodeStatistics) -> bytes:
    """The /metrics page for one node."""
    hub = stats.hub
    base = f'node="{_label(stats.node_id)}",runtime="{_label(stats.runtime)}"'
    if stats.worker is not None:
        base += f',worker="{stats.worker}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str,
               samples: list[tuple[str, float | int]]) -> None:
        lines.append(f"# HELP realtime_{name} {help_text}")
        lines.append(f"# TYPE realtime_{name} {kind}")
        for labels, value in samples:
            joined = ",".join(filter(None, [base, labels]))
            lines.append(f"realtime_{name}{{{joined}}} {value}")

    transports = ("websocket", "pusher", "sse", "polling", "memory")
    metric("connections", "gauge", "Open client connections by transport.",
           [(f'transport="{t}"', hub.connections.get(t, 0)) for t in transports])
    metric("subscriptions", "gauge", "Channel subscriptions on this node.",
           [("", hub.subscriptions)])
    metric("channels", "gauge", "Channels with subscribers on this node.", [("", hub.channels)])
    metric("messages_in_total", "counter", "Messages received from clients.",
           [("", hub.messages_in)])
    metric("messages_out_total", "counter", "Messages delivered to clients (per recipient).",
           [("", hub.messages_out)])
    metric("published_total", "counter", "Messages published on this node.",
           [("", hub.published)])
    metric("errors_total", "counter", "Errors sent to clients, by code.",
           [(f'code="{int(code)}",name="{code.slug}"', hub.errors.get(code, 0))
            for code in ErrorCode])
    metric("encodings_total", "counter", "Frames encoded for fan-out, by framing.",
           [(f'framing="{k}"', v) for k, v in sorted(stats.encodings.items())])
    metric("pusher_webhooks_total", "counter",
           "Pusher webhook events sent or dropped, and POSTs retried.",
           [(f'result="{k}"', v) for k, v in sorted(stats.pusher_webhooks.items())])
    metric("slow_consumers_total", "counter", "Connections dropped for not reading.",
           [("", stats.slow_consumers)])
    metric("dropped_messages_total", "counter",
           "Messages dropped or conflated for slow consumers (drop_oldest, latest).",
           [("", stats.dropped_messages)])
    metric("connection_backlog_bytes", "gauge",
           "Bytes waiting for each connection that is behind (the slow ones only).",
           [(f'connection="{_label(c)}"', n) for c, n in sorted(stats.backlogs.items())[:100]])
    metric("http_responses_total", "counter", "HTTP responses by status.",
           [(f'status="{k}"', v) for k, v in sorted(stats.http_responses.items())])
    metric("forwarded_requests_total", "counter",
           "Long-poll, send and close requests for another node's connection: sent there, "
           "answered, expired (404); and served here for another node.",
           [(f'outcome="{k}"', stats.forwarded.get(k, 0))
            for k in ("sent", "answered", "expired", "served")])
    metric("broker_connected", "gauge", "1 while the broker connection is up.",
           [("", int(hub.broker_connected))])
    metric("broker_topics", "gauge", "Broker topics this node subscribes to.",
           [("", hub.broker_topics)])
    def histogram(name: str, text: str, snapshot: HistogramSnapshot, labels: str = "") -> None:
        name = f"realtime_{name}"
        if f"# TYPE {name} histogram" not in lines:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} histogram")
        at = ",".join(filter(None, [base, labels]))
        for bound, count in zip(snapshot.bounds, snapshot.cumulative, strict=True):
            lines.append(f'{name}_bucket{{{at},le="{bound}"}} {count}')
        lines.append(f'{name}_bucket{{{at},le="+Inf"}} {snapshot.count}')
        lines.append(f"{name}_sum{{{at}}} {snapshot.total}")
        lines.append(f"{name}_count{{{at}}} {snapshot.count}")

    histogram("broker_delivery_seconds", "Time from publish on another node to delivery here.",
              hub.broker_latency)
    histogram("broker_publish_seconds",
              "Time from publish to the broker taking the message (written or confirmed).",
              hub.broker_driver.publish_latency or Histogram().snapshot())
    metric("bytes_in_total", "counter", "Bytes received from clients.",
           [("", stats.bytes_in)])
    metric("bytes_out_total", "counter", "Bytes handed to sockets for clients.",
           [("", stats.bytes_out)])
    driver = hub.broker_driver
    metric("broker_published_total", "counter",
           "Broker messages (an envelope or a bundle) the broker accepted from this node.",
           [("", driver.published)])
    metric("broker_received_total", "counter",
           "Broker messages (an envelope or a bundle) this node received.",
           [("", driver.received)])
    metric("broker_queued", "gauge",
           "Publishes waiting for the broker (they are sent after a reconnect).",
           [("", driver.queued)])
    metric("broker_dropped_total", "counter",
           "Publishes lost for good: the outage queue overflowed or the broker refused them.",
           [("", driver.dropped)])
    metric("broker_reconnects_total", "counter", "Reconnections to the broker.",
           [("", driver.reconnects)])
    metric("broker_stalled", "gauge",
           "1 while connected but nothing queued has gone through the broker for a second.",
           [("", int(driver.stalled))])
    metric("history_store_available", "gauge",
           "1 while the shared history store answers (appends fail at once otherwise).",
           [("", int(driver.history_available))])
    metric("history_queued", "gauge", "History appends and read positions waiting for the store.",
           [("", driver.history_queued)])
    metric("history_overflowed_total", "counter",
           "History appends failed unsent because the store's queue was full.",
           [("", driver.history_overflowed)])
    metric("broker_envelopes_lost_total", "counter",
           "Envelopes from other nodes that never arrived (sequence gaps).",
           [("", hub.envelopes_lost)])
    metric("broker_envelopes_duplicate_total", "counter", "Duplicate envelopes dropped.",
           [("", hub.envelopes_duplicate)])
    metric("broker_envelopes_stale_total", "counter",
           "Envelopes of a previous run of a restarted node, dropped.",
           [("", hub.envelopes_stale)])
    metric("messages_lost_reported_total", "counter",
           "Lost messages reported to subscribers (messages.lost), once per subscriber.",
           [("", hub.lost_reported)])
    metric("recoveries_total", "counter", "Subscriptions that asked to recover, by outcome.",
           [(f'outcome="{name}"', hub.recoveries.get(ok, 0))
            for ok, name in ((True, "recovered"), (False, "failed"))])
    metric("history_failures_total", "counter",
           "Shared-history appends and reads that failed (messages went without a position).",
           [("", hub.history_failures)])
    metric("cluster_nodes", "gauge", "Nodes this node hears, itself included.",
           [("", hub.nodes)])
    metric("connections_refused_total", "counter",
           "Connections refused at the door: node (max_connections, 503), handshakes "
           "(max_handshakes_per_second, 503), user (max_connections_per_user, 429).",
           [(f'limit="{k}"', stats.refused_connections.get(k, 0))
            for k in ("node", "handshakes", "user")])
    metric("connections_replaced_total", "counter",
           "Connections closed (4013) for a newer one of the same user.",
           [("", hub.connections_replaced)])
    hooks = stats.webhooks
    for name, attribute, kind, text in (
            ("webhook_events_sent_total", "sent", "counter",
             "Webhook events the backend accepted (2xx)."),
            ("webhook_retries_total", "retried", "counter",
             "Webhook POSTs repeated after a failure (5xx, 408, 429, timeout, no answer)."),
            ("webhook_events_dropped_total", "dropped", "counter",
             "Webhook events dropped: the queue was full, or the backend refused them (4xx)."),
            ("webhook_events_queued", "queued", "gauge", "Webhook events waiting.")):
        if hooks:
            metric(name, kind, text,
                   [(f'url="{_label(h.url)}"', getattr(h, attribute)) for h in hooks])
    for hook in hooks:
        histogram("webhook_delivery_seconds",
                  "Time from a presence transition's report to the backend's 2xx.",
                  hook.latency, f'url="{_label(hook.url)}"')
    return ("\n".join(lines) + "\n").encode()
