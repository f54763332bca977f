"""The router's usage ledger: per model version and minute, what was asked, answered,
spent and how long it took, kept in memory for a retention period and summed over any
window for the usage API.

Latencies go into log-spaced histogram buckets (each 10% wider than the last), so a
percentile read back is within 5% of the true value and a minute's record stays small
however many requests it holds.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

GROWTH = 1.1
SMALLEST = 1e-4  # seconds: bucket 0 holds everything faster


class Histogram:
    def __init__(self) -> None:
        self.counts: dict[int, int] = defaultdict(int)
        self.total = 0.0
        self.n = 0

    def add(self, seconds: float) -> None:
        index = 0 if seconds <= SMALLEST else int(math.log(seconds / SMALLEST, GROWTH)) + 1
        self.counts[index] += 1
        self.total += seconds
        self.n += 1

    def merge(self, other: Histogram) -> None:
        for index, count in other.counts.items():
            self.counts[index] += count
        self.total += other.total
        self.n += other.n

    def quantile(self, q: float) -> float:
        if not self.n:
            return 0.0
        rank = q * self.n
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                if index == 0:
                    return SMALLEST
                # The bucket's geometric middle: [SMALLEST·g^(i-1), SMALLEST·g^i).
                return SMALLEST * GROWTH ** (index - 0.5)
        return SMALLEST * GROWTH ** (max(self.counts) - 0.5)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass
class Tally:
    """What one model version did in one minute (or, summed, in a window)."""

    requests: int = 0  # requests for this model answered by this version, or failed ("")
    errors: int = 0
    fallbacks: int = 0
    cache_hits: int = 0
    answered: int = 0  # answers this version produced (not from the cache)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    currency: str = ""
    latency: Histogram = field(default_factory=Histogram)
    first_token: Histogram = field(default_factory=Histogram)

    def merge(self, other: Tally) -> None:
        for name in ("requests", "errors", "fallbacks", "cache_hits", "answered", "input_tokens", "output_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost += other.cost
        self.currency = self.currency or other.currency
        self.latency.merge(other.latency)
        self.first_token.merge(other.first_token)


Key = tuple[str, str]  # (model id, version id)


class UsageLedger:
    def __init__(self, retention_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._retention = retention_seconds
        self._clock = clock
        self._minutes: dict[int, dict[Key, Tally]] = {}

    def tally(self, model: str, version: str) -> Tally:
        """This minute's tally for a model version, to add to."""
        minute = int(self._clock() // 60)
        if minute not in self._minutes:
            self._forget(minute)
            self._minutes[minute] = {}
        bucket = self._minutes[minute]
        if (model, version) not in bucket:
            bucket[(model, version)] = Tally()
        return bucket[(model, version)]

    def _forget(self, now_minute: int) -> None:
        oldest = now_minute - int(self._retention // 60)
        for minute in [m for m in self._minutes if m < oldest]:
            del self._minutes[minute]

    @property
    def oldest(self) -> float:
        """When the oldest kept minute started (now, when nothing is kept)."""
        return min(self._minutes, default=int(self._clock() // 60)) * 60.0

    def window(self, start: float, end: float) -> Iterable[tuple[int, Key, Tally]]:
        """Every (minute start, key, tally) with start <= minute < end, oldest first."""
        for minute in sorted(self._minutes):
            if start <= minute * 60 < end:
                for key, tally in self._minutes[minute].items():
                    yield minute * 60, key, tally

    def summed(self, start: float, end: float, model: str) -> dict[str, Tally]:
        """A model's tallies over a window, by version."""
        versions: dict[str, Tally] = {}
        for _, (name, version), tally in self.window(start, end):
            if name == model:
                versions.setdefault(version, Tally()).merge(tally)
        return versions
