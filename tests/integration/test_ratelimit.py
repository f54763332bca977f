"""The gateway's rate limit service (issue 8), called over real gRPC the way Envoy's
ratelimit filter calls it, with counters in a real redis-server: limits that hold across
two gateway replicas, per key and per key-and-model, tokens charged by the router, leased
concurrency slots, windows that slide, and an outage of Redis that fails open. The
single-replica behaviours run on the in-memory store too."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from contextlib import asynccontextmanager

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import REGISTRY

from gateway.ratelimit.servicer import RateLimitServicer
from services.limits.config import limits_from_env, load_limits, parse_limits
from services.limits.limiter import LEASE_HEADER, open_limiter
from support.databases import redis_server
from support.serving import serving

OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def redis_url():
    with redis_server() as url:
        yield url


@pytest.fixture(params=["redis", "memory"])
def store(request, redis_url):
    """Where the counters live: a URL for Redis, None for this process's memory."""
    return redis_url if request.param == "redis" else None


@asynccontextmanager
async def replica(config: dict, redis_url: str | None, prefix: str):
    """One gateway replica: its own limiter and servicer on a port of its own."""
    limiter = open_limiter(parse_limits(config), redis_url, prefix)
    try:
        async with serving(
            [(rls_pb2_grpc.add_RateLimitServiceServicer_to_server, RateLimitServicer(limiter))]
        ) as served:
            yield rls_pb2_grpc.RateLimitServiceStub(served.channel), limiter
    finally:
        await limiter.close()


def prefix() -> str:
    """Counters of one test's own, so tests sharing a redis-server never meet."""
    return f"test:{uuid.uuid4().hex}:"


def descriptor(kind: str, key: str, model: str = "") -> ratelimit_pb2.RateLimitDescriptor:
    entries = [("kind", kind), ("api_key", key)] + ([("model", model)] if model else [])
    return ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )


async def ask(stub, *descriptors) -> rls_pb2.RateLimitResponse:
    return await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="infermesh", descriptors=list(descriptors)))


def headers(reply: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in reply.response_headers_to_add}


def lease(reply: rls_pb2.RateLimitResponse) -> str:
    return {h.key: h.value for h in reply.request_headers_to_add}[LEASE_HEADER]


async def test_requests_per_minute_hold_across_two_gateway_replicas(redis_url):
    config, shared = {"default": {"requests_per_minute": 60}}, prefix()
    async with replica(config, redis_url, shared) as (one, _), replica(config, redis_url, shared) as (two, _):
        rpm = descriptor("requests_per_minute", "apiKeys/alice")
        replies = await asyncio.gather(*(ask(one if i % 2 else two, rpm) for i in range(200)))
        assert sum(r.overall_code == OK for r in replies) == 60
        refused = next(r for r in replies if r.overall_code == OVER)
        assert headers(refused)["x-infermesh-ratelimit"] == "requests_per_minute"
        assert headers(refused)["x-ratelimit-limit"] == "60" and headers(refused)["x-ratelimit-remaining"] == "0"
        assert 1 <= int(headers(refused)["retry-after"]) <= 60
        status = refused.statuses[0]
        assert status.code == OVER and status.current_limit.requests_per_unit == 60
        assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
        assert 0 < status.duration_until_reset.seconds <= 60
        body = json.loads(refused.raw_body)
        assert body["code"] == 8 and "requests_per_minute for apiKeys/alice is 60 per 60 s" in body["message"]
        assert body["details"][0]["reason"] == "RATE_LIMIT_EXCEEDED"
        assert body["details"][0]["metadata"]["limit"] == "requests_per_minute"


async def test_refusals_on_the_openai_surface_are_in_openais_shape_and_the_marker_counts_nothing(store):
    config = {"default": {"requests_per_minute": 2}}
    async with replica(config, store, prefix()) as (stub, _):
        native = descriptor("requests_per_minute", "apiKeys/alice")
        openai = descriptor("requests_per_minute", "apiKeys/alice")
        openai.entries.add(key="surface", value="openai")
        assert [(await ask(stub, d)).overall_code for d in (native, openai)] == [OK, OK]  # one count
        refused = await ask(stub, openai)
        assert refused.overall_code == OVER and 1 <= int(headers(refused)["retry-after"]) <= 60
        error = json.loads(refused.raw_body)["error"]
        assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "rate_limit_exceeded", None)
        assert "requests_per_minute for apiKeys/alice is 2 per 60 s" in error["message"]
        assert error["details"]["metadata"]["limit"] == "requests_per_minute"
        assert json.loads((await ask(stub, native)).raw_body)["details"][0]["reason"] == "RATE_LIMIT_EXCEEDED"


async def test_a_second_key_is_independent_and_keys_have_their_own_limits(store):
    config = {"default": {"requests_per_minute": 5}, "keys": {"bob": {"requests_per_minute": 2}}}
    async with replica(config, store, prefix()) as (stub, _):
        alice, bob, carol = (descriptor("requests_per_minute", f"apiKeys/{n}") for n in ("alice", "bob", "carol"))
        assert [(await ask(stub, alice)).overall_code for _ in range(6)] == [OK] * 5 + [OVER]
        assert [(await ask(stub, bob)).overall_code for _ in range(3)] == [OK, OK, OVER]
        first = await ask(stub, carol)
        assert first.overall_code == OK and headers(first)["x-ratelimit-remaining"] == "4"


