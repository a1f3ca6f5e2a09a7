"""The behaviour suite's `runtime` fixture, for the slow-consumer test on every runtime."""

from ..behaviour.conftest import runtime

__all__ = ["runtime"]
