"""The collector is paused while the Node takes an input, and as it was afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from realtime_proto.gcpause import gc_paused


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


@gc_paused
def seen(fail: bool = False) -> bool:
    if fail:
        raise ValueError("failed")
    return gc.isenabled()


def test_paused_during_the_call_and_running_after() -> None:
    gc.enable()
    assert seen() is False
    assert gc.isenabled()
    with pytest.raises(ValueError):
        seen(fail=True)
    assert gc.isenabled()


def test_a_collector_the_application_paused_stays_paused() -> None:
    gc.disable()
    assert seen() is False
    assert not gc.isenabled()
