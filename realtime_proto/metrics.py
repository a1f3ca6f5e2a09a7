"""Node statistics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ErrorCode

if TYPE_CHECKING:
    from .node import NodeStatistics

__all__ = ["render_metrics"]


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(stats: NodeStatistics) -> bytes:
    """The /metrics page for one node."""
    hub = stats.hub
    base = f'node="{_label(stats.node_id)}",runtime="{_label(stats.runtime)}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str,
               samples: list[tuple[str, float | int]]) -> None:
        lines.append(f"# HELP realtime_{name} {help_text}")
        lines.append(f"# TYPE realtime_{name} {kind}")
        for labels, value in samples:
            joined = ",".join(filter(None, [base, labels]))
            lines.append(f"realtime_{name}{{{joined}}} {value}")

    transports = ("websocket", "sse", "polling", "memory")
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
    metric("slow_consumers_total", "counter", "Connections dropped for not reading.",
           [("", stats.slow_consumers)])
    metric("http_responses_total", "counter", "HTTP responses by status.",
           [(f'status="{k}"', v) for k, v in sorted(stats.http_responses.items())])
    metric("broker_connected", "gauge", "1 while the broker connection is up.",
           [("", int(hub.broker_connected))])
    metric("broker_topics", "gauge", "Broker topics this node subscribes to.",
           [("", hub.broker_topics)])
    metric("broker_envelopes_lost_total", "counter",
           "Envelopes from other nodes that never arrived (sequence gaps).",
           [("", hub.envelopes_lost)])
    metric("broker_envelopes_duplicate_total", "counter", "Duplicate envelopes dropped.",
           [("", hub.envelopes_duplicate)])
    metric("recoveries_total", "counter", "Subscriptions that asked to recover, by outcome.",
           [(f'outcome="{name}"', hub.recoveries.get(ok, 0))
            for ok, name in ((True, "recovered"), (False, "failed"))])
    metric("cluster_nodes", "gauge", "Nodes this node hears, itself included.",
           [("", hub.nodes)])
    return ("\n".join(lines) + "\n").encode()
