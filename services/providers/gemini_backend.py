"""Google's Gemini API through its current SDK, google-genai (google-generativeai, which
the design card names, reached its end of life in 2025)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import numpy as np
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from services.backend.audio import decode
from services.backend.audio_encoding import StreamEncoder
from services.backend.types import (
    NO_ARGUMENTS,
    ChatTurn,
    Embeddings,
    FinishReason,
    GenerationParams,
    Segment,
    SpeechChunk,
    SpeechParams,
    TextChunk,
    ToolCallDelta,
    Transcript,
    TranscriptionParams,
    Usage,
    new_call_id,
)
from services.providers import errors
from services.providers.apportion import apportion
from services.providers.retrying import Retrier
from services.providers.settings import ProviderSettings
from services.runtime.errors import DomainError, InvalidArgument, Unavailable

ROLES = {"user": "user", "assistant": "model", "tool": "user"}
CHOICES = {
    "auto": types.FunctionCallingConfigMode.AUTO,
    "none": types.FunctionCallingConfigMode.NONE,
    "required": types.FunctionCallingConfigMode.ANY,
    "function": types.FunctionCallingConfigMode.ANY,
}
# Gemini has no speech-to-text endpoint: its models transcribe when asked to.
TRANSCRIBE = (
    "Transcribe the speech in this audio verbatim. Answer with the transcript only: no timestamps, "
    "speaker labels, descriptions or commentary."
)
# The longest audio a Gemini prompt takes (Google's documented limit: 9.5 hours).
MAX_AUDIO_SECONDS = 9.5 * 3600
# Gemini's speech: 16-bit little-endian mono PCM, its rate in the MIME type.
PCM_RATE = re.compile(r"rate=(\d+)")
DEFAULT_PCM_RATE = 24000

# google-genai sends with httpx2 (or httpx, when asked to): either can raise.
TRANSPORT_ERRORS = (httpx.HTTPError, httpx2.HTTPError)
TIMEOUTS = (httpx.TimeoutException, httpx2.TimeoutException)


class GeminiBackend:
    provider = "gemini"

    def __init__(self, settings: ProviderSettings) -> None:
        key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else ""
        self._redact = errors.Redactor(key)
        options = types.HttpOptions(
            base_url=settings.gemini_base_url,
            timeout=int(settings.request_timeout_seconds * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours (retrying.py)
        )
        self._client = genai.Client(api_key=key or "unset", http_options=options)
        self._voice = settings.gemini_speech_voice
        self._retry = Retrier(settings.max_attempts, settings.max_retry_wait_seconds)

    async def close(self) -> None:
        await self._client.aio.aclose()

    def _error(self, exc: Exception) -> DomainError:
        if isinstance(exc, genai_errors.APIError):
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None)
            retry_after = errors.retry_after_header(headers) or errors.retry_delay_detail(exc.details)
            return errors.from_status(
                self.provider, exc.code or 500, exc.message or str(exc), retry_after, self._redact
            )
        if isinstance(exc, TIMEOUTS):
            return errors.timed_out(self.provider, str(exc), self._redact)
        return errors.unreachable(self.provider, str(exc), self._redact)

    async def _call(self, make) -> Any:
        async def attempt():
            try:
                return await make()
            except (genai_errors.APIError, *TRANSPORT_ERRORS) as exc:
                raise self._error(exc) from None

        return await self._retry.call(attempt)

    @staticmethod
    def _config(sampling: GenerationParams, system: str | None = None) -> types.GenerateContentConfig:
        unsupported = [
            name
            for name, used in (
                ("repetition_penalty", sampling.repetition_penalty != 1.0),
                ("logit_bias", bool(sampling.logit_bias)),
                ("logprobs", sampling.logprobs is not None),
                ("parallel_tool_calls", sampling.tools is not None and not sampling.tools.parallel),
            )
            if used
        ]
        if unsupported:
            raise InvalidArgument(
                f"the Gemini API has no {', '.join(unsupported)}",
                reason="UNSUPPORTED_PARAMETER",
                provider="gemini",
                param=unsupported[0],
            )
        config = types.GenerateContentConfig(
            max_output_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or None,
            stop_sequences=list(sampling.stop_sequences) or None,
            seed=sampling.seed,
            system_instruction=system,
            presence_penalty=sampling.presence_penalty or None,
            frequency_penalty=sampling.frequency_penalty or None,
        )
        if (answer := sampling.response_format) is not None:
            config.response_mime_type = "application/json"
            schema = answer.answer_schema()
            if answer.description:  # Gemini takes what the answer is for inside the schema
                schema = {"description": answer.description, **schema}
            config.response_json_schema = schema
        if (tools := sampling.tools) is not None:
            config.tools = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=spec.name,
                            description=spec.description or None,
                            parameters_json_schema=spec.parameters or NO_ARGUMENTS,
                        )
                        for spec in tools.specs
                    ]
                )
            ]
            allowed = [tools.choice.name] if tools.choice.mode == "function" else None
            config.tool_config = types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=CHOICES[tools.choice.mode], allowed_function_names=allowed
                )
            )
        return config

    def generate(self, model_id: str, prompt: str, sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        return self._stream(model_id, prompt, self._config(sampling))

    def chat(self, model_id: str, turns: list[ChatTurn], sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        system = "\n".join(turn.content for turn in turns if turn.role == "system") or None
        contents = _contents([turn for turn in turns if turn.role != "system"])
        if not contents:  # google-genai raises ValueError for it, before any request
            raise InvalidArgument(
                "a chat with a Gemini model needs a user or assistant message, not only system ones",
                reason="NO_CONVERSATION",
                provider=self.provider,
            )
        return self._stream(model_id, contents, self._config(sampling, system))

    async def _stream(
        self, model_id: str, contents: Any, config: types.GenerateContentConfig
    ) -> AsyncIterator[TextChunk]:
        """streamGenerateContent chunks; retried until the first chunk has arrived."""

        async def start():
            stream = await self._client.aio.models.generate_content_stream(
                model=model_id, contents=contents, config=config
            )
            return stream, await anext(stream, None)

        stream, chunk = await self._call(start)
        finish: FinishReason | None = None
        usage = Usage()
        calls = 0
        while chunk is not None:
            for candidate in chunk.candidates or []:
                if (
                    candidate.finish_reason is not None
                    and candidate.finish_reason != types.FinishReason.FINISH_REASON_UNSPECIFIED
                ):
                    limited = candidate.finish_reason == types.FinishReason.MAX_TOKENS
                    finish = FinishReason.LENGTH if limited else FinishReason.STOP
            if chunk.usage_metadata is not None:
                usage = _usage(chunk)
            piece = TextChunk(_text(chunk))
            for call in chunk.function_calls or []:  # Gemini sends each call whole
                arguments = json.dumps(call.args or {})
                piece.tool_calls.append(ToolCallDelta(calls, arguments, call.id or new_call_id(), call.name or ""))
                calls += 1
            if piece.text or piece.tool_calls:
                yield piece
            try:
                chunk = await anext(stream, None)
            except (genai_errors.APIError, *TRANSPORT_ERRORS) as exc:
                raise self._error(exc) from None
        if calls and finish is FinishReason.STOP:
            finish = FinishReason.TOOL_CALLS
        yield TextChunk("", finish or FinishReason.STOP, usage)

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings:
        # One Content per text: given plain strings, google-genai sends a model it deems
        # multimodal (an id with "gemini" in it, gemini-embedding-001 aside) a single
        # content of many parts, and gets one embedding back for all the texts.
        contents = [types.Content(parts=[types.Part(text=text)]) for text in texts]
        reply = await self._call(lambda: self._client.aio.models.embed_content(model=model_id, contents=contents))
        vectors = [list(e.values or []) for e in reply.embeddings or []]
        errors.check_count(self.provider, "embeddings", len(vectors), len(texts))
        # The Gemini API reports no token counts for embeddings.
        return Embeddings(vectors=vectors, token_counts=apportion(0, texts))

    async def describe_image(
        self, model_id: str, image: bytes, mime_type: str, prompt: str, max_tokens: int | None
    ) -> tuple[str, Usage]:
        contents = [types.Part.from_bytes(data=image, mime_type=mime_type), prompt]
        config = types.GenerateContentConfig(max_output_tokens=max_tokens)
        reply = await self._call(
            lambda: self._client.aio.models.generate_content(model=model_id, contents=contents, config=config)
        )
        return reply.text or "", _usage(reply)

    async def transcribe(self, model_id: str, audio: bytes, mime_type: str, params: TranscriptionParams) -> Transcript:
        """A transcript asked of a Gemini model (the audio as an inline part, then the
        instruction). Gemini times nothing: the transcript is one segment over the whole
        audio, whose length is read from the audio itself (the adapter decodes it, which
        also refuses what is not audio before anything is sent)."""
        if params.word_timestamps:
            raise InvalidArgument(
                "Gemini gives no word timestamps", reason="UNSUPPORTED_PARAMETER", param="timestamp_granularities"
            )
        seconds = round((await asyncio.to_thread(decode, audio, mime_type, MAX_AUDIO_SECONDS)).seconds, 3)
        instruction = TRANSCRIBE
        if params.language:
            instruction += f" The speech is in the language with ISO-639-1 code {params.language!r}."
        if params.prompt:
            instruction += f" It may use words from this text: {params.prompt}"
        contents = [types.Part.from_bytes(data=audio, mime_type=mime_type or "audio/wav"), instruction]
        config = types.GenerateContentConfig(temperature=params.temperature)
        reply = await self._call(
            lambda: self._client.aio.models.generate_content(model=model_id, contents=contents, config=config)
        )
        text = (reply.text or "").strip()
        segments = (Segment(id=0, start=0.0, end=seconds, text=text),) if text else ()
        return Transcript(text, params.language or "", seconds, segments, _usage(reply))

    async def speak(self, model_id: str, text: str, params: SpeechParams) -> AsyncIterator[SpeechChunk]:
        """Speech from a Gemini TTS model (its PCM, encoded here into the asked format).
        Gemini answers with the whole audio at once, so it arrives as one piece and the end."""
        if params.speed != 1.0:
            raise InvalidArgument("Gemini's speech has no speaking rate", reason="UNSUPPORTED_PARAMETER", param="speed")
        voice = types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=params.voice or self._voice)
        )
        config = types.GenerateContentConfig(
            response_modalities=["AUDIO"], speech_config=types.SpeechConfig(voice_config=voice)
        )
        reply = await self._call(
            lambda: self._client.aio.models.generate_content(model=model_id, contents=text, config=config)
        )
        audio = next((part.inline_data for part in _parts(reply) if part.inline_data and part.inline_data.data), None)
        if audio is None:
            raise Unavailable(
                f"{self.provider} answered a speech request with no audio",
                reason="PROVIDER_BAD_REPLY",
                provider=self.provider,
            )
        match = PCM_RATE.search(audio.mime_type or "")
        rate = int(match.group(1)) if match else DEFAULT_PCM_RATE
        samples = np.frombuffer(audio.data[: len(audio.data) // 2 * 2], dtype="<i2")
        encoder = StreamEncoder(params.format, rate)
        if data := encoder.encode(samples):
            yield SpeechChunk(data, encoder.mime_type, encoder.sample_rate)
        yield SpeechChunk(
            encoder.finish(), encoder.mime_type, encoder.sample_rate, _usage(reply), round(len(samples) / rate, 3),
            len(text),
        )  # fmt: skip


def _parts(reply: types.GenerateContentResponse) -> list[types.Part]:
    """The first candidate's parts (none when Gemini sent no content)."""
    return list(reply.candidates[0].content.parts or []) if reply.candidates and reply.candidates[0].content else []


