"""Continuous batching for a transformers causal LM, on transformers' own manager.

Requests join and leave the running batch between decode steps (paged KV cache), so
concurrent callers share forward passes. Measured on the 2-core CPU machines, the
manager matches one padded batched generate() (about 11x batch-1 at 32 requests) while
also admitting requests mid-flight, so no hand-written scheduler is kept.

Sampling: the manager draws with torch.multinomial, which over Gemma's 262k-entry
vocabulary cost about 6 ms per sequence per step on these CPUs (187 ms for 32 rows,
profiled at half of all CPU time under 32 streams). Inverse-CDF sampling (a cumulative
sum and a binary search per row) draws from exactly the same distribution in 14 ms for
32 rows, so the manager's sampler is replaced by it (`inverse_cdf_sample`). Temperature
is per request (greedy is a temperature so small that the distribution is one-hot);
top_k/top_p would sort the vocabulary per row, and per-request seeds, penalties, logit
biases and log probabilities are not supported by the manager, so requests using those
run on the model's one-request loop instead. Grammars (constrained decoding) batch: the
sampler masks a constrained request's row and follows its token (BatchedGrammar).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.model_runner import ModelRunner
from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING, FIFOScheduler

from services.backend.types import GenerationParams
from services.inference import metrics
from services.inference.models.grammar import Constraint
from services.runtime.errors import Internal, ResourceExhausted

log = logging.getLogger(__name__)


GREEDY_TEMPERATURE = 1e-6


def inverse_cdf_sample(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` ([rows, vocab]), drawn exactly from its distribution."""
    cdf = probs.cumsum(dim=-1)
    threshold = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, threshold).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


_manager_sample = ModelRunner._sample


# Logits divided by GREEDY_TEMPERATURE are at least this large; sampled ones are not.
GREEDY_LOGIT_SCALE = 1e6


class BatchedGrammar:
    """A request's grammar as the batch's sampler applies it, on the manager's thread: its
    row is masked before the draw and the drawn token followed right after, so the next
    mask always knows the last token. Once the grammar is complete only end-of-sequence
    is allowed, and the manager ends the request. A failure never escapes into the batch
    (the other requests go on): the request is ended and the failure kept for its caller."""

    def __init__(self, constraint: Constraint, eos_ids: list[int]) -> None:
        self._constraint = constraint
        self._eos = eos_ids
        self.failure: BaseException | None = None

    def mask(self, row: torch.Tensor) -> None:
        if self.failure is None:
            try:
                self._constraint.mask_row_(row)
                return
            except Exception as exc:  # noqa: BLE001 - kept for the request's caller
                self.failure = exc
        row.fill_(float("-inf"))
        row[self._eos] = 0.0

    def follow(self, token: int) -> None:
        if self.failure is None:
            try:
                self._constraint.advance(token)
            except Exception as exc:  # noqa: BLE001 - kept for the request's caller
                self.failure = exc


# Requests in the batch that decode under a grammar, by request id.
_GRAMMARS: dict[str, BatchedGrammar] = {}


def _grammar_rows(runner: ModelRunner) -> list[tuple[int, BatchedGrammar]]:
    """(row of the batch's scores, grammar) for the constrained requests predicting a
    token in this pass (rows follow the batch's requests that have a new token)."""
    if not _GRAMMARS:
        return []
    predicting = [f.state.request_id for f in runner.inputs_and_outputs.requests_in_batch if f.has_new_token]
    # One lookup each: a request may leave the table (its caller went) while this runs.
    found = [(row, _GRAMMARS.get(request)) for row, request in enumerate(predicting)]
    return [(row, grammar) for row, grammar in found if grammar is not None]


def _sample(self: ModelRunner, scores: torch.Tensor, output_ids: torch.Tensor) -> None:
    if not self.do_sample or self.return_logprobs:
        return _manager_sample(self, scores, output_ids)
    rows = scores[0]
    # Which rows sample is read before any grammar mask (a masked row holds -inf).
    sampled = rows.abs().amax(dim=-1) < GREEDY_LOGIT_SCALE
    constrained = _grammar_rows(self)
    for row, grammar in constrained:
        grammar.mask(rows[row])
    # Greedy rows take the argmax: bf16 logits often tie at the top, and a draw between
    # tied tokens would make greedy decoding differ from run to run.
    next_tokens = rows.argmax(dim=-1)
    if sampled.any():
        next_tokens[sampled] = inverse_cdf_sample(torch.nn.functional.softmax(rows[sampled], dim=-1))
    for row, grammar in constrained:
        grammar.follow(int(next_tokens[row]))
    output_ids[0, : next_tokens.size(0)].copy_(next_tokens)
    return None


