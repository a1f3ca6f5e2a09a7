"""Repeated failures logged once with a count, not once per failure.

During an outage the same failure repeats hundreds of times a second (every publish,
every history append). :class:`FailureLog` writes the first one at once, then at most one
summary per `interval` while they go on ("history store: 3,512 appends failed in the last
10 s (last error: ConnectionError: …)"), and one line when the thing works again. Errors
are described by their class and message, never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["FailureLog", "describe"]


def describe(error: BaseException | str) -> str:
    """An exception as one line: its class and message (no traceback)."""
    if isinstance(error, str):
        return error
    text = str(error)
    if isinstance(error, TimeoutError) and not text:
        return "timed out"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class FailureLog:
    """Logs one kind of repeated failure (``"history store: {n} appends failed"``) on the
    running asyncio loop: the first at once, then a summary per `interval` while more
    come, and a recovery line once it works again.

    Args:
        logger: where the lines go (warnings).
        what: the failure with a ``{n}`` for the count, e.g. ``"{n} appends failed"``.
        recovered: the line for working again (it gets the number of failures).
        interval: seconds between summaries.
    """

    def __init__(self, logger: logging.Logger, what: str, recovered: str, *,
                 interval: float = 10.0) -> None:
        self._logger = logger
        self._what = what
        self._recovered = recovered
        self._interval = interval
        self._count = 0  # failures since the last line
        self._total = 0  # failures since the last success
        self._last = ""
        self._since = 0.0  # loop time of the last line
        self._timer: asyncio.TimerHandle | None = None

    @property
    def failing(self) -> bool:
        """Whether failures were logged since the last success."""
        return self._total > 0

    def failed(self, error: BaseException | str, count: int = 1) -> None:
        """`count` more failures, the latest with `error`."""
        self._last = describe(error)
        self._total += count
        if self._timer is not None:  # within a window: counted for its summary
            self._count += count
            return
        self._logger.warning("%s: %s", self._what.format(n=f"{count:,}"), self._last)
        self._open_window()

    def succeeded(self) -> None:
        """It works again: summarise what is left and say so (once)."""
        if not self._total:
            return
        self._summarise()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._logger.warning("%s (after %s failures)", self._recovered, f"{self._total:,}")
        self._total = 0

    def close(self) -> None:
        """Write the pending summary and stop the timer."""
        self._summarise()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _open_window(self) -> None:
        self._count = 0
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._timer = loop.call_later(self._interval, self._window_ended)

    def _window_ended(self) -> None:
        self._timer = None
        if self._count:
            self._summarise()
            self._open_window()

    def _summarise(self) -> None:
        if self._count:
            seconds = asyncio.get_running_loop().time() - self._since
            self._logger.warning("%s in the last %.0f s (last error: %s)",
                                 self._what.format(n=f"{self._count:,}"), seconds, self._last)
            self._count = 0