def _text(chunk: types.GenerateContentResponse) -> str:
    """The chunk's text parts (not `chunk.text`, which warns when a chunk holds a call)."""
    return "".join(part.text for part in _parts(chunk) if part.text and not part.thought)


def _usage(reply: types.GenerateContentResponse) -> Usage:
    """Gemini's token counts for a reply (zeros when it sent none)."""
    metadata = reply.usage_metadata
    return Usage(metadata.prompt_token_count or 0, metadata.candidates_token_count or 0) if metadata else Usage()


def _contents(turns: list[ChatTurn]) -> list[types.Content]:
    """The conversation as Gemini contents: calls the model made are function_call parts,
    tool results function_response parts naming the function they answer."""
    names = {call.id: call.name for turn in turns for call in turn.tool_calls}
    contents = []
    for turn in turns:
        parts = [types.Part(text=turn.content)] if turn.content and turn.role != "tool" else []
        for call in turn.tool_calls:
            parts.append(
                types.Part(
                    function_call=types.FunctionCall(
                        id=call.id, name=call.name, args=json.loads(call.arguments or "{}")
                    )
                )
            )
        if turn.role == "tool":
            response = types.FunctionResponse(
                id=turn.tool_call_id, name=names.get(turn.tool_call_id, ""), response={"result": turn.content}
            )
            parts.append(types.Part(function_response=response))
        contents.append(types.Content(role=ROLES[turn.role], parts=parts))
    return contents
