"""Envelopes into broker messages: a run of publishes on one topic becomes one bundle."""

from __future__ import annotations

from .actions import BrokerPublish, Deliver, DeliverBundle, Disconnect, HubAction
from .envelope import Outgoing, encode

__all__ = ["bundle"]

#: a bundle's header, but for what each envelope adds to it (as `bundle` counts)
_HEADER_BYTES = 100


def bundle(actions: list[HubAction | Outgoing], origin: bytes, incarnation: int,
           limit: int) -> list[HubAction]:
    """The broker messages for the envelopes among `actions`: those that follow each
    other on one topic (this node's own deliveries between them aside) as one bundle,
    up to `limit` bytes, so a burst pays the broker's cost per message once. The order
    of publishes is kept. `origin` is the node id as the header quotes it (JSON)."""
    out: list[HubAction] = []
    run: list[Outgoing] = []  # the open bundle
    topic, follows = None, 0  # its topic, the sequence that may join it
    run_at = size = 0  # where it goes in `out`; its bytes so far
    for action in actions:
        if type(action) is Outgoing:
            length = len(action.payload) + 6  # and its length in the header
            if action.exclude is not None or action.position is not None:
                length += _extra_bytes(action)
            if action.topic == topic and action.sequence == follows \
                    and size + length <= limit:
                run.append(action)
                size += length
                follows += 1
                continue
            _close(run, out, run_at, origin, incarnation)
            run, run_at, size = [action], len(out), length + _HEADER_BYTES
            topic, follows = action.topic, action.sequence + 1
            out.append(action)  # type: ignore[arg-type]  # replaced at the close
        elif isinstance(action, (Deliver, DeliverBundle, Disconnect)):  # this node's own
            out.append(action)
        else:
            _close(run, out, run_at, origin, incarnation)
            run, topic = [], None
            out.append(action)  # type: ignore[arg-type]
    _close(run, out, run_at, origin, incarnation)
    return out


def _close(run: list[Outgoing], out: list[HubAction], at: int, origin: bytes,
           incarnation: int) -> None:
    if run:
        out[at] = BrokerPublish(run[0].topic, encode(origin, incarnation, run))


def _extra_bytes(envelope: Outgoing) -> int:
    """What an envelope's exclude and position add to a bundle's header."""
    extra = 0
    if envelope.exclude is not None:
        extra += len(envelope.exclude) + 3
    if envelope.position is not None:
        extra += len(envelope.position[0]) + 24
    return extra
