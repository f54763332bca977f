"""Continuous batching for a transformers causal LM, on transformers' own manager.

Requests join and leave the running batch between decode steps (paged KV cache), so
concurrent callers share forward passes. Measured on the 2-core CPU machines, the
manager matches one padded batched generate() (about 11x batch-1 at 32 requests) while
also admitting requests mid-flight, so no hand-written scheduler is kept.

Per-request temperature, top_k and top_p are honoured by the manager's processors;
greedy decoding is a temperature so small that sampling is argmax. Per-request seeds
and repetition penalty are not, so the model runs those requests unbatched.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from infermesh_inference.models.base import GenerationParams
from infermesh_runtime.errors import Internal, ResourceExhausted

log = logging.getLogger(__name__)
GREEDY_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = 32  # requests decoded together
    max_queue_size: int = 256  # requests admitted (running + waiting); more are refused
    num_blocks: int = 128  # KV cache pages; sized for CPU RAM, not the 13.5 GB default
    max_batch_tokens: int = 1024  # tokens per forward pass (prefill chunks + decodes)


class ContinuousBatcher:
    def __init__(self, model, eos_ids: set[int], vocab_size: int, settings: BatchingSettings, name: str) -> None:
        self._model = model
        self._eos = sorted(eos_ids)
        self._vocab = vocab_size
        self._settings = settings
        self._name = name
        self._manager = None
        self.in_flight = 0

    def start(self) -> None:
        # Defaults that differ from 1.0/None make the manager build per-request processors.
        config = GenerationConfig(
            do_sample=True, temperature=0.7, top_k=self._vocab - 1, top_p=0.99, eos_token_id=self._eos
        )
        batching = ContinuousBatchingConfig(
            num_blocks=self._settings.num_blocks,
            max_batch_tokens=self._settings.max_batch_tokens,
            max_requests_per_batch=self._settings.max_batch_size,
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
        seeded_sampling = params.seed is not None and params.temperature > 0
        return not seeded_sampling and params.repetition_penalty == 1.0

    async def tokens(self, input_ids: list[int], params: GenerationParams) -> AsyncIterator[list[int]]:
        """Yield newly generated token ids as the batch produces them. Leaving the loop
        early (stop sequence, cancelled caller) takes the request out of the batch."""
        if self.in_flight >= self._settings.max_queue_size:
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
        self._manager.register_result_handler(request_id, updates.put_nowait)
        finished = False
        try:
            self._manager.add_request(
                input_ids,
                request_id=request_id,
                max_new_tokens=params.max_tokens,
                streaming=True,
                eos_token_id=self._eos,
                temperature=params.temperature if params.temperature > 0 else GREEDY_TEMPERATURE,
                top_k=params.top_k or self._vocab - 1,
                top_p=params.top_p,
            )
            seen = 0
            while not finished:
                output = await updates.get()
                if output.error:
                    raise Internal(f"generation failed: {output.error}", reason="GENERATION_FAILED", model=self._name)
                finished = output.is_finished()
                new = output.generated_tokens[seen:]
                seen = len(output.generated_tokens)
                if new:
                    yield new
        finally:
            self.in_flight -= 1
            if not finished:
                self._manager.cancel_request(request_id)
