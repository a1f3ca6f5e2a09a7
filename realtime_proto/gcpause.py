"""The cyclic garbage collector paused while the core takes one input.

A call into the core (a request, a frame, a broker message) allocates many short-lived
containers: a `POST /api/batch` of 500 messages holds 500 decoded objects, their tuples and
envelopes until it returns. With the collector running, every 700 allocations it walks
everything young and still alive, and the batch's objects are walked again and again before
they are freed (by reference counting, at the end of the call). Paused for the call, the
collection that follows finds them gone. Nothing is kept longer: a cycle made in the call
is collected by the next collection, which the count of allocations made in the call
brings on at once. Measured in instructions per message (`bench/instructions.py`): see
docs/benchmarks.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from gc import disable, enable, isenabled
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused"]

P = ParamSpec("P")
T = TypeVar("T")


def gc_paused(call: Callable[P, T]) -> Callable[P, T]:
    """`call` with the cyclic collector paused while it runs (unless it was already
    paused: then it stays paused)."""

    @functools.wraps(call)
    def paused(*args: P.args, **kwargs: P.kwargs) -> T:
        if not isenabled():
            return call(*args, **kwargs)
        disable()
        try:
            return call(*args, **kwargs)
        finally:
            enable()

    return paused
