"""The inference contract's gRPC face, shared by every backend that speaks it (the
local inference server, the provider adapters): protos in, plain calls on a backend,
protos out. Light on purpose: importing it pulls in no model runtime."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Protocol

from google.protobuf import json_format

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import inference_types_pb2 as types
from services.backend.types import (
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
    TokenLogprob,
    ToolCallDelta,
    ToolChoice,
    Tools,
    ToolSpec,
    Transcript,
    TranscriptionParams,
    Usage,
)
from services.runtime.errors import InvalidArgument

ROLES = {
    types.ROLE_SYSTEM: "system",
    types.ROLE_USER: "user",
    types.ROLE_ASSISTANT: "assistant",
    types.ROLE_TOOL: "tool",
}
FINISH = {
    None: types.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: types.FINISH_REASON_STOP,
    FinishReason.LENGTH: types.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: types.FINISH_REASON_TOOL_CALLS,
}
FORMATS = {
    options.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    options.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}
CHOICES = {
    options.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    options.TOOL_CHOICE_MODE_AUTO: "auto",
    options.TOOL_CHOICE_MODE_NONE: "none",
    options.TOOL_CHOICE_MODE_REQUIRED: "required",
    options.TOOL_CHOICE_MODE_FUNCTION: "function",
}


class Backend(Protocol):
    """What the contract's data-plane RPCs call."""

    def generate(self, model_id: str, prompt: str, sampling: GenerationParams) -> AsyncIterator[TextChunk]: ...

    def chat(self, model_id: str, turns: list[ChatTurn], sampling: GenerationParams) -> AsyncIterator[TextChunk]: ...

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings: ...


def json_value(struct) -> dict:
    """A google.protobuf.Struct as plain JSON (Struct numbers are doubles: whole ones
    become ints again, as a JSON Schema's `maxLength: 20` must be)."""

    def whole(value):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: whole(v) for k, v in value.items()}
        if isinstance(value, list):
            return [whole(v) for v in value]
        return value

    return whole(json_format.MessageToDict(struct))


def response_format_from(message: options.ResponseFormat) -> ResponseFormat | None:
    kind = FORMATS.get(message.type)
    if kind is None:
        return None
    schema = json_value(message.json_schema) if message.HasField("json_schema") else None
    if kind == "json_schema" and not schema:
        raise InvalidArgument(
            "response_format of type json_schema needs a schema", reason="MISSING_SCHEMA", param="response_format"
        )
    return ResponseFormat(kind, schema, message.schema_name, message.strict, message.description)


def tools_from(request: pb.ChatRequest) -> Tools | None:
    if not request.tools:
        if request.tool_choice.mode in (options.TOOL_CHOICE_MODE_REQUIRED, options.TOOL_CHOICE_MODE_FUNCTION):
            raise InvalidArgument("tool_choice needs tools to choose from", reason="NO_TOOLS", param="tool_choice")
        return None
    specs = tuple(
        ToolSpec(t.name, t.description, json_value(t.parameters) if t.HasField("parameters") else {})
        for t in request.tools
    )
    choice = ToolChoice(CHOICES[request.tool_choice.mode], request.tool_choice.function_name)
    parallel = not request.HasField("parallel_tool_calls") or request.parallel_tool_calls
    return Tools(specs, choice, parallel)


def sampling_from(request: pb.GenerateTextRequest | pb.ChatRequest) -> GenerationParams:
    config = request.config
    return GenerationParams(
        max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
        temperature=config.temperature if config.HasField("temperature") else 0.0,
        top_p=config.top_p if config.HasField("top_p") else 1.0,
        top_k=config.top_k if config.HasField("top_k") else 0,
        stop_sequences=tuple(config.stop_sequences),
        seed=config.seed if config.HasField("seed") else None,
        repetition_penalty=config.repetition_penalty if config.HasField("repetition_penalty") else 1.0,
        presence_penalty=config.presence_penalty,
        frequency_penalty=config.frequency_penalty,
        logit_bias=tuple(sorted(config.logit_bias.items())),
        logprobs=config.top_logprobs if config.logprobs else None,
        response_format=response_format_from(config.response_format),
        tools=tools_from(request) if isinstance(request, pb.ChatRequest) else None,
    )


def logprobs_proto(entries: list[TokenLogprob]) -> list[options.TokenLogprob]:
    return [
        options.TokenLogprob(
            token=e.token,
            logprob=e.logprob,
            bytes=e.token.encode(),
            top_logprobs=[options.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.token.encode()) for t in e.top],
        )
        for e in entries
    ]


def tool_calls_proto(calls: list[ToolCallDelta]) -> list[options.ToolCall]:
    return [options.ToolCall(index=c.index, id=c.id, name=c.name, arguments=c.arguments) for c in calls]


def turns_from(request: pb.ChatRequest) -> list[ChatTurn]:
    for i, message in enumerate(request.messages):
        for j, call in enumerate(message.tool_calls):
            _check_arguments(call.arguments, f"messages[{i}].tool_calls[{j}].arguments")
    return [
        ChatTurn(
            ROLES[m.role],
            m.content,
            tuple(ToolCallDelta(c.index, c.arguments, c.id, c.name) for c in m.tool_calls),
            m.tool_call_id,
        )
        for m in request.messages
    ]


