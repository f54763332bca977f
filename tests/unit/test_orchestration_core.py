"""Calls made of several calls, in the router's core (services/router/core/orchestration.py),
on fakes: a batch's prompts each get their result (a failure is that prompt's result),
parallel answers keep the models' order, and an ensemble picks by majority, by meaning
(embeddings) or by a judge model's verdict."""

from __future__ import annotations

import pytest

from infermesh.router.v1 import orchestration_pb2 as pb
from router_fakes import INVALID_ARGUMENT, UNAVAILABLE, FakeBackends, FakeResolver, Script, failure
from services.router.core import orchestration
from services.router.core.calls import CallContext
from services.router.core.router import RouterCore
from services.runtime.errors import InvalidArgument, Unavailable

pytestmark = pytest.mark.asyncio

MODELS = ["a", "b", "c", "judge", "embedder"]


def core(backends: FakeBackends) -> RouterCore:
    return RouterCore(FakeResolver(MODELS), backends, default_timeout=5.0)


async def test_a_batch_answers_every_prompt_and_a_failure_is_that_prompts_result():
    backends = FakeBackends()
    backends.script("a-backend", Script("one"), Script(error=failure(INVALID_ARGUMENT, "bad prompt")), Script("three"))
    request = pb.BatchGenerateTextRequest(model="a", prompts=["p1", "p2", "p3"], max_concurrency=1)
    results = {r.index: r async for r in orchestration.batch(core(backends), request, CallContext())}
    assert results[0].response.text == "one" and results[2].response.text == "three"
    assert results[1].error.code == INVALID_ARGUMENT and results[0].served_by.model == "a"


async def test_parallel_keeps_the_models_order_and_each_models_own_outcome():
    backends = FakeBackends()
    backends.script("b-backend", Script(error=failure(UNAVAILABLE, "down")))
    request = pb.ParallelGenerateTextRequest(models=["a", "b", "c"], prompt="Capital of France?")
    reply = await orchestration.parallel(core(backends), request, CallContext())
    assert [a.model for a in reply.answers] == ["a", "b", "c"]
    assert reply.answers[1].error.code == UNAVAILABLE  # no fallback: answers are compared by model
    assert reply.usage.output_tokens == 4  # the two answers' tokens


def ensemble(strategy, **fields) -> pb.EnsembleGenerateTextRequest:
    return pb.EnsembleGenerateTextRequest(
        models=["a", "b", "c"], prompt="Capital of France?", strategy=strategy, **fields
    )


async def test_a_majority_vote_picks_the_answer_most_models_gave():
    backends = FakeBackends()
    for backend, text in (("a-backend", "Rome"), ("b-backend", "Paris"), ("c-backend", " paris.")):
        backends.script(backend, Script(text))
    reply = await orchestration.ensemble(core(backends), ensemble(pb.ENSEMBLE_STRATEGY_MAJORITY_VOTE), CallContext())
    assert reply.model == "b" and reply.text == "Paris" and "2 of 3 answers agree" in reply.rationale


async def test_a_judge_picks_by_number_and_its_tokens_are_counted():
    backends = FakeBackends()
    for backend, text in (("a-backend", "Rome"), ("b-backend", "Paris"), ("c-backend", "Lyon")):
        backends.script(backend, Script(text))
    backends.script("judge-backend", Script("The best is 2."))
    request = ensemble(pb.ENSEMBLE_STRATEGY_JUDGE, judge_model="judge")
    reply = await orchestration.ensemble(core(backends), request, CallContext())
    assert reply.model == "b" and "judge judged answer 2 of 3" in reply.rationale
    assert reply.usage.output_tokens == 8  # three answers and the verdict
    judged = next(r for _, backend, r in backends.calls if backend == "judge-backend")
    assert "1. Rome" in judged.prompt and "2. Paris" in judged.prompt


async def test_consensus_picks_the_answer_closest_in_meaning_to_the_others():
    backends = FakeBackends()  # the fake embeds a text as [its length, 1]
    for backend, text in (("a-backend", "abcd"), ("b-backend", "abcde"), ("c-backend", "a" * 40)):
        backends.script(backend, Script(text))
    request = ensemble(pb.ENSEMBLE_STRATEGY_CONSENSUS, embedding_model="embedder")
    reply = await orchestration.ensemble(core(backends), request, CallContext())
    assert reply.model in {"a", "b"} and "closest in meaning" in reply.rationale


async def test_an_ensemble_nobody_answers_is_the_callers_error_only_if_every_model_refused_it():
    refusing = FakeBackends()
    for backend in ("a-backend", "b-backend", "c-backend"):
        refusing.script(backend, Script(error=failure(INVALID_ARGUMENT, "no")))
    with pytest.raises(InvalidArgument, match="none of the models answered"):
        await orchestration.ensemble(core(refusing), ensemble(pb.ENSEMBLE_STRATEGY_MAJORITY_VOTE), CallContext())
    down = FakeBackends()
    down.script("a-backend", Script(error=failure(UNAVAILABLE, "down")))
    for backend in ("b-backend", "c-backend"):
        down.script(backend, Script(error=failure(INVALID_ARGUMENT, "no")))
    with pytest.raises(Unavailable):
        await orchestration.ensemble(core(down), ensemble(pb.ENSEMBLE_STRATEGY_MAJORITY_VOTE), CallContext())
