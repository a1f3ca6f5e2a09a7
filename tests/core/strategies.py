"""Chunk-splitting strategies and feeding helpers shared by the framing tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, TypeVar

from hypothesis import strategies as st

from realtime_proto.framing import FramingEvent

__all__ = ["Fed", "bytewise", "chunkings", "feed", "feed_all_ways", "split_at"]


class _Fedable(Protocol):
    def receive_data(self, data: bytes, *, now: float) -> None: ...
    def events(self) -> list[FramingEvent]: ...
    def data_to_send(self) -> list[bytes]: ...
    @property
    def closed(self) -> bool: ...


F = TypeVar("F", bound=_Fedable)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fed:
    """What a framing produced from one way of feeding it."""

    events: list[FramingEvent]
    output: bytes
    closed: bool


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut `data` at the sorted positions `cuts` (each strictly inside it)."""
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    """One chunk per byte."""
    return [data[i : i + 1] for i in range(len(data))]


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Lists of non-empty chunks that join to `data`."""
    if len(data) <= 1:
        return st.just([data] if data else [])
    cuts = st.sets(st.integers(1, len(data) - 1), max_size=min(len(data) - 1, 24))
    return cuts.map(lambda chosen: split_at(data, sorted(chosen)))


def feed(
    framing: F,
    chunks: Sequence[bytes],
    *,
    now: float = 0.0,
    react: Callable[[F, FramingEvent], None] | None = None,
) -> Fed:
    """Feed chunks one call at a time; `react` answers each event as a caller would."""
    events: list[FramingEvent] = []
    output: list[bytes] = []
    for chunk in chunks:
        framing.receive_data(chunk, now=now)
        pending = framing.events()
        while pending:
            event = pending.pop(0)
            events.append(event)
            if react is not None:
                react(framing, event)
                pending += framing.events()
        output += framing.data_to_send()
    return Fed(events=events, output=b"".join(output), closed=framing.closed)


def feed_all_ways(
    make_framing: Callable[[], F],
    data: bytes,
    chunks: Sequence[bytes] | None = None,
    *,
    react: Callable[[F, FramingEvent], None] | None = None,
) -> Fed:
    """Feed `data` whole, one byte at a time and (if given) as `chunks`.

    Asserts that every way gives the same events, output and closed flag, and
    returns that result.
    """
    whole = feed(make_framing(), [data], react=react)
    assert feed(make_framing(), bytewise(data), react=react) == whole
    if chunks is not None:
        assert feed(make_framing(), chunks, react=react) == whole
    return whole
