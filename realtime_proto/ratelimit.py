"""Token buckets: the rate limits of messages, subscriptions, connections and API calls."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import final

from .errors import ConfigError

__all__ = ["Rate", "TokenBucket", "TokenBuckets"]


@final
@dataclass(frozen=True, slots=True)
class Rate:
    """`per_second` tokens refill continuously, up to `burst`."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ConfigError("a rate needs per_second > 0 and burst >= 1")


class TokenBucket:
    """One bucket; `take` answers 0.0 when allowed, else the seconds until it would be."""

    __slots__ = ("_at", "_rate", "_tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate
        self._tokens = rate.burst
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens if there are enough; else the wait before there would be."""
        rate = self._rate
        self._tokens = min(rate.burst, self._tokens + (now - self._at) * rate.per_second)
        self._at = now
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / rate.per_second

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled (so forgetting it changes nothing)."""
        return self._tokens + (now - self._at) * self._rate.per_second >= self._rate.burst


class TokenBuckets:
    """Buckets by key (peer address, API key), bounded: full ones are forgotten first."""

    def __init__(self, rate: Rate, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Spend a token of `key`'s bucket; 0.0 when allowed, else the retry delay."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self.sweep(now)
                while len(self._buckets) >= self._max_keys:
                    self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self._rate, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def sweep(self, now: float) -> None:
        """Forget buckets that have refilled."""
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
