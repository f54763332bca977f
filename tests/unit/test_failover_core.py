"""Failover in the router's core (services/router/core/failover.py), on fakes: which
model answers, when a fallback is tried and when it is not, the cooldown and the retry
budget, streams that break before or after their first chunk, the response cache, and
what a caller may use. No sockets: a scripted backend client and a hand-moved clock."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.rpc import code_pb2

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.router.v1 import router_messages_pb2 as pb
from router_fakes import INVALID_ARGUMENT, UNAVAILABLE, FakeBackends, FakeClock, FakeResolver, Script, failure
from services.router.core import failover
from services.router.core.budget import RetryBudget
from services.router.core.cache import ResponseCache
from services.router.core.calls import CallContext
from services.router.core.cooldown import Cooldown
from services.router.core.router import RouterCore
from services.router.core.rpcs import Rpc
from services.runtime.errors import DomainError, InvalidArgument, PermissionDenied
from services.runtime.identity import Caller

pytestmark = pytest.mark.asyncio

MODELS = ["primary", "second", "third"]
FALLBACKS = {"primary": ("second", "third")}


def core(backends: FakeBackends, **options) -> RouterCore:
    resolver = options.pop("resolver", FakeResolver(MODELS, FALLBACKS))
    return RouterCore(resolver, backends, default_timeout=5.0, **options)


def ask(model: str = "primary", **fields) -> pb.GenerateTextRequest:
    return pb.GenerateTextRequest(model=model, prompt="Say hi", **fields)


async def test_the_model_answers_when_it_can_and_says_so():
    backends = FakeBackends()
    told = []

    async def announce(answer, cache):
        told.append((answer.route.backend, answer.fallback, cache))

    answer = await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask(), CallContext(), announce)
    assert answer.reply.text == "primary-backend answers" and answer.reply.model == "primary"
    assert not answer.fallback and told == [("primary-backend", False, "")]
    assert backends.calls[0][2].model == "primary"  # the backend's own id for the model


async def test_an_unavailable_backend_falls_back_to_the_next_model_in_order():
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    backends.script("second-backend", Script(error=failure(code_pb2.RESOURCE_EXHAUSTED, "busy")))
    answer = await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask(), CallContext())
    assert answer.fallback and answer.reply.model == "third"
    assert [backend for _, backend, _ in backends.calls] == ["primary-backend", "second-backend", "third-backend"]


async def test_a_model_without_the_capability_is_refused_before_any_backend_and_is_no_fallback():
    resolver = FakeResolver(MODELS, FALLBACKS, capabilities={"primary": {"chat"}, "second": {"transcription"}})
    backends = FakeBackends()
    with pytest.raises(DomainError) as caught:
        await failover.unary(core(backends, resolver=resolver), Rpc.GENERATE_TEXT, ask(), CallContext())
    assert (
        caught.value.reason == "CAPABILITY_NOT_SUPPORTED" and caught.value.status_code == code_pb2.FAILED_PRECONDITION
    )
    assert "text-generation" in caught.value.message and backends.calls == []
    resolver = FakeResolver(MODELS, FALLBACKS, capabilities={"second": {"transcription"}})
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    answer = await failover.unary(core(backends, resolver=resolver), Rpc.GENERATE_TEXT, ask(), CallContext())
    assert answer.reply.model == "third"  # "second" cannot generate text: skipped
    assert backends.called("second-backend") == 0


async def test_a_callers_own_error_is_not_retried_elsewhere():
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(INVALID_ARGUMENT, "bad prompt", "BAD_PROMPT")))
    with pytest.raises(DomainError) as caught:
        await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask(), CallContext())
    assert caught.value.status_code == INVALID_ARGUMENT and caught.value.reason == "BAD_PROMPT"
    assert backends.called("second-backend") == 0


async def test_without_fallbacks_the_first_failure_is_the_answer():
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    with pytest.raises(DomainError, match="down"):
        await failover.unary(
            core(backends), Rpc.GENERATE_TEXT, ask(routing=pb.RoutingOptions(use_fallbacks=False)), CallContext()
        )
    assert backends.called("second-backend") == 0


async def test_a_backend_that_keeps_failing_cools_down_then_gets_one_probe():
    clock = FakeClock()
    backends = FakeBackends()
    router = core(backends, cooldown=Cooldown(failures=2, seconds=10, clock=clock))
    backends.script("primary-backend", *[Script(error=failure(UNAVAILABLE, "down"))] * 2)
    for _ in range(2):
        assert (await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())).reply.model == "second"
    # Cooling: requests go straight to the fallback, the failing backend is not even asked.
    answer = await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())
    assert answer.reply.model == "second" and backends.called("primary-backend") == 2
    clock.advance(10)  # one probe goes through, succeeds, and closes the circuit
    assert (await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())).reply.model == "primary"
    assert (await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())).reply.model == "primary"


async def test_the_retry_budget_stops_fallbacks_when_backends_fail_together():
    backends = FakeBackends()
    router = core(backends, budget=RetryBudget(max_tokens=2, token_ratio=0.0))
    backends.script("primary-backend", *[Script(error=failure(UNAVAILABLE, "down"))] * 2)
    # The bucket (2) allows fallbacks while over half full: the first spends a token.
    assert (await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())).fallback
    with pytest.raises(DomainError, match="down"):
        await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())
    assert backends.called("second-backend") == 1


async def test_a_refusal_spends_no_budget():
    backends = FakeBackends()
    router = core(backends, budget=RetryBudget(max_tokens=2, token_ratio=0.0))
    backends.script("primary-backend", *[Script(error=failure(code_pb2.RESOURCE_EXHAUSTED, "queue full"))] * 3)
    for _ in range(3):  # the refusing backend did no work: fallbacks stay free
        assert (await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())).reply.model == "second"


async def test_a_backend_that_stays_silent_is_left_after_fallback_after_seconds():
    backends = FakeBackends()
    backends.script("primary-backend", Script(delay=5.0))
    router = core(backends, fallback_after_seconds=0.05)
    started = time.monotonic()
    answer = await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext())
    assert answer.reply.model == "second" and time.monotonic() - started < 1.0


async def test_a_prompt_too_long_goes_only_to_a_fallback_with_a_larger_window():
    resolver = FakeResolver(MODELS, FALLBACKS, windows={"primary": 100, "second": 100, "third": 1000})
    backends = FakeBackends()
    backends.script(
        "primary-backend",
        Script(error=failure(INVALID_ARGUMENT, "too long", "CONTEXT_LENGTH_EXCEEDED", context_length="100")),
    )
    answer = await failover.unary(core(backends, resolver=resolver), Rpc.GENERATE_TEXT, ask(), CallContext())
    assert answer.reply.model == "third" and backends.called("second-backend") == 0


async def test_a_caller_may_use_only_the_models_its_credentials_name():
    backends = FakeBackends()
    limited = CallContext(Caller("apiKeys/k", "user", frozenset({"primary", "third"})))
    with pytest.raises(PermissionDenied, match="may not use model 'second'"):
        await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask("second"), limited)
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    answer = await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask(), limited)
    assert answer.reply.model == "third" and backends.called("second-backend") == 0  # a fallback it may not use


async def test_after_the_callers_deadline_no_fallback_is_tried():
    clock = FakeClock()
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    late = CallContext(deadline=clock.now - 1, clock=clock)
    with pytest.raises(DomainError, match="down"):
        await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask(), late)
    assert backends.called("second-backend") == 0


async def test_a_repeated_deterministic_request_is_answered_from_the_cache():
    backends = FakeBackends()
    router = core(backends, cache=ResponseCache(max_entries=10, ttl_seconds=60))
    told = []

    async def announce(answer, cache):
        told.append(cache)

    first = await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext(), announce)
    second = await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext(), announce)
    assert second.cached and second.reply == first.reply and backends.called("primary-backend") == 1
    fresh = await failover.unary(router, Rpc.GENERATE_TEXT, ask(), CallContext(cache_opt_out=True), announce)
    assert not fresh.cached and backends.called("primary-backend") == 2
    assert told == ["miss", "hit", ""]


async def test_registry_limits_are_checked_before_any_backend_is_called():
    from services.router.core.resolvers import Route

    class Limited(FakeResolver):
        def route(self, requested):
            return Route("primary", "v1", "primary-backend", "primary", max_output_tokens=16)

    backends = FakeBackends()
    with pytest.raises(InvalidArgument, match="limit of 16"):
        await failover.unary(
            core(backends, resolver=Limited(MODELS)),
            Rpc.GENERATE_TEXT,
            ask(config=options.GenerationConfig(max_tokens=64)),
            CallContext(),
        )
    assert not backends.calls


async def collect(chunks) -> tuple[list, BaseException | None]:
    received = []
    try:
        async for chunk in chunks:
            received.append(chunk)
    except DomainError as error:
        return received, error
    return received, None


async def test_a_stream_falls_back_until_its_first_chunk():
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    chunks, error = await collect(failover.stream(core(backends), Rpc.GENERATE_TEXT, ask(), CallContext()))
    assert error is None and "".join(c.text for c in chunks).split() == ["second-backend", "answers", "in", "words"]
    assert all(c.model == "second" for c in chunks) and chunks[-1].usage.output_tokens == 4


async def test_a_stream_broken_after_its_first_chunk_says_so_and_never_switches_model():
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "connection lost"), fail_after_chunks=2))
    chunks, error = await collect(failover.stream(core(backends), Rpc.GENERATE_TEXT, ask(), CallContext()))
    assert [c.text for c in chunks[:2]] == ["primary-backend ", "answers "]
    # The last chunk carries the error in band (REST clients see no gRPC status)...
    assert chunks[-1].error.code == code_pb2.UNAVAILABLE and "after 2 chunks" in chunks[-1].error.message
    # ...and the stream ends with it: the answer is incomplete, and no other model took over.
    assert error.reason == "STREAM_INTERRUPTED" and backends.called("second-backend") == 0


async def test_a_stream_that_sends_nothing_in_time_falls_back():
    backends = FakeBackends()
    backends.script("primary-backend", Script(delay=5.0))
    router = core(backends, fallback_after_seconds=0.05)
    chunks, error = await collect(failover.stream(router, Rpc.GENERATE_TEXT, ask(), CallContext()))
    assert error is None and chunks[0].model == "second"


async def test_auto_tries_the_ranked_models_in_order():
    backends = FakeBackends()
    backends.script("primary-backend", Script(error=failure(UNAVAILABLE, "down")))
    answer = await failover.unary(core(backends), Rpc.GENERATE_TEXT, ask("auto"), CallContext())
    assert answer.reply.model == "second" and answer.fallback


async def test_embeddings_share_a_backend_call_when_the_backend_is_busy():
    backends = FakeBackends()
    backends.script("primary-backend", Script(delay=0.05))
    router = core(backends, embed_coalesce_in_flight=1)
    requests = [pb.EmbedRequest(model="primary", inputs=[f"text {i}" * (i + 1)]) for i in range(5)]
    answers = await asyncio.gather(*(failover.unary(router, Rpc.EMBED, r, CallContext()) for r in requests))
    assert backends.called("primary-backend") < 5  # the waiting ones left together
    for request, answer in zip(requests, answers, strict=True):
        assert answer.reply.embeddings[0].values[0] == len(request.inputs[0])  # each its own vector