def _check_arguments(text: str, param: str) -> None:
    """A tool call's arguments in a conversation must be a JSON object (every backend
    hands them on as one)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{param} must be a JSON object", reason="INVALID_TOOL_ARGUMENTS", param=param)


def usage_proto(usage: Usage | None) -> types.Usage | None:
    if usage is None:
        return None
    return types.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
    )


def transcription_params_from(request: pb.TranscribeRequest) -> TranscriptionParams:
    return TranscriptionParams(
        language=request.language or None,
        prompt=request.prompt,
        temperature=request.temperature if request.HasField("temperature") else 0.0,
        word_timestamps=request.word_timestamps,
    )


def transcript_proto(transcript: Transcript, model: str) -> pb.TranscribeResponse:
    return pb.TranscribeResponse(
        text=transcript.text,
        language=transcript.language,
        duration_seconds=transcript.duration_seconds,
        segments=[
            pb.TranscriptSegment(
                id=s.id,
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=s.tokens,
                temperature=s.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
                words=[
                    pb.TranscriptWord(word=w.word, start=w.start, end=w.end, probability=w.probability) for w in s.words
                ],
            )
            for s in transcript.segments
        ],
        usage=usage_proto(transcript.usage),
        model=model,
    )


AUDIO_FORMATS = {
    types.AUDIO_FORMAT_UNSPECIFIED: "mp3",
    types.AUDIO_FORMAT_MP3: "mp3",
    types.AUDIO_FORMAT_OPUS: "opus",
    types.AUDIO_FORMAT_AAC: "aac",
    types.AUDIO_FORMAT_FLAC: "flac",
    types.AUDIO_FORMAT_WAV: "wav",
    types.AUDIO_FORMAT_PCM: "pcm",
}


def speech_params_from(request: pb.SynthesizeRequest) -> SpeechParams:
    return SpeechParams(
        voice=request.voice or None,
        format=AUDIO_FORMATS[request.format],
        speed=request.speed if request.HasField("speed") else 1.0,
    )


def speech_proto(chunk: SpeechChunk, model: str) -> pb.SynthesizeResponse:
    return pb.SynthesizeResponse(
        audio=chunk.audio,
        mime_type=chunk.mime_type,
        sample_rate=chunk.sample_rate,
        usage=usage_proto(chunk.usage),
        model=model,
        duration_seconds=chunk.duration_seconds,
        input_characters=chunk.characters,
    )


def extracted_text_proto(found: ExtractedText, model: str) -> pb.ExtractTextResponse:
    return pb.ExtractTextResponse(
        text=found.text,
        lines=[
            pb.TextLine(text=line.text, confidence=line.confidence, box=[pb.Point(x=x, y=y) for x, y in line.box])
            for line in found.lines
        ],
        usage=usage_proto(found.usage),
        model=model,
    )


def labels_proto(found: Labels, model: str) -> pb.ClassifyImageResponse:
    return pb.ClassifyImageResponse(
        labels=[pb.ImageLabel(label=x.label, score=x.score, class_id=x.class_id) for x in found.labels],
        usage=usage_proto(found.usage),
        model=model,
    )


async def collect(chunks: AsyncIterator[TextChunk]) -> TextChunk:
    """Join a stream of chunks into one, keeping the final finish reason and usage, every
    log probability, and each tool call whole."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    calls: dict[int, ToolCallDelta] = {}
    last = TextChunk("")
    async for chunk in chunks:
        parts.append(chunk.text)
        logprobs += chunk.logprobs
        for piece in chunk.tool_calls:
            call = calls.setdefault(piece.index, ToolCallDelta(piece.index))
            call.id, call.name = call.id or piece.id, call.name or piece.name
            call.arguments += piece.arguments
        last = chunk
    return TextChunk("".join(parts), last.finish_reason, last.usage, logprobs, list(calls.values()))


class ContractServicer(pb_grpc.InferenceServiceServicer):
    """Generation, chat and embeddings over a `Backend`; subclasses add the rest."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _text(self, model: str, chunk: TextChunk) -> pb.GenerateTextResponse:
        return pb.GenerateTextResponse(
            text=chunk.text,
            finish_reason=FINISH[chunk.finish_reason],
            usage=usage_proto(chunk.usage),
            model=model,
            logprobs=logprobs_proto(chunk.logprobs),
        )

    def _chat(self, model: str, chunk: TextChunk) -> pb.ChatResponse:
        return pb.ChatResponse(
            message=pb.ChatMessage(
                role=types.ROLE_ASSISTANT, content=chunk.text, tool_calls=tool_calls_proto(chunk.tool_calls)
            ),
            finish_reason=FINISH[chunk.finish_reason],
            usage=usage_proto(chunk.usage),
            model=model,
            logprobs=logprobs_proto(chunk.logprobs),
        )

    async def GenerateText(self, request, context):
        chunk = await collect(self.backend.generate(request.model, request.prompt, sampling_from(request)))
        return self._text(request.model, chunk)

    async def StreamGenerateText(self, request, context):
        async for chunk in self.backend.generate(request.model, request.prompt, sampling_from(request)):
            yield self._text(request.model, chunk)

    async def Chat(self, request, context):
        chunk = await collect(self.backend.chat(request.model, turns_from(request), sampling_from(request)))
        return self._chat(request.model, chunk)

    async def StreamChat(self, request, context):
        async for chunk in self.backend.chat(request.model, turns_from(request), sampling_from(request)):
            yield self._chat(request.model, chunk)

    async def Embed(self, request, context):
        result = await self.backend.embed(request.model, list(request.inputs))
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(index=i, values=v, input_tokens=n)
                for i, (v, n) in enumerate(zip(result.vectors, result.token_counts, strict=True))
            ],
            usage=usage_proto(result.usage),
            model=request.model,
        )
