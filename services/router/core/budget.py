"""Retry budget: fallbacks may add only a bounded share of load, so that when backends
fail together, retries cannot multiply the traffic that brought them down.

This is gRPC's retry throttling (gRFC A6) applied to the router's fallbacks: a bucket
holds up to `max_tokens`; every fallback attempt after a backend was called and failed
spends one, every answered request returns `token_ratio`; fallbacks are allowed while
the bucket is more than half full. A burst of failures (a backend killed mid-run) falls
back freely until the cooldown takes the backend out; a sustained failure rate above
about token_ratio / (1 + token_ratio) throttles fallbacks to that rate.

A fallback after a refusal that cost no backend any work (RESOURCE_EXHAUSTED from
admission control or a provider's rate limit, no deployment, a backend in cooldown)
spends nothing: the refusing backend did nothing, and the fallback's own admission
control protects it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EXHAUSTED = Counter(
    "infermesh_router_retry_budget_exhausted_total",
    "Fallbacks not tried because the retry budget was spent, by the model asked for.",
    ["model"],
)
TOKENS = Gauge("infermesh_router_retry_budget_tokens", "Tokens in the retry budget's bucket.")


class RetryBudget:
    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self._max = max_tokens
        self._ratio = token_ratio
        self.tokens = max_tokens
        TOKENS.set(self.tokens)

    def acquire(self, model: str) -> bool:
        """Spend a token on one fallback attempt; False when fallbacks are throttled."""
        if self.tokens <= self._max / 2:
            EXHAUSTED.labels(model).inc()
            return False
        self.tokens -= 1
        TOKENS.set(self.tokens)
        return True

    def succeeded(self) -> None:
        self.tokens = min(self._max, self.tokens + self._ratio)
        TOKENS.set(self.tokens)
