"""The suite's hook refuses what cannot work, and a runner's failure reaches the test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from realtime_behaviour import Ready, Runtime, runtime_fixture, serving, threaded


@contextlib.asynccontextmanager
async def _never(options: dict[str, Any]) -> AsyncIterator[None]:
    raise AssertionError("not called")
    yield


def test_a_runtime_needs_a_name_and_the_fixture_a_runtime() -> None:
    with pytest.raises(ValueError, match="name"):
        Runtime("", _never)
    with pytest.raises(ValueError, match="at least one Runtime"):
        runtime_fixture()


def test_a_threaded_runner_that_fails_before_ready_fails_the_start() -> None:
    def broken(options: dict[str, Any], ready: Ready) -> None:
        raise OSError(f"cannot listen on port {options['port']}")

    async def scenario() -> None:
        with pytest.raises(OSError, match="cannot listen on port 0"):
            async with serving(Runtime("broken", threaded(broken))):
                pass
    asyncio.run(scenario())
