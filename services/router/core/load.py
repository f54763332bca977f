"""What the router has seen of each model: requests in flight now, and how long answers
took (an exponentially weighted mean, for the latency strategy)."""

from __future__ import annotations

from collections import defaultdict


class ModelLoad:
    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self.in_flight: dict[str, int] = defaultdict(int)
        self.latency: dict[str, float] = {}

    def started(self, model: str) -> None:
        self.in_flight[model] += 1

    def finished(self, model: str, seconds: float | None) -> None:
        """`seconds` to the answer (or the first chunk), None when the call failed."""
        self.in_flight[model] = max(self.in_flight[model] - 1, 0)
        if seconds is not None:
            previous = self.latency.get(model)
            self.latency[model] = seconds if previous is None else previous + self._smoothing * (seconds - previous)
