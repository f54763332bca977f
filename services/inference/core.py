"""The transport-agnostic inference core: what a request means, minus gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

from infermesh_inference.models.base import (
    CancelToken,
    Capability,
    Embeddings,
    GenerationParams,
    ServedModel,
    TextChunk,
)
from infermesh_inference.repository import ModelEntry, ModelRepository
from infermesh_runtime.errors import InvalidArgument


@dataclass(frozen=True)
class SamplingRequest:
    """Sampling options as a request states them; None means the server default."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class InferenceCore:
    def __init__(self, repository: ModelRepository, executor: Executor, default_max_tokens: int) -> None:
        self.repository = repository
        self._executor = executor
        self._default_max_tokens = default_max_tokens

    async def generate(self, model_id: str, prompt: str, sampling: SamplingRequest) -> AsyncIterator[TextChunk]:
        entry = self.repository.get(model_id, Capability.TEXT_GENERATION)

        def work(cancel: CancelToken) -> Iterator[TextChunk]:
            params = self._params(entry.model, prompt, sampling, ())
            return entry.model.generate(prompt, params, cancel)

        async for chunk in self._stream(entry, work):
            yield chunk

    async def chat(
        self, model_id: str, messages: list[tuple[str, str]], sampling: SamplingRequest
    ) -> AsyncIterator[TextChunk]:
        entry = self.repository.get(model_id, Capability.CHAT)

        def work(cancel: CancelToken) -> Iterator[TextChunk]:
            prompt, stops = entry.model.chat_prompt(messages)
            params = self._params(entry.model, prompt, sampling, stops)
            return _strip_leading_space(entry.model.generate(prompt, params, cancel))

        async for chunk in self._stream(entry, work):
            yield chunk

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings:
        entry = self.repository.get(model_id, Capability.EMBEDDING)
        async with entry.concurrency:
            return await asyncio.get_running_loop().run_in_executor(self._executor, entry.model.embed, texts)

    async def warmup(self, model_ids: list[str]) -> list[ModelEntry]:
        entries = [e for e in self.repository.entries() if not model_ids or e.model.model_id in model_ids]
        unknown = set(model_ids) - {e.model.model_id for e in entries}
        if unknown:
            self.repository.get(sorted(unknown)[0], Capability.TEXT_GENERATION)  # raises NOT_FOUND
        loop = asyncio.get_running_loop()
        for entry in entries:
            if entry.state.value == "ready":
                async with entry.concurrency:
                    await loop.run_in_executor(self._executor, entry.model.warmup)
        return entries

    def _params(
        self, model: ServedModel, prompt: str, sampling: SamplingRequest, extra_stops: tuple[str, ...]
    ) -> GenerationParams:
        """Check the prompt against the context window and settle max_tokens."""
        limit = model.context_length
        prompt_tokens = model.count_tokens(prompt)
        if sampling.max_tokens is None:
            if prompt_tokens >= limit:
                raise _context_error(model.model_id, prompt_tokens, 1, limit)
            max_tokens = min(self._default_max_tokens, limit - prompt_tokens)
        else:
            max_tokens = sampling.max_tokens
            if prompt_tokens + max_tokens > limit:
                raise _context_error(model.model_id, prompt_tokens, max_tokens, limit)
        return GenerationParams(
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            stop_sequences=sampling.stop_sequences + extra_stops,
            seed=sampling.seed,
        )

    async def _stream(
        self, entry: ModelEntry, work: Callable[[CancelToken], Iterator[TextChunk]]
    ) -> AsyncIterator[TextChunk]:
        """Run a blocking generation in a worker thread and hand its chunks to the event loop.

        If the caller goes away, the token is cancelled and the model stops at its next step;
        the concurrency slot is held until the thread has really finished.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = CancelToken()

        def run() -> None:
            try:
                for chunk in work(cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the event loop side
                loop.call_soon_threadsafe(queue.put_nowait, _Failed(exc))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        async with entry.concurrency:
            worker = loop.run_in_executor(self._executor, run)
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, _Failed):
                        raise item.exc
                    yield item
            finally:
                cancel.cancel()
                await asyncio.shield(worker)


def _context_error(model_id: str, prompt_tokens: int, max_tokens: int, limit: int) -> InvalidArgument:
    return InvalidArgument(
        f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the context length of "
        f"{limit} tokens for model {model_id!r}",
        reason="CONTEXT_LENGTH_EXCEEDED",
        model=model_id,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        context_length=limit,
    )


def _strip_leading_space(chunks: Iterator[TextChunk]) -> Iterator[TextChunk]:
    """A reply after "Assistant:" starts with a space the user should not see."""
    started = False
    for chunk in chunks:
        if not started:
            chunk.text = chunk.text.lstrip()
            started = bool(chunk.text)
        if chunk.text or chunk.finish_reason is not None:
            yield chunk