async def test_a_model_limit_is_independent_of_the_key_limit(store):
    config = {"default": {"requests_per_minute": 10}, "models": {MODEL: {"requests_per_minute": 3}}}
    async with replica(config, store, prefix()) as (stub, _):
        key = descriptor("requests_per_minute", "apiKeys/alice")
        on_model = descriptor("requests_per_minute", "apiKeys/alice", MODEL)
        replies = [await ask(stub, key, on_model) for _ in range(4)]
        assert [r.overall_code for r in replies] == [OK, OK, OK, OVER]
        assert [s.code for s in replies[3].statuses] == [OK, OVER]
        assert replies[3].statuses[0].limit_remaining == 7  # what it took for the key went back
        assert headers(replies[3])["x-infermesh-ratelimit"] == "requests_per_minute"
        assert MODEL in json.loads(replies[3].raw_body)["message"]
        # Another model has no limit of its own; the key's limit counted only what passed.
        other = await ask(stub, key, descriptor("requests_per_minute", "apiKeys/alice", "other-model"))
        assert other.overall_code == OK and other.statuses[0].limit_remaining == 6
        assert not other.statuses[1].HasField("current_limit")
        # Another caller on the same model has a window of its own.
        assert (await ask(stub, descriptor("requests_per_minute", "apiKeys/bob", MODEL))).overall_code == OK


async def test_tokens_charged_by_the_router_close_the_key_once_spent(store):
    config, shared = {"default": {"tokens_per_minute": 1000}}, prefix()
    async with replica(config, store, shared) as (stub, gateway):
        # The router: a limiter of its own on the same Redis; in memory, only the gateway's own counts.
        router = open_limiter(parse_limits(config), store, shared) if store else gateway
        tpm = descriptor("tokens_per_minute", "apiKeys/alice")
        await router.charge_tokens("apiKeys/alice", MODEL, 900)
        assert await router.remaining("apiKeys/alice", MODEL) == 100
        assert (await ask(stub, tpm)).overall_code == OK
        await router.charge_tokens("apiKeys/alice", MODEL, 200)  # a stream overshoots
        assert await router.remaining("apiKeys/alice", MODEL) == 0
        refused = await ask(stub, tpm)
        assert refused.overall_code == OVER
        assert headers(refused)["x-infermesh-ratelimit"] == "tokens_per_minute"
        assert int(headers(refused)["retry-after"]) >= 1
        assert "tokens_per_minute" in json.loads(refused.raw_body)["message"]
        assert (await ask(stub, descriptor("tokens_per_minute", "apiKeys/bob"))).overall_code == OK
        if router is not gateway:
            await router.close()


async def test_tokens_per_model_count_apart_from_the_key(store):
    config = {"default": {"tokens_per_minute": 1000}, "models": {MODEL: {"tokens_per_minute": 100}}}
    async with replica(config, store, prefix()) as (stub, limiter):
        await limiter.charge_tokens("apiKeys/alice", MODEL, 150)
        assert await limiter.remaining("apiKeys/alice", MODEL) == 0
        assert await limiter.remaining("apiKeys/alice", "other-model") == 850
        key, on_model = (
            descriptor("tokens_per_minute", "apiKeys/alice"),
            descriptor("tokens_per_minute", "apiKeys/alice", MODEL),
        )
        assert [s.code for s in (await ask(stub, key, on_model)).statuses] == [OK, OVER]
        assert (await ask(stub, key, descriptor("tokens_per_minute", "apiKeys/alice", "other"))).overall_code == OK


async def test_concurrent_requests_take_leases_the_router_releases(store):
    config = {"default": {"concurrent": 3}, "lease_seconds": 1}
    async with replica(config, store, prefix()) as (stub, limiter):
        slot = descriptor("concurrent", "apiKeys/alice", "")
        held = [await ask(stub, slot) for _ in range(3)]
        assert all(r.overall_code == OK for r in held) and len({lease(r) for r in held}) == 3
        fourth = await ask(stub, slot)
        assert fourth.overall_code == OVER and headers(fourth)["x-infermesh-ratelimit"] == "concurrent"
        assert headers(fourth)["retry-after"] == "1" and not fourth.request_headers_to_add
        await limiter.release("apiKeys/alice", MODEL, lease(held[0]))
        assert (await ask(stub, slot)).overall_code == OK
        assert (await ask(stub, slot)).overall_code == OVER
        # Nobody releases these (a crashed router): they expire after lease_seconds.
        await asyncio.sleep(1.2)
        assert [(await ask(stub, slot)).overall_code for _ in range(4)] == [OK, OK, OK, OVER]


