"""Calls made of several model calls: a batch of prompts for one model, one prompt for
several models side by side (parallel), and an ensemble that combines their answers
(majority vote, consensus by embedding similarity, or a judge model's pick).

Every part is one `failover.unary` call with the caller's CallContext, so the caller's
deadline and `cache-control` apply to each; none announces itself in response headers
(there are several answers), each says who answered in its `ServedBy`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence

from google.rpc import code_pb2, status_pb2

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_types_pb2 as types_pb
from infermesh.router.v1 import orchestration_pb2 as pb
from infermesh.router.v1 import router_messages_pb2 as messages
from services.router.core import failover
from services.router.core.calls import CallContext
from services.router.core.resolvers import AUTO
from services.router.core.router import RouterCore
from services.router.core.rpcs import Rpc
from services.runtime.errors import DomainError, InvalidArgument, Unavailable, status_of

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
JUDGE_MAX_TOKENS = 32  # the judge is asked for a number, nothing more
JUDGE_PROMPT = (
    "Several answers were given to the question below. Reply with the number of the best answer only.\n\n"
    "Question:\n{question}\n\nAnswers:\n{answers}\n\nThe number of the best answer:"
)
_INTEGER = re.compile(r"\b\d+\b")
CALLER_ERRORS = {
    code_pb2.INVALID_ARGUMENT,
    code_pb2.NOT_FOUND,
    code_pb2.FAILED_PRECONDITION,
    code_pb2.OUT_OF_RANGE,
    code_pb2.PERMISSION_DENIED,
    code_pb2.UNAUTHENTICATED,
}


def text_request(
    model: str, prompt: str, config: options.GenerationConfig, routing: messages.RoutingOptions | None = None
) -> messages.GenerateTextRequest:
    """One model's request, with the call's generation config (and routing options)."""
    return messages.GenerateTextRequest(model=model, prompt=prompt, config=config, routing=routing)


def served_by(answer: failover.Answer) -> pb.ServedBy:
    route = answer.route
    return pb.ServedBy(
        model=route.model, version=route.version, backend=route.backend, fallback=answer.fallback, cached=answer.cached
    )


def _failure(exc: Exception) -> status_pb2.Status:
    """A part's failure as google.rpc.Status; the call as a whole goes on."""
    if not isinstance(exc, DomainError):
        log.exception("unexpected error in one part of an orchestrated call", exc_info=exc)
    return status_of(exc)


async def _generate(core: RouterCore, request: messages.GenerateTextRequest, call: CallContext) -> failover.Answer:
    return await failover.unary(core, Rpc.GENERATE_TEXT, request, call)


# Batch


async def batch(
    core: RouterCore, request: pb.BatchGenerateTextRequest, call: CallContext
) -> AsyncIterator[pb.BatchGenerateTextResult]:
    """Each prompt's result as soon as it completes, at most `max_concurrency` at a time;
    a prompt that fails yields its error and the batch goes on. When the caller goes
    away, the prompts still running are cancelled."""
    pending = iter(enumerate(request.prompts))
    results: asyncio.Queue[pb.BatchGenerateTextResult] = asyncio.Queue()

    async def item(index: int, prompt: str) -> pb.BatchGenerateTextResult:
        sub = text_request(request.model, prompt, request.config, request.routing)
        try:
            answer = await _generate(core, sub, call)
        except Exception as exc:  # noqa: BLE001 - one prompt's failure is its result
            return pb.BatchGenerateTextResult(index=index, error=_failure(exc))
        return pb.BatchGenerateTextResult(index=index, response=answer.reply, served_by=served_by(answer))

    async def worker() -> None:
        for index, prompt in pending:  # one iterator shared by the workers: each prompt runs once
            results.put_nowait(await item(index, prompt))

    concurrency = min(request.max_concurrency or DEFAULT_CONCURRENCY, len(request.prompts))
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        for _ in request.prompts:
            yield await results.get()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


# Parallel


async def ask_all(
    core: RouterCore, models: Sequence[str], prompt: str, config: options.GenerationConfig, call: CallContext
) -> list[pb.ModelAnswer]:
    """Every model's answer (or error), concurrently, in the order of `models`; no
    fallbacks, since the answers are compared by model."""

    async def ask(model: str) -> pb.ModelAnswer:
        sub = text_request(model, prompt, config, messages.RoutingOptions(use_fallbacks=False))
        try:
            answer = await _generate(core, sub, call)
        except Exception as exc:  # noqa: BLE001 - one model's failure is its answer
            return pb.ModelAnswer(model=model, error=_failure(exc))
        return pb.ModelAnswer(model=model, response=answer.reply, served_by=served_by(answer))

    return list(await asyncio.gather(*(ask(model) for model in models)))


async def parallel(
    core: RouterCore, request: pb.ParallelGenerateTextRequest, call: CallContext
) -> pb.ParallelGenerateTextResponse:
    answers = await ask_all(core, request.models, request.prompt, request.config, call)
    return pb.ParallelGenerateTextResponse(answers=answers, usage=_total(a.response.usage for a in answers))


def _total(usages: Iterable[types_pb.Usage]) -> types_pb.Usage:
    total = types_pb.Usage()
    for usage in usages:
        _add(total, usage)
    return total


def _add(total: types_pb.Usage, usage: types_pb.Usage) -> None:
    total.input_tokens += usage.input_tokens
    total.output_tokens += usage.output_tokens
    total.total_tokens += usage.total_tokens


# Ensemble


