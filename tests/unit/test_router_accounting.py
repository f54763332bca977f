"""The router's own bookkeeping: the retry budget, the usage ledger's windows and
percentiles, and a response cache whose Redis cannot be reached (one that can:
tests/integration/test_response_cache_redis.py)."""

from __future__ import annotations

import random

import pytest
from prometheus_client import REGISTRY

from infermesh.router.v1 import router_messages_pb2 as router_messages
from services.router.core.budget import RetryBudget
from services.router.core.cache import ResponseCache
from services.router.core.calls import CallContext
from services.router.core.resolvers import Route
from services.router.core.rpcs import Rpc
from services.router.core.usage import Histogram, UsageLedger
from support.ports import free_port

ROUTE = Route(model="m", version="v1", backend="b", backend_model="m")


def test_the_retry_budget_absorbs_a_burst_then_throttles_to_the_success_rate():
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    # A burst: five fallbacks go, then the bucket is half empty and they stop.
    assert [budget.acquire("m") for _ in range(6)] == [True] * 5 + [False]
    # Answers refill it: ten of them (0.1 each) buy one more fallback.
    for _ in range(10):
        budget.succeeded()
    assert budget.acquire("m") and not budget.acquire("m")
    for _ in range(1000):
        budget.succeeded()
    assert budget.tokens == 10  # never above the maximum


def test_percentiles_read_back_within_five_percent():
    rng = random.Random(7)
    samples = [rng.lognormvariate(-2, 1) for _ in range(20000)]
    histogram = Histogram()
    for s in samples:
        histogram.add(s)
    ordered = sorted(samples)
    for q in (0.5, 0.99):
        exact = ordered[int(q * len(ordered)) - 1]
        assert abs(histogram.quantile(q) - exact) / exact < 0.05
    assert histogram.mean == pytest.approx(sum(samples) / len(samples))


def test_the_ledger_sums_windows_by_version_and_forgets_after_retention():
    now = [1_000_000 * 60.0]
    ledger = UsageLedger(retention_seconds=3600, clock=lambda: now[0])
    ledger.tally("m", "v1").input_tokens += 10
    now[0] += 60
    ledger.tally("m", "v1").input_tokens += 5
    ledger.tally("m", "v2").input_tokens += 7
    ledger.tally("other", "v1").input_tokens += 100
    start = 1_000_000 * 60.0
    assert {v: t.input_tokens for v, t in ledger.summed(start, start + 120, "m").items()} == {"v1": 15, "v2": 7}
    assert {v: t.input_tokens for v, t in ledger.summed(start + 60, start + 120, "m").items()} == {"v1": 5, "v2": 7}
    now[0] += 2 * 3600  # a new minute's record drops minutes older than the retention
    ledger.tally("m", "v1")
    assert ledger.summed(start, now[0] + 60, "m")["v1"].input_tokens == 0


async def test_an_unreachable_redis_is_a_miss_not_a_failure():
    errors = {"model": "m", "result": "error"}
    before = REGISTRY.get_sample_value("infermesh_router_cache_total", errors) or 0
    cache = ResponseCache(0, 60, f"redis://127.0.0.1:{free_port()}/0")
    request = router_messages.GenerateTextRequest(model="m", prompt="hello")
    key = cache.key(Rpc.GENERATE_TEXT, ROUTE, request, CallContext())
    await cache.put(key, router_messages.GenerateTextResponse(text="x"))  # logged, not raised
    assert await cache.get(key, ROUTE) is None
    assert REGISTRY.get_sample_value("infermesh_router_cache_total", errors) == before + 1
    await cache.close()