async def test_a_refused_request_takes_no_slot_and_spends_no_request(store):
    config = {"default": {"concurrent": 1, "requests_per_minute": 100, "tokens_per_minute": 10}}
    async with replica(config, store, prefix()) as (stub, limiter):
        all_three = [descriptor(k, "apiKeys/alice") for k in ("concurrent", "requests_per_minute", "tokens_per_minute")]
        await limiter.charge_tokens("apiKeys/alice", MODEL, 10)
        for _ in range(3):
            refused = await ask(stub, *all_three)
            assert refused.overall_code == OVER and headers(refused)["x-infermesh-ratelimit"] == "tokens_per_minute"
            assert [s.code for s in refused.statuses] == [OK, OK, OVER]
        assert refused.statuses[1].limit_remaining == 100
        # The slot went back: a request without the token limit gets it.
        assert (await ask(stub, *all_three[:2])).overall_code == OK


async def test_the_window_slides_back_open_after_its_period(store):
    config = {"default": {"requests_per_minute": 5}, "window_seconds": 1}
    async with replica(config, store, prefix()) as (stub, _):
        rpm = descriptor("requests_per_minute", "apiKeys/alice")
        assert [(await ask(stub, rpm)).overall_code for _ in range(6)] == [OK] * 5 + [OVER]
        refused = await ask(stub, rpm)
        assert refused.statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
        assert headers(refused)["retry-after"] == "1"
        await asyncio.sleep(1.1)
        assert [(await ask(stub, rpm)).overall_code for _ in range(6)] == [OK] * 5 + [OVER]


async def test_hits_addend_counts_several_requests_and_zero_only_checks(store):
    async with replica({"default": {"requests_per_minute": 5}}, store, prefix()) as (stub, _):
        rpm = descriptor("requests_per_minute", "apiKeys/alice")
        three = rls_pb2.RateLimitRequest(domain="infermesh", descriptors=[rpm], hits_addend=3)
        assert (await stub.ShouldRateLimit(three)).statuses[0].limit_remaining == 2
        assert (await stub.ShouldRateLimit(three)).overall_code == OVER
        peek = descriptor("requests_per_minute", "apiKeys/alice")
        peek.hits_addend.value = 0
        for _ in range(3):
            assert (await ask(stub, peek)).overall_code == OK
        assert [(await ask(stub, rpm)).overall_code for _ in range(3)] == [OK, OK, OVER]


async def test_unknown_or_unlimited_descriptors_are_answered_ok(store):
    async with replica({"default": {"requests_per_minute": 1}}, store, prefix()) as (stub, _):
        no_key = ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="kind", value="concurrent")]
        )
        unlimited = descriptor("tokens_per_minute", "apiKeys/alice")
        for _ in range(3):
            reply = await ask(stub, no_key, unlimited, descriptor("requests_per_minute", "apiKeys/alice", MODEL))
            assert reply.overall_code == OK and not any(s.HasField("current_limit") for s in reply.statuses)
            assert "retry-after" not in headers(reply)


def store_errors(operation: str) -> float:
    return REGISTRY.get_sample_value("infermesh_ratelimit_store_errors_total", {"operation": operation}) or 0.0


async def test_a_redis_outage_fails_open_with_a_logged_error_and_a_metric(caplog):
    config = {"default": {"requests_per_minute": 1, "tokens_per_minute": 1, "concurrent": 1}}
    with redis_server() as url:
        pass  # stopped: nothing listens there now
    before = store_errors("check")
    async with replica(config, url, prefix()) as (stub, limiter):
        slot = [descriptor(k, "apiKeys/alice") for k in ("requests_per_minute", "tokens_per_minute", "concurrent")]
        with caplog.at_level(logging.ERROR, logger="services.limits.limiter"):
            replies = [await ask(stub, *slot) for _ in range(3)]
        assert all(r.overall_code == OK for r in replies)
        assert store_errors("check") == before + 3
        assert len([r for r in caplog.records if "failing open" in r.getMessage()]) == 1  # not once per request
        await limiter.charge_tokens("apiKeys/alice", MODEL, 5)  # never raises into the router
        assert await limiter.remaining("apiKeys/alice", MODEL) is None


def test_limits_load_from_json_yaml_and_the_environment():
    text = '{"default": {"requests_per_minute": 60, "concurrent": 8}, "keys": {"bob": {"concurrent": 2}}}'
    config = limits_from_env({"RATE_LIMITS": text})
    assert config.for_key("apiKeys/bob").concurrent == 2 and config.for_key("apiKeys/bob").requests_per_minute == 60
    assert config.for_key("apiKeys/alice").concurrent == 8 and config.window_seconds == 60
    yaml_config = load_limits(f"models:\n  {MODEL}:\n    tokens_per_minute: 500\nwindow_seconds: 5\n")
    assert yaml_config.for_model(MODEL).tokens_per_minute == 500 and yaml_config.for_model(MODEL).concurrent is None
    assert limits_from_env({}).for_key("anyone").requests_per_minute is None
    for wrong in ('{"default": {"rpm": 3}}', '{"default": {"concurrent": -1}}', '{"window_seconds": 0}', "[1]"):
        with pytest.raises(ValueError):
            load_limits(wrong)
