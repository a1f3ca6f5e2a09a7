"""Deterministic time and ids for tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable

__all__ = ["FakeClock", "counter_ids"]


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward; the new time."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.now += seconds
        return self.now


def counter_ids(prefix: str = "id") -> Callable[[], str]:
    """Deterministic ids: prefix-1, prefix-2, …"""
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"
