"""Retry budget: fallbacks may add at most a fraction of the load the router already
carries, so that when backends fail together, retries cannot multiply the traffic that
brought them down (Envoy's retry budget, applied to the router's fallbacks).

A fallback attempt made after a backend has already been called and failed needs a
slot: the slots in use may not exceed `percent` of the requests in flight, with at least
`min_concurrency` always allowed so a quiet router can still fall back. A fallback after
a failure that cost no backend any work (no deployment, a backend in cooldown) needs no
slot."""

from __future__ import annotations

from prometheus_client import Counter

EXHAUSTED = Counter(
    "infermesh_router_retry_budget_exhausted_total",
    "Fallbacks not tried because the retry budget was spent, by the model asked for.",
    ["model"],
)


class RetryBudget:
    def __init__(self, percent: float, min_concurrency: int) -> None:
        self._fraction = percent / 100
        self._minimum = min_concurrency
        self.active = 0  # requests in flight
        self.retrying = 0  # fallback attempts in flight

    def started(self) -> None:
        self.active += 1

    def finished(self) -> None:
        self.active -= 1

    def acquire(self, model: str) -> bool:
        """Take a slot for one fallback attempt; False when the budget is spent."""
        if self.retrying >= max(self._minimum, int(self.active * self._fraction)):
            EXHAUSTED.labels(model).inc()
            return False
        self.retrying += 1
        return True

    def release(self) -> None:
        self.retrying -= 1
