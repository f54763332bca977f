"""The router's share of rate limiting (services/router/core/quota.py), on the in-memory store:
max_tokens lowered to what a caller has left, streams charged as they go and stopped once
the caller's tokens are spent, per-model limits and concurrency slots given back."""

from __future__ import annotations

import grpc
import pytest

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.router.v1 import router_messages_pb2 as pb
from services.limits.config import parse_limits
from services.limits.limiter import open_limiter
from services.router.core.quota import FLUSH_TOKENS, UNSET_MAX_TOKENS, Quotas
from services.runtime.errors import ResourceExhausted
from services.runtime.identity import Caller

pytestmark = pytest.mark.asyncio


def quotas(**config) -> Quotas:
    return Quotas(open_limiter(parse_limits(config), None))


async def test_max_tokens_is_lowered_to_the_tokens_left_and_only_then():
    q = quotas(default={"tokens_per_minute": 100})
    admission = await q.admit(Caller("apiKeys/a"), "gemma")
    asked = pb.GenerateTextRequest(model="gemma", prompt="x", config=options.GenerationConfig(max_tokens=500))
    admission.clamp(asked)
    assert asked.config.max_tokens == 100
    unset = pb.GenerateTextRequest(model="gemma", prompt="x")
    admission.clamp(unset)
    assert unset.config.max_tokens == 100  # less than an unset max_tokens would get
    small = pb.GenerateTextRequest(model="gemma", prompt="x", config=options.GenerationConfig(max_tokens=10))
    admission.clamp(small)
    assert small.config.max_tokens == 10
    roomy = await quotas(default={"tokens_per_minute": 10 * UNSET_MAX_TOKENS}).admit(Caller("apiKeys/a"), "gemma")
    untouched = pb.GenerateTextRequest(model="gemma", prompt="x")
    roomy.clamp(untouched)
    assert not untouched.config.HasField("max_tokens")


async def test_streams_sharing_a_quota_stop_once_it_is_spent():
    q = quotas(default={"tokens_per_minute": 40})
    first, second = [await q.admit(Caller("apiKeys/a"), "gemma") for _ in range(2)]
    chunk = pb.GenerateTextResponse(text=" tok")
    produced, going = 0, [True, True]
    while any(going):
        for i, admission in enumerate((first, second)):
            if going[i]:
                going[i] = await admission.streamed("gemma", chunk)
                produced += 1
    # Each stopped within a flush of the quota; together they overshot by less than two flushes.
    assert 40 <= produced <= 40 + 2 * FLUSH_TOKENS
    with pytest.raises(ResourceExhausted) as refused:
        await q.admit(Caller("apiKeys/a"), "gemma")
    assert refused.value.metadata["limit"] == "tokens_per_minute"
    assert first.spent("gemma").code is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_last_chunk_settles_the_exact_count():
    q = quotas(default={"tokens_per_minute": 1000})
    admission = await q.admit(Caller("apiKeys/a"), "gemma")
    for _ in range(3):
        await admission.streamed("gemma", pb.GenerateTextResponse(text="x"))
    last = pb.GenerateTextResponse(usage={"input_tokens": 7, "output_tokens": 5, "total_tokens": 12})
    assert await admission.streamed("gemma", last)
    assert await q.limiter.remaining("apiKeys/a", "gemma") == 1000 - 12


async def test_per_model_limits_and_concurrency_slots():
    q = quotas(default={"concurrent": 1}, models={"gemma": {"requests_per_minute": 2}})
    caller = Caller("apiKeys/a")
    held = await q.admit(caller, "gemma@bf16")
    with pytest.raises(ResourceExhausted) as busy:
        await q.admit(caller, "other")
    assert busy.value.metadata["limit"] == "concurrent"
    await held.close()  # the slot comes back when the call ends
    await (await q.admit(caller, "gemma")).close()
    with pytest.raises(ResourceExhausted) as refused:
        await q.admit(caller, "gemma")
    assert refused.value.metadata == {**refused.value.metadata, "limit": "requests_per_minute", "model": "gemma"}
    await (await q.admit(caller, "other")).close()  # another model: not that limit


async def test_callers_without_a_principal_and_meshes_without_limits_are_not_limited():
    q = quotas(default={"requests_per_minute": 0})
    assert (await q.admit(Caller(), "gemma")).limiter is None
    assert (await Quotas(None).admit(Caller("apiKeys/a"), "gemma")).limiter is None
