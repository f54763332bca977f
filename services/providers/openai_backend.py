"""OpenAI, or any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp's server, this
mesh's own front door), through the official SDK.

Text generation and chat both use chat completions: OpenAI's current models serve no
other text endpoint, and every compatible server implements it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import openai

from services.backend import audio_encoding
from services.backend.types import (
    ChatTurn,
    Embeddings,
    FinishReason,
    GenerationParams,
    ResponseFormat,
    Segment,
    SpeechChunk,
    SpeechParams,
    TextChunk,
    TokenLogprob,
    ToolCallDelta,
    Tools,
    TopLogprob,
    Transcript,
    TranscriptionParams,
    Usage,
    Word,
)
from services.providers import errors
from services.providers.apportion import apportion
from services.providers.retrying import Retrier
from services.providers.settings import ProviderSettings
from services.runtime.errors import DomainError, InvalidArgument

FINISH = {"length": FinishReason.LENGTH, "tool_calls": FinishReason.TOOL_CALLS}


class OpenAIBackend:
    provider = "openai"

    def __init__(self, settings: ProviderSettings) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        self._redact = errors.Redactor(key)
        self._client = openai.AsyncOpenAI(
            api_key=key or "unset",
            base_url=settings.openai_base_url,
            timeout=settings.request_timeout_seconds,
            max_retries=0,  # retries are ours (retrying.py), so they never stack
        )
        self._retry = Retrier(settings.max_attempts, settings.max_retry_wait_seconds)
        self._voice = settings.openai_speech_voice

    async def close(self) -> None:
        await self._client.close()

    def _error(self, exc: Exception) -> DomainError:
        if isinstance(exc, openai.APITimeoutError):
            return errors.timed_out(self.provider, str(exc), self._redact)
        if isinstance(exc, openai.APIConnectionError):
            return errors.unreachable(self.provider, str(exc), self._redact)
        if isinstance(exc, openai.APIStatusError):
            retry_after = errors.retry_after_header(exc.response.headers)
            return errors.from_status(self.provider, exc.status_code, exc.message, retry_after, self._redact)
        return errors.unreachable(self.provider, str(exc), self._redact)

    async def _call(self, make) -> Any:
        async def attempt():
            try:
                return await make()
            except openai.OpenAIError as exc:
                raise self._error(exc) from None

        return await self._retry.call(attempt)

    @staticmethod
    def _options(sampling: GenerationParams) -> dict[str, Any]:
        unsupported = [
            name
            for name, value, default in (
                ("top_k", sampling.top_k, 0),
                ("repetition_penalty", sampling.repetition_penalty, 1.0),
            )
            if value != default
        ]
        if unsupported:
            raise InvalidArgument(
                f"the OpenAI API has no {', '.join(unsupported)}",
                reason="UNSUPPORTED_PARAMETER",
                provider="openai",
                param=unsupported[0],
            )
        options: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.max_tokens is not None:
            options["max_tokens"] = sampling.max_tokens
        if sampling.stop_sequences:
            options["stop"] = list(sampling.stop_sequences)
        if sampling.seed is not None:
            options["seed"] = sampling.seed
        if sampling.presence_penalty:
            options["presence_penalty"] = sampling.presence_penalty
        if sampling.frequency_penalty:
            options["frequency_penalty"] = sampling.frequency_penalty
        if sampling.logit_bias:
            options["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
        if sampling.logprobs is not None:
            options["logprobs"] = True
            if sampling.logprobs:
                options["top_logprobs"] = sampling.logprobs
        if (answer := sampling.response_format) is not None:
            options["response_format"] = _response_format(answer)
        if (tools := sampling.tools) is not None:
            options.update(_tool_options(tools))
        return options

    def generate(self, model_id: str, prompt: str, sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        return self.chat(model_id, [ChatTurn("user", prompt)], sampling)

    async def chat(self, model_id: str, turns: list[ChatTurn], sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        async for chunk in self._stream(model_id, [_message(t) for t in turns], self._options(sampling)):
            yield chunk

    async def _stream(self, model_id: str, messages: list[dict], options: dict[str, Any]) -> AsyncIterator[TextChunk]:
        """Streamed chat completion chunks; retried until the first chunk has arrived."""

        async def start():
            stream = await self._client.chat.completions.create(
                model=model_id, messages=messages, stream=True, stream_options={"include_usage": True}, **options
            )
            iterator = stream.__aiter__()
            return stream, iterator, await anext(iterator, None)

        stream, iterator, first = await self._call(start)
        finish: FinishReason | None = None
        ended = False
        try:
            chunk = first
            while chunk is not None:
                piece = TextChunk("")
                for choice in chunk.choices:
                    piece.text += choice.delta.content or ""
                    piece.tool_calls += [_tool_call(c) for c in choice.delta.tool_calls or []]
                    if choice.logprobs is not None:
                        piece.logprobs += [_logprob(entry) for entry in choice.logprobs.content or []]
                    if choice.finish_reason:
                        finish = FINISH.get(choice.finish_reason, FinishReason.STOP)
                if chunk.usage is not None:
                    piece.finish_reason = finish or FinishReason.STOP
                    piece.usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    yield piece
                    ended = True
                elif piece.text or piece.tool_calls or piece.logprobs:
                    yield piece
                try:
                    chunk = await anext(iterator, None)
                except openai.OpenAIError as exc:
                    raise self._error(exc) from None
            if not ended:  # a server that reports no usage: end the stream all the same
                yield TextChunk("", finish or FinishReason.STOP, Usage())
        finally:
            await stream.close()

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings:
        reply = await self._call(
            lambda: self._client.embeddings.create(model=model_id, input=texts, encoding_format="float")
        )
        vectors = [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]
        errors.check_count(self.provider, "embeddings", len(vectors), len(texts))
        return Embeddings(vectors=vectors, token_counts=apportion(reply.usage.prompt_tokens, texts))

    async def describe_image(
        self, model_id: str, image: bytes, mime_type: str, prompt: str, max_tokens: int | None
    ) -> tuple[str, Usage]:
        url = f"data:{mime_type};base64,{base64.b64encode(image).decode()}"
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        options = {"max_tokens": max_tokens} if max_tokens else {}
        reply = await self._call(
            lambda: self._client.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": content}], **options
            )
        )
        usage = Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens) if reply.usage else Usage()
        return reply.choices[0].message.content or "", usage

    async def transcribe(self, model_id: str, audio: bytes, mime_type: str, params: TranscriptionParams) -> Transcript:
        """OpenAI's transcription endpoint, asked for verbose JSON (timed segments; words
        when asked for)."""
        options: dict[str, Any] = {"temperature": params.temperature}
        if params.language:
            options["language"] = params.language
        if params.prompt:
            options["prompt"] = params.prompt
        granularities = ["segment", "word"] if params.word_timestamps else ["segment"]
        extension = MIME_EXTENSIONS.get(mime_type.split(";")[0].strip().lower(), "bin")
        reply = await self._call(
            lambda: self._client.audio.transcriptions.create(
                model=model_id,
                file=(f"audio.{extension}", audio, mime_type or "application/octet-stream"),
                response_format="verbose_json",
                timestamp_granularities=granularities,
                **options,
            )
        )
        return _transcript(reply)

    async def speak(self, model_id: str, text: str, params: SpeechParams) -> AsyncIterator[SpeechChunk]:
        """OpenAI's speech endpoint, its audio passed on as it streams in. OpenAI says
        nothing of the audio's length: the last piece carries the characters spoken only."""
        mime_type = audio_encoding.MIME_TYPES[params.format]
        options: dict[str, Any] = {"speed": params.speed} if params.speed != 1.0 else {}

        async def start():
            manager = self._client.audio.speech.with_streaming_response.create(
                model=model_id, voice=params.voice or self._voice, input=text, response_format=params.format, **options
            )
            return manager, await manager.__aenter__()

        manager, response = await self._call(start)
        try:
            async for piece in response.iter_bytes():
                yield SpeechChunk(piece, mime_type, OPENAI_RATES.get(params.format, 24000))
            yield SpeechChunk(b"", mime_type, OPENAI_RATES.get(params.format, 24000), Usage(), 0.0, len(text))
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        finally:
            await manager.__aexit__(None, None, None)


