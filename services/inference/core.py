"""The transport-agnostic inference core: what a request means, minus gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, replace

from services.backend import audio
from services.backend.images import check_image
from services.backend.types import (
    Capability,
    ChatTurn,
    Embeddings,
    ExtractedText,
    FinishReason,
    GenerationParams,
    Labels,
    ResponseFormat,
    SpeechChunk,
    SpeechParams,
    TextChunk,
    Tools,
    Transcript,
    TranscriptionParams,
)
from services.inference import metrics
from services.inference.batching import DynamicBatcher
from services.inference.models.base import CancelToken, ServedModel
from services.inference.models.chat_format import with_answer_format
from services.inference.models.continuous_batching import ContinuousBatcher
from services.inference.models.grammar import chat_answer_grammar, json_schema_grammar
from services.inference.models.tool_calling import TAGS, ToolCallReader, tool_grammar
from services.inference.repository import ModelEntry, ModelRepository, ModelState
from services.runtime.errors import InvalidArgument
from services.runtime.telemetry import past_span


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()
MAX_TOP_K = 20  # the most classes a ClassifyImageRequest may ask for (its proto's rule)
MAX_IMAGE_BATCH = 8  # images per classification pass: past 8, CPU caches lose more than batching gains (vision_bench)


@dataclass(frozen=True)
class EmbedBatching:
    """Dynamic batching limits for embeddings (from InferenceSettings)."""

    max_batch_size: int
    max_queue_delay: float  # seconds
    max_queue_items: int


class InferenceCore:
    def __init__(
        self,
        repository: ModelRepository,
        executor: Executor,
        default_max_tokens: int,
        embed_batching: EmbedBatching,
        max_audio_seconds: float = 600.0,
    ) -> None:
        self.repository = repository
        self._max_audio_seconds = max_audio_seconds
        self._executor = executor
        self._default_max_tokens = default_max_tokens
        self._embed_batching = embed_batching
        self._batchers: dict[str, DynamicBatcher] = {}  # per model that batches (embedding, classification)
        self._batch_threads: dict[str, ThreadPoolExecutor] = {}
        repository.on_unload(self._forget_batcher)

    async def generate(self, model_id: str, prompt: str, sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        async with self.repository.use(model_id, Capability.TEXT_GENERATION) as entry:
            if sampling.response_format is not None:
                schema = sampling.response_format.answer_schema()
                sampling = replace(sampling, grammar=await asyncio.to_thread(json_schema_grammar, schema))
            async for chunk in self._generate(entry, prompt, sampling, ()):
                yield chunk

    async def chat(self, model_id: str, turns: list[ChatTurn], sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        async with self.repository.use(model_id, Capability.CHAT) as entry:
            tools = sampling.tools if sampling.tools is not None and sampling.tools.callable else None
            prompt, stops = entry.model.chat_prompt(with_answer_format(turns, sampling.response_format), tools)
            # Compiling a grammar (and, the first time, waiting for the model's tokenizer)
            # takes milliseconds to seconds: off the event loop.
            grammar = await asyncio.to_thread(_chat_grammar, entry.model, sampling.response_format, tools)
            sampling = replace(sampling, grammar=grammar)
            reader = ToolCallReader() if tools is not None else None
            started = False
            async for chunk in self._generate(entry, prompt, sampling, stops):
                if not started:  # a reply after "Assistant:" starts with a space the user should not see
                    chunk.text = chunk.text.lstrip()
                    if chunk.logprobs and chunk.text:
                        first = chunk.logprobs[0]
                        chunk.logprobs[0] = replace(first, token=first.token.lstrip())
                    started = bool(chunk.text)
                if reader is not None:
                    chunk.text, chunk.tool_calls = reader.push(chunk.text)
                    if chunk.finish_reason is not None:
                        chunk.text += reader.finish()
                        if reader.calls and chunk.finish_reason is FinishReason.STOP:
                            chunk.finish_reason = FinishReason.TOOL_CALLS
                if chunk.text or chunk.tool_calls or chunk.logprobs or chunk.finish_reason is not None:
                    yield chunk

    async def _generate(
        self, entry: ModelEntry, prompt: str, sampling: GenerationParams, extra_stops: tuple[str, ...]
    ) -> AsyncIterator[TextChunk]:
        """Generate on the batch where it can honour the request, alone otherwise; record timings."""
        model_id = entry.model.model_id
        started, started_ns = time.perf_counter(), time.time_ns()
        first = first_ns = None
        async for chunk in self._generate_on_best_path(entry, prompt, sampling, extra_stops):
            if first is None and chunk.text:
                first, first_ns = time.perf_counter(), time.time_ns()
                metrics.TIME_TO_FIRST_TOKEN.labels(model_id).observe(first - started)
            if chunk.usage is not None:
                metrics.TOKENS.labels(model_id, "input").inc(chunk.usage.input_tokens)
                metrics.TOKENS.labels(model_id, "output").inc(chunk.usage.output_tokens)
                if first is not None and chunk.usage.output_tokens > 1:
                    per_token = (time.perf_counter() - first) / (chunk.usage.output_tokens - 1)
                    metrics.TIME_PER_OUTPUT_TOKEN.labels(model_id).observe(per_token)
                # The request's life in the server: waiting for a place in the batch and
                # the prompt's forward pass (prefill), then the batched decode steps.
                usage = {"gen_ai.usage.input_tokens": chunk.usage.input_tokens}
                past_span("queue wait and prefill", started_ns, first_ns or time.time_ns(), usage)
                if first_ns is not None:
                    decoded = {"gen_ai.usage.output_tokens": chunk.usage.output_tokens}
                    past_span(f"{model_id} decode", first_ns, time.time_ns(), decoded)
            yield chunk

    async def _generate_on_best_path(
        self, entry: ModelEntry, prompt: str, sampling: GenerationParams, extra_stops: tuple[str, ...]
    ) -> AsyncIterator[TextChunk]:
        model = entry.model
        batcher = getattr(model, "batcher", None)
        if batcher is not None and ContinuousBatcher.can_serve(sampling):
            input_ids = model.encode(prompt)
            params = self._params(model, len(input_ids), sampling, extra_stops)
            text = model.assembler(len(input_ids), params)
            constraint = await asyncio.to_thread(model.constraint, params.grammar) if params.grammar else None
            async with aclosing(batcher.tokens(input_ids, params, constraint)) as batches:
                async for new_tokens in batches:
                    for token in new_tokens:
                        if piece := text.push(token):
                            yield TextChunk(piece)
                        if text.finish is not None:
                            break
                    if text.finish is not None:
                        break
            yield text.last_chunk()
            return

        def work(cancel: CancelToken) -> Iterator[TextChunk]:
            params = self._params(model, model.count_tokens(prompt), sampling, extra_stops)
            return model.generate(prompt, params, cancel)

        async for chunk in self._stream(entry, work):
            yield chunk

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings:
        """Embed through the model's dynamic batcher, so concurrent callers share passes."""
        async with self.repository.use(model_id, Capability.EMBEDDING) as entry:
            return await self._embed(entry, texts)

    async def _embed(self, entry: ModelEntry, texts: list[str]) -> Embeddings:
        model_id = entry.model.model_id

        def run(items: list[str]) -> list[tuple[list[float], int]]:
            result = entry.model.embed(items)
            return list(zip(result.vectors, result.token_counts, strict=True))

        results = await self._batched(entry.model, run, texts, self._embed_batching.max_batch_size)
        embeddings = Embeddings(vectors=[v for v, _ in results], token_counts=[n for _, n in results])
        metrics.TOKENS.labels(model_id, "input").inc(embeddings.usage.input_tokens)
        return embeddings

    async def transcribe(self, model_id: str, data: bytes, mime_type: str, params: TranscriptionParams) -> Transcript:
        """Speech to text. The audio is checked and decoded first, in a worker thread:
        nothing that is not sound, or is too long, reaches the model (nor loads it)."""
        self.repository.capable(model_id, Capability.TRANSCRIPTION)  # before any decoding
        sound = await asyncio.to_thread(audio.decode, data, mime_type, self._max_audio_seconds)
        async with self.repository.use(model_id, Capability.TRANSCRIPTION) as entry:
            async with entry.concurrency:
                loop = asyncio.get_running_loop()
                transcript = await loop.run_in_executor(self._executor, entry.model.transcribe, sound.samples, params)
        metrics.TOKENS.labels(model_id, "output").inc(transcript.usage.output_tokens if transcript.usage else 0)
        return transcript

    async def stream_transcribe(
        self, model_id: str, data: bytes, mime_type: str, params: TranscriptionParams
    ) -> AsyncIterator[Transcript]:
        """Speech to text a segment at a time (checked and decoded first, as above); a
        caller that goes away stops the model at its next segment."""
        self.repository.capable(model_id, Capability.TRANSCRIPTION)
        sound = await asyncio.to_thread(audio.decode, data, mime_type, self._max_audio_seconds)
        async with self.repository.use(model_id, Capability.TRANSCRIPTION) as entry:
            work = lambda cancel: entry.model.transcribe_stream(sound.samples, params, cancel)  # noqa: E731
            async for piece in self._stream(entry, work):
                if piece.usage is not None:
                    metrics.TOKENS.labels(model_id, "output").inc(piece.usage.output_tokens)
                yield piece

    async def extract_text(self, model_id: str, image: bytes, mime_type: str) -> ExtractedText:
        """The printed text in an image; the image is checked (it decodes as the type it
        claims, within the pixel limit) before the model sees it."""
        self.repository.capable(model_id, Capability.OCR)
        await asyncio.to_thread(check_image, image, mime_type)
        async with self.repository.use(model_id, Capability.OCR) as entry:
            async with entry.concurrency:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, entry.model.read, image)

    async def synthesize(self, model_id: str, text: str, params: SpeechParams) -> AsyncIterator[SpeechChunk]:
        """Text to speech, the encoded audio streamed sentence by sentence."""
        async with self.repository.use(model_id, Capability.SPEECH_SYNTHESIS) as entry:
            async for chunk in self._stream(entry, lambda cancel: entry.model.speak(text, params, cancel)):
                yield chunk

    async def classify_image(self, model_id: str, image: bytes, mime_type: str, top_k: int) -> Labels:
        """An image's `top_k` likeliest classes. The image is checked first; concurrent
        requests share forward passes through the model's dynamic batcher."""
        self.repository.capable(model_id, Capability.IMAGE_CLASSIFICATION)
        await asyncio.to_thread(check_image, image, mime_type)
        async with self.repository.use(model_id, Capability.IMAGE_CLASSIFICATION) as entry:
            # Every image in a batch gets the most classes anyone may ask for; each caller
            # keeps its own top_k of them.
            ranked = await self._batched(
                entry.model, lambda images: entry.model.classify(images, MAX_TOP_K), [image], MAX_IMAGE_BATCH
            )
        return Labels(ranked[0].labels[:top_k], ranked[0].usage)

    async def _batched(self, model: ServedModel, run: Callable[[list], list], items: list, max_batch: int) -> list:
        """`run` over `items` through the model's dynamic batcher (made on first use),
        sharing its passes with other callers' items."""
        batcher = self._batchers.get(model.model_id)
        if batcher is None:
            batcher = self._batchers[model.model_id] = self._batcher(model, run, max_batch)
        try:
            return await batcher.submit(items)
        finally:
            metrics.QUEUE_DEPTH.labels(model.model_id).set(batcher.queued_items)

    def _batcher(self, model: ServedModel, run: Callable[[list], list], max_batch: int) -> DynamicBatcher:
        settings = self._embed_batching
        # Threads of the model's own, one per instance: a model sets its thread count on
        # the thread that runs it, and generation calls must not inherit an instance's
        # share. They outlive unloads: new threads on every reload grew the process by
        # 15% over 20 cycles (glibc keeps per-thread arenas).
        threads = self._batch_threads.get(model.model_id)
        if threads is None:
            threads = ThreadPoolExecutor(model.instances, thread_name_prefix=f"batch-{model.model_id}")
            self._batch_threads[model.model_id] = threads
        return DynamicBatcher(
            model.model_id,
            run,
            threads,
            max_batch,
            settings.max_queue_delay,
            settings.max_queue_items,
            on_batch=metrics.BATCH_SIZE.labels(model.model_id).observe,
            instances=model.instances,
        )

    async def _forget_batcher(self, model_id: str) -> None:
        """Before an unload: the batcher refers to the model's weights."""
        batcher = self._batchers.pop(model_id, None)
        if batcher is not None:
            await batcher.close()

    async def close(self) -> None:
        for model_id in list(self._batchers):
            await self._forget_batcher(model_id)
        for threads in self._batch_threads.values():
            threads.shutdown(wait=True)

    async def warmup(self, model_ids: list[str]) -> list[ModelEntry]:
        """Warm the named models (every loaded one when none are named), loading them if need be."""
        entries = [self.repository.entry(m) for m in model_ids] or [
            e for e in self.repository.entries() if e.state is ModelState.READY
        ]
        loop = asyncio.get_running_loop()
        for entry in entries:
            await self.repository.load(entry.model.model_id)
            async with entry.concurrency:
                await loop.run_in_executor(self._executor, entry.model.warmup)
        return entries

    def _params(
        self, model: ServedModel, prompt_tokens: int, sampling: GenerationParams, extra_stops: tuple[str, ...]
    ) -> GenerationParams:
        """Check the prompt against the context window and settle max_tokens."""
        limit = model.context_length
        if sampling.max_tokens is None:
            if prompt_tokens >= limit:
                raise _context_error(model.model_id, prompt_tokens, 1, limit)
            max_tokens = min(self._default_max_tokens, limit - prompt_tokens)
        else:
            max_tokens = sampling.max_tokens
            if prompt_tokens + max_tokens > limit:
                raise _context_error(model.model_id, prompt_tokens, max_tokens, limit)
        return replace(sampling, max_tokens=max_tokens, stop_sequences=sampling.stop_sequences + extra_stops)

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


def _chat_grammar(model: ServedModel, response_format: ResponseFormat | None, tools: Tools | None) -> str | None:
    """The grammar a chat reply follows: tool calls (or text, or the JSON the response
    format asks for, when the model may choose), the JSON alone, or none."""
    schema = response_format.answer_schema() if response_format is not None else None
    if tools is not None:
        return tool_grammar(tools, schema, model.special_tokens(set(TAGS)))
    return chat_answer_grammar(schema) if schema is not None else None


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