# transformers is pinned (5.24.0): this is the private method its model runner samples with.
ModelRunner._sample = _sample


class _MeasuredFIFOScheduler(FIFOScheduler):
    """transformers' FIFO scheduler, recording how many sequences each forward pass holds."""

    model_id = ""

    def schedule_batch(self, token_budget: int, cache_budget: int):
        scheduled = super().schedule_batch(token_budget, cache_budget)
        if scheduled[0]:
            metrics.BATCH_SIZE.labels(self.model_id).observe(len(scheduled[0]))
        return scheduled


def _scheduler_for(model_id: str) -> str:
    """Register (once) a measured scheduler for this model under its own name."""
    name = f"infermesh-fifo-{model_id}"
    if name not in SCHEDULER_MAPPING:
        SCHEDULER_MAPPING[name] = type(f"Scheduler[{model_id}]", (_MeasuredFIFOScheduler,), {"model_id": model_id})
    return name


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = 32  # requests decoded together
    max_queue_size: int = 256  # requests admitted (running + waiting); more are refused
    num_blocks: int = 128  # KV cache pages; sized for CPU RAM, not the 13.5 GB default
    max_batch_tokens: int = 1024  # tokens per forward pass (prefill chunks + decodes)


class ContinuousBatcher:
    def __init__(self, model, eos_ids: set[int], settings: BatchingSettings, name: str) -> None:
        self._model = model
        self._eos = sorted(eos_ids)
        self._settings = settings
        self._name = name
        self._manager = None
        self.in_flight = 0

    def start(self) -> None:
        # A default temperature other than 1.0 makes the manager build its per-request
        # temperature processor; top_k=0 and top_p=1.0 build no vocabulary-sorting ones.
        config = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, eos_token_id=self._eos)
        batching = ContinuousBatchingConfig(
            num_blocks=self._settings.num_blocks,
            max_batch_tokens=self._settings.max_batch_tokens,
            max_requests_per_batch=self._settings.max_batch_size,
            scheduler_type=_scheduler_for(self._name),
            per_request_processors=True,
        )
        self._manager = self._model.init_continuous_batching(
            generation_config=config, continuous_batching_config=batching
        )
        self._manager.start()

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.stop(block=True)
            self._model.destroy_cached_continuous_batching_manager()
            self._manager = None

    @staticmethod
    def can_serve(params: GenerationParams) -> bool:
        # Penalties, biases and log probabilities: the one-request loop. Grammars batch.
        if not replace(params, grammar=None).plain:
            return False
        sampling = params.temperature > 0
        return not (sampling and (params.seed is not None or params.top_k > 0 or params.top_p < 1.0))

    async def tokens(
        self, input_ids: list[int], params: GenerationParams, constraint: Constraint | None = None
    ) -> AsyncIterator[list[int]]:
        """Yield newly generated token ids as the batch produces them (under `constraint`'s
        grammar when given). Leaving the loop early (stop sequence, cancelled caller) takes
        the request out of the batch."""
        if self.in_flight >= self._settings.max_queue_size:
            metrics.REJECTED.labels(self._name).inc()
            raise ResourceExhausted(
                f"model {self._name!r} has {self.in_flight} requests in flight (limit "
                f"{self._settings.max_queue_size}); retry shortly",
                reason="QUEUE_FULL",
                retry_after=1.0,
                model=self._name,
                in_flight=self.in_flight,
                limit=self._settings.max_queue_size,
            )
        request_id = uuid.uuid4().hex
        updates: asyncio.Queue = asyncio.Queue()
        self.in_flight += 1
        metrics.QUEUE_DEPTH.labels(self._name).set(self.in_flight)
        self._manager.register_result_handler(request_id, updates.put_nowait)
        grammar = None
        if constraint is not None:
            grammar = _GRAMMARS[request_id] = BatchedGrammar(constraint, self._eos)
        finished = False
        try:
            self._manager.add_request(
                input_ids,
                request_id=request_id,
                max_new_tokens=params.max_tokens,
                streaming=True,
                eos_token_id=self._eos,
                temperature=params.temperature if params.temperature > 0 else GREEDY_TEMPERATURE,
            )
            seen = 0
            while not finished:
                output = await updates.get()
                if output.error:
                    raise Internal(f"generation failed: {output.error}", reason="GENERATION_FAILED", model=self._name)
                if grammar is not None and grammar.failure is not None:
                    raise grammar.failure
                finished = output.is_finished()
                new = output.generated_tokens[seen:]
                seen = len(output.generated_tokens)
                if new:
                    yield new
        finally:
            _GRAMMARS.pop(request_id, None)
            self.in_flight -= 1
            metrics.QUEUE_DEPTH.labels(self._name).set(self.in_flight)
            if not finished:
                self._manager.cancel_request(request_id)