async def ensemble(
    core: RouterCore, request: pb.EnsembleGenerateTextRequest, call: CallContext
) -> pb.EnsembleGenerateTextResponse:
    """Every model's answer, and the one the strategy picks among those that answered."""
    answers = await ask_all(core, request.models, request.prompt, request.config, call)
    usage = _total(a.response.usage for a in answers)
    answered = [a for a in answers if a.WhichOneof("outcome") == "response"]
    failed = [a for a in answers if a.WhichOneof("outcome") == "error"]
    if not answered:
        errors = "; ".join(f"{a.model}: {a.error.message}" for a in failed)
        # Every model refused the request itself (unknown, unable, invalid): retrying cannot help.
        refused = all(a.error.code in CALLER_ERRORS for a in failed)
        raise (InvalidArgument if refused else Unavailable)(
            f"none of the models answered ({errors})",
            reason="NO_ANSWERS",
            models=",".join(request.models),
            errors=errors,
        )
    if len(answered) == 1:
        winner = answered[0]
        winner.score = 1
        rationale = f"only {winner.model} answered"
    elif request.strategy == pb.ENSEMBLE_STRATEGY_MAJORITY_VOTE:
        winner, rationale = majority_vote(answered)
    elif request.strategy == pb.ENSEMBLE_STRATEGY_CONSENSUS:
        winner, rationale = await _consensus(core, request, answered, usage, call)
    else:
        winner, rationale = await _judged(core, request, answered, usage, call)
    if failed:
        rationale += f"; {len(failed)} of {len(answers)} models failed ({', '.join(a.model for a in failed)})"
    return pb.EnsembleGenerateTextResponse(
        text=winner.response.text,
        model=winner.model,
        strategy=request.strategy,
        rationale=rationale,
        answers=answers,
        usage=usage,
    )


def normalise(text: str) -> str:
    """An answer as majority voting compares it: trimmed, case-folded, single-spaced,
    without trailing punctuation."""
    folded = " ".join(text.casefold().split())
    end = len(folded)
    while end and (folded[end - 1].isspace() or unicodedata.category(folded[end - 1]).startswith("P")):
        end -= 1
    return folded[:end]


def majority_vote(answered: list[pb.ModelAnswer]) -> tuple[pb.ModelAnswer, str]:
    """The answer most models gave (ties to the earlier model); each scores its votes."""
    votes = Counter(normalise(a.response.text) for a in answered)
    for answer in answered:
        answer.score = votes[normalise(answer.response.text)]
    winner = max(answered, key=lambda a: a.score)  # max keeps the first of equals
    count = int(winner.score)
    if count == 1:
        return winner, f"no two of {len(answered)} answers agree; the first model's answer wins"
    agreeing = [a.model for a in answered if normalise(a.response.text) == normalise(winner.response.text)]
    return winner, f"{count} of {len(answered)} answers agree ({', '.join(agreeing)})"


async def _consensus(
    core: RouterCore,
    request: pb.EnsembleGenerateTextRequest,
    answered: list[pb.ModelAnswer],
    usage: types_pb.Usage,
    call: CallContext,
) -> tuple[pb.ModelAnswer, str]:
    """The answer closest in meaning to the others: highest mean cosine similarity of its
    embedding to theirs."""
    embed = messages.EmbedRequest(
        model=request.embedding_model or AUTO,
        inputs=[a.response.text.strip() or " " for a in answered],  # an input may not be empty
    )
    embedded = await failover.unary(core, Rpc.EMBED, embed, call)
    _add(usage, embedded.reply.usage)
    vectors = [list(e.values) for e in sorted(embedded.reply.embeddings, key=lambda e: e.index)]
    for i, answer in enumerate(answered):
        others = [cosine(vectors[i], vectors[j]) for j in range(len(vectors)) if j != i]
        answer.score = sum(others) / len(others)
    winner = max(answered, key=lambda a: a.score)
    return winner, (
        f"{winner.model}'s answer is closest in meaning to the others: mean cosine similarity "
        f"{winner.score:.3f} of its {embedded.reply.model} embedding to theirs"
    )


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


async def _judged(
    core: RouterCore,
    request: pb.EnsembleGenerateTextRequest,
    answered: list[pb.ModelAnswer],
    usage: types_pb.Usage,
    call: CallContext,
) -> tuple[pb.ModelAnswer, str]:
    """The answer the judge model names by number; the first answer if its reply names
    none."""
    numbered = "\n".join(f"{n}. {a.response.text.strip()}" for n, a in enumerate(answered, start=1))
    prompt = JUDGE_PROMPT.format(question=request.prompt, answers=numbered)
    judge = text_request(request.judge_model, prompt, options.GenerationConfig(max_tokens=JUDGE_MAX_TOKENS))
    verdict = (await _generate(core, judge, call)).reply
    _add(usage, verdict.usage)
    choice = judge_choice(verdict.text, len(answered))
    for answer in answered:
        answer.score = 0
    if choice is None:
        winner = answered[0]
        return winner, (
            f"{request.judge_model}'s reply named no answer between 1 and {len(answered)} "
            f"({verdict.text.strip()[:80]!r}); the first answer ({winner.model}) stands"
        )
    winner = answered[choice - 1]
    winner.score = 1
    return winner, f"{request.judge_model} judged answer {choice} of {len(answered)} ({winner.model}) the best"


def judge_choice(reply: str, count: int) -> int | None:
    """The first whole number in the judge's reply that names an answer (1..count)."""
    for match in _INTEGER.finditer(reply):
        if 1 <= int(match.group()) <= count:
            return int(match.group())
    return None