# The file name's extension tells OpenAI the audio's type.
MIME_EXTENSIONS = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3",
    "audio/mp4": "m4a", "audio/m4a": "m4a", "audio/x-m4a": "m4a", "video/mp4": "mp4", "audio/webm": "webm",
    "video/webm": "webm", "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg", "audio/opus": "ogg",
}  # fmt: skip
OPENAI_RATES = {"pcm": 24000, "opus": 48000}  # the rest: 24 kHz as OpenAI makes them


def _transcript(reply) -> Transcript:
    words = list(getattr(reply, "words", None) or [])
    segments = []
    for i, s in enumerate(getattr(reply, "segments", None) or []):
        # OpenAI gives no confidence for a word: 0.
        inside = tuple(Word(w.word, w.start, w.end, 0.0) for w in words if s.start <= w.start < s.end)
        segments.append(
            Segment(
                id=i,
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=tuple(s.tokens or ()),
                temperature=s.temperature or 0.0,
                avg_logprob=s.avg_logprob or 0.0,
                compression_ratio=s.compression_ratio or 0.0,
                no_speech_prob=s.no_speech_prob or 0.0,
                words=inside,
            )
        )
    language = getattr(reply, "language", "") or ""
    return Transcript(
        reply.text.strip(), language, float(getattr(reply, "duration", 0.0) or 0.0), tuple(segments), Usage()
    )


def _message(turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
        message["content"] = turn.content or None
    if turn.role == "tool":
        message["tool_call_id"] = turn.tool_call_id
    return message


def _response_format(answer: ResponseFormat) -> dict[str, Any]:
    if answer.kind == "json_object":
        return {"type": "json_object"}
    schema = {"name": answer.name or "answer", "schema": answer.schema, "strict": answer.strict}
    if answer.description:
        schema["description"] = answer.description
    return {"type": "json_schema", "json_schema": schema}


def _tool_options(tools: Tools) -> dict[str, Any]:
    choice: Any = tools.choice.mode
    if choice == "function":
        choice = {"type": "function", "function": {"name": tools.choice.name}}
    options: dict[str, Any] = {"tools": [spec.as_openai() for spec in tools.specs], "tool_choice": choice}
    if not tools.parallel:
        options["parallel_tool_calls"] = False
    return options


def _tool_call(call) -> ToolCallDelta:
    function = call.function
    return ToolCallDelta(
        index=call.index,
        arguments=(function.arguments if function else None) or "",
        id=call.id or "",
        name=(function.name if function else None) or "",
    )


def _logprob(entry) -> TokenLogprob:
    top = tuple(TopLogprob(t.token, t.logprob) for t in entry.top_logprobs or [])
    return TokenLogprob(entry.token, entry.logprob, top)
