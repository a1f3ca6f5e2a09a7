"""Test helpers for the core and for applications: a fake clock, ids, a cluster simulator."""

from ..framing.memory import MemoryTransport
from .clock import FakeClock, counter_ids
from .cluster import Cluster, SimulatedBroker

__all__ = ["Cluster", "FakeClock", "MemoryTransport", "SimulatedBroker", "counter_ids"]
