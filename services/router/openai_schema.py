"""OpenAI request shapes, parsed with pydantic, and their translation to the mesh's own
typed requests.

Nothing a caller sends is silently dropped: every field of OpenAI's request types is
either honoured, accepted as a hint that cannot change an answer (`user`, prompt-cache
keys, `store: false`...: HINTS), or refused with a 400 that names it when set to
anything but its no-op value (REFUSED). A field OpenAI does not define is refused too
(`extra="forbid"`), except the sampling extensions vLLM established (`top_k`,
`repetition_penalty`). tests/conformance/test_no_silent_drops.py enumerates the installed
SDK's request types against these tables, so a field a new SDK adds cannot slip through.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, ClassVar, Literal

from google.protobuf import struct_pb2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as inference_pb
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh.router.v1 import router_messages_pb2 as pb
from services.router.token_ids import decode_token_ids
from services.runtime.errors import InvalidArgument

ROLES = {
    "system": types.ROLE_SYSTEM,
    "developer": types.ROLE_SYSTEM,
    "user": types.ROLE_USER,
    "assistant": types.ROLE_ASSISTANT,
    "tool": types.ROLE_TOOL,
}
TOOL_CHOICES = {
    "auto": options.TOOL_CHOICE_MODE_AUTO,
    "none": options.TOOL_CHOICE_MODE_NONE,
    "required": options.TOOL_CHOICE_MODE_REQUIRED,
}

# Hints: accepted, and without effect on any answer the mesh gives (for OpenAI itself
# they key its internal caches, tag stored logs and identify end users to its abuse
# monitoring; this mesh stores nothing and has no prompt cache to key).
HINTS = {"user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options"}

# Refused unless absent, null or the value that asks for nothing (the second element).
REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "audio": ("audio output is not supported", ()),
    "modalities": ("only text output is supported", (["text"],)),
    "functions": ("the deprecated `functions` parameter is not supported; use `tools`", ([],)),
    "function_call": ("the deprecated `function_call` parameter is not supported; use `tool_choice`", ()),
    "prediction": ("predicted outputs are not supported", ()),
    "reasoning_effort": ("no model served here reasons before answering", ()),
    "verbosity": ("no model served here has a verbosity setting", ()),
    "web_search_options": ("web search is not supported", ()),
    "moderation": ("moderation of outputs is not supported", ()),
    "service_tier": ("there is one service tier", ("auto", "default")),
    "store": ("completions are not stored", (False,)),
    "metadata": ("completions are not stored, so there is nothing to tag with metadata", ({},)),
    "suffix": ("text insertion (suffix) is not supported", ("",)),
    "best_of": ("best_of is not supported", (1,)),
}


def unsupported(param: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"Unsupported parameter: '{param}': {why}.", reason="UNSUPPORTED_PARAMETER", param=param)


class _Request(BaseModel):
    # Fields OpenAI does not define are a 400 naming them, never ignored.
    model_config = ConfigDict(extra="forbid")
    # What this request type refuses (a table like REFUSED).
    refused_fields: ClassVar[dict[str, tuple[str, tuple[Any, ...]]]] = REFUSED

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                # Only fields of this request type: another's is an unknown parameter.
                refused = name in cls.refused_fields and name in cls.model_fields
                if refused and value is not None and value not in cls.refused_fields[name][1]:
                    raise unsupported(name, cls.refused_fields[name][0])
        return data


class _Hinted(_Request):
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    # Refused fields are declared so a no-op value (null, false, "auto") parses.
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageUrl(_Request):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageUrl


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json(cls, value: str) -> str:
        try:
            parsed = json.loads(value or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object as text")
        return value


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Message:
        if self.name:
            raise ValueError("`name` on messages is not supported (participant names are not passed to models)")
        if self.refusal:
            raise ValueError("`refusal` on messages is not supported")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if isinstance(part, TextPart))
        return self.content or ""

    def images(self) -> list[str]:
        if isinstance(self.content, list):
            return [part.image_url.url for part in self.content if isinstance(part, ImagePart)]
        return []

    def to_proto(self) -> inference_pb.ChatMessage:
        calls = [
            options.ToolCall(index=i, id=c.id, name=c.function.name, arguments=c.function.arguments)
            for i, c in enumerate(self.tool_calls or [])
        ]
        return inference_pb.ChatMessage(
            role=ROLES[self.role], content=self.text(), tool_calls=calls, tool_call_id=self.tool_call_id or ""
        )


class StreamOptions(_Request):
    include_usage: bool = False
    include_obfuscation: Literal[False] | None = None


class JsonSchemaFormat(_Request):
    name: str = Field("answer", max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or not self.json_schema.schema_):
            raise ValueError("type json_schema needs json_schema.schema")
        return self

    def to_proto(self) -> options.ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return options.ResponseFormat(type=options.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
        spec = self.json_schema
        schema = struct_pb2.Struct()
        schema.update(spec.schema_)
        return options.ResponseFormat(
            type=options.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            json_schema=schema,
            schema_name=spec.name,
            strict=bool(spec.strict),
            description=spec.description or "",
        )


class FunctionSpec(_Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionSpec

    def to_proto(self) -> options.Tool:
        tool = options.Tool(
            name=self.function.name, description=self.function.description or "", strict=bool(self.function.strict)
        )
        if self.function.parameters:
            tool.parameters.update(self.function.parameters)
        return tool


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class _Sampling(_Hinted):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[int, float] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Extensions vLLM and llama.cpp's server established.
    top_k: int | None = Field(None, ge=0, le=1000)
    repetition_penalty: float | None = Field(None, gt=0, le=2)

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        for token, bias in (value or {}).items():
            if token < 0 or not -100 <= bias <= 100:
                raise ValueError("keys are token ids (>= 0) and values biases from -100 to 100")
        return value

    @model_validator(mode="after")
    def _streaming(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise unsupported("stream_options", "it is only allowed with stream: true")
        return self

    def limit(self) -> int | None:
        return self.max_tokens

    def config(self) -> options.GenerationConfig:
        """The sampling, length and stop settings as the mesh's generation config."""
        optional = {
            "max_tokens": self.limit(),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
        }
        config = options.GenerationConfig(**{name: value for name, value in optional.items() if value is not None})
        config.stop_sequences.extend([self.stop] if isinstance(self.stop, str) else list(self.stop or []))
        if self.logit_bias:
            config.logit_bias.update(self.logit_bias)
        return config


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Refused fields, declared so their no-op values parse (REFUSED says which).
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: Any = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise unsupported("top_logprobs", "it needs logprobs: true")
        for name in ("tool_choice", "parallel_tool_calls"):
            if getattr(self, name) is not None and not self.tools:
                raise unsupported(name, "it is only allowed when tools are given")
        return self

    def image_request(self) -> pb.DescribeImageRequest | None:
        """A conversation that shows the model an image, as the mesh's image description
        call (models with the image-description capability answer it); None for a
        conversation in text. What that call cannot honour is refused by name."""
        shown = [i for i, m in enumerate(self.messages) if m.images()]
        if not shown:
            return None
        index = shown[0]
        message = self.messages[index]
        turns = [m for i, m in enumerate(self.messages) if i != index and m.role not in ("system", "developer")]
        if len(shown) > 1 or len(message.images()) > 1 or turns or message.role != "user":
            raise unsupported(
                f"messages[{index}].content",
                "a chat with an image is answered by a model that describes images: one user message with one "
                "image and its text (system messages may precede it), no other turns",
            )
        for name, used in (
            ("n", self.n > 1),
            ("tools", bool(self.tools)),
            ("response_format", self.response_format is not None and self.response_format.type != "text"),
            ("logprobs", bool(self.logprobs)),
            *((field, getattr(self, field) is not None) for field in IMAGE_UNSAMPLED),
            ("stop", bool(self.stop)),
        ):
            if used:
                raise unsupported(name, "image descriptions take only a prompt and max_tokens")
        mime_type, data = data_url(message.images()[0], f"messages[{index}].content")
        system = [m.text() for m in self.messages if m.role in ("system", "developer")]
        prompt = "\n\n".join([*system, message.text()]).strip()
        request = pb.DescribeImageRequest(model=self.model, image=data, mime_type=mime_type, prompt=prompt)
        if (limit := self.limit()) is not None:
            request.max_tokens = limit
        return request

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_proto(self) -> pb.ChatRequest:
        request = pb.ChatRequest(model=self.model, messages=[m.to_proto() for m in self.messages], config=self.config())
        if self.response_format is not None and (answer := self.response_format.to_proto()) is not None:
            request.config.response_format.CopyFrom(answer)
        if self.logprobs:
            request.config.logprobs = True
            request.config.top_logprobs = self.top_logprobs or 0
        request.tools.extend(t.to_proto() for t in self.tools or [])
        if isinstance(self.tool_choice, NamedToolChoice):
            request.tool_choice.mode = options.TOOL_CHOICE_MODE_FUNCTION
            request.tool_choice.function_name = self.tool_choice.function.name
        elif self.tool_choice is not None:
            request.tool_choice.mode = TOOL_CHOICES[self.tool_choice]
        if self.parallel_tool_calls is not None:
            request.parallel_tool_calls = self.parallel_tool_calls
        return request


IMAGE_UNSAMPLED = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_k",
    "repetition_penalty",
)
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def data_url(url: str, param: str) -> tuple[str, bytes]:
    """An image sent inline (`data:image/png;base64,...`): its type and bytes."""
    found = DATA_URL.match(url)
    if found is None:
        raise unsupported(param, "images must be sent inline as data: URLs (base64); the mesh fetches nothing")
    try:
        return found["mime"], base64.b64decode(found["data"], validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(
            f"{param}: the data URL is not valid base64: {exc}", reason="INVALID_IMAGE", param=param
        ) from None


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(description="Text, texts, or cl100k_base token ids")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise unsupported("echo", "echo with logprobs would need the prompt's log probabilities, not computed here")
        if not self.prompt and not isinstance(self.prompt, str):
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str]:
        """One text per prompt."""
        return texts_of(self.prompt, "prompt")

    def to_protos(self) -> list[pb.GenerateTextRequest]:
        requests = []
        for text in self.prompts():
            request = pb.GenerateTextRequest(model=self.model, prompt=text, config=self.config())
            if self.logprobs is not None:
                request.config.logprobs = True
                request.config.top_logprobs = self.logprobs
            requests.append(request)
        return requests


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] | TokenIds | list[TokenIds] = Field(description="Text, texts, or cl100k_base token ids")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if not value:
            raise ValueError("must not be empty")
        return value

    def to_proto(self) -> pb.EmbedRequest:
        return pb.EmbedRequest(model=self.model, inputs=texts_of(self.input, "input"))


REFUSED_TRANSCRIPTION: dict[str, tuple[str, tuple[Any, ...]]] = {
    "include": ("token log probabilities are not returned for transcriptions", ([],)),
    "chunking_strategy": ("the audio is transcribed in Whisper's own 30-second windows", ()),
    "known_speaker_names": ("speaker diarization is not supported", ([],)),
    "known_speaker_references": ("speaker diarization is not supported", ([],)),
    "keywords": ("keyword boosting is not supported; spell the words in `prompt`", ([],)),
    "languages": ("give the one spoken language in `language`", ([],)),
}


class TranscriptionRequest(_Request):
    """POST /v1/audio/transcriptions, from its multipart form (the file apart)."""

    refused_fields = REFUSED_TRANSCRIPTION
    model: str = Field(min_length=1)
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    temperature: float | None = Field(None, ge=0, le=1)
    timestamp_granularities: list[Literal["word", "segment"]] | None = None
    stream: bool = False  # server-sent events, a segment at a time (json and text formats, as OpenAI's)
    # Refused unless absent or their no-op value (REFUSED_TRANSCRIPTION).
    include: list[str] | None = None
    chunking_strategy: str | None = None
    known_speaker_names: list[str] | None = None
    known_speaker_references: list[str] | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None

    @model_validator(mode="after")
    def _granularities(self) -> TranscriptionRequest:
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise unsupported("timestamp_granularities", "timestamps are given only with response_format verbose_json")
        if self.stream and self.response_format not in ("json", "text"):
            raise unsupported("stream", "a streamed transcript is text: response_format must be json or text")
        return self

    def to_proto(self, audio: bytes, mime_type: str) -> pb.TranscribeRequest:
        request = pb.TranscribeRequest(
            model=self.model,
            audio=audio,
            mime_type=mime_type,
            language=self.language or "",
            prompt=self.prompt or "",
            word_timestamps="word" in (self.timestamp_granularities or ()),
        )
        if self.temperature is not None:
            request.temperature = self.temperature
        return request


REFUSED_SPEECH: dict[str, tuple[str, tuple[Any, ...]]] = {
    "instructions": ("this voice cannot be instructed how to speak", ("",)),
    "stream_format": ("the audio streams as the response body; server-sent events are not supported", ("audio",)),
}
SPEECH_FORMATS = {
    "mp3": types.AUDIO_FORMAT_MP3,
    "opus": types.AUDIO_FORMAT_OPUS,
    "aac": types.AUDIO_FORMAT_AAC,
    "flac": types.AUDIO_FORMAT_FLAC,
    "wav": types.AUDIO_FORMAT_WAV,
    "pcm": types.AUDIO_FORMAT_PCM,
}


class SpeechRequest(_Request):
    """POST /v1/audio/speech."""

    refused_fields = REFUSED_SPEECH

    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=4096)
    voice: str = Field(min_length=1)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float | None = Field(None, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["sse", "audio"] | None = None

    def to_proto(self) -> pb.SynthesizeRequest:
        request = pb.SynthesizeRequest(
            model=self.model, input=self.input, voice=self.voice, format=SPEECH_FORMATS[self.response_format]
        )
        if self.speed is not None:
            request.speed = self.speed
        return request


def parse_fields(model: type[_Request], fields: dict[str, Any]) -> Any:
    """Form fields into `model`, or INVALID_ARGUMENT naming what is wrong."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def texts_of(value: str | list[str] | list[int] | list[list[int]], param: str) -> list[str]:
    """A text, texts, one prompt's token ids or several prompts' as texts (token ids are
    OpenAI's cl100k_base ids: token_ids.py)."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [decode_token_ids(value, param)]
    return [v if isinstance(v, str) else decode_token_ids(v, f"{param}[{i}]") for i, v in enumerate(value)]


def parse(model: type[_Request], body: bytes) -> Any:
    """Parse a JSON body into `model`, or raise INVALID_ARGUMENT naming what is wrong."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:  # also bytes that are not UTF-8, nesting past the parser's depth
        raise InvalidArgument(f"request body is not valid JSON: {exc}", reason="INVALID_JSON") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object", reason="INVALID_JSON")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _invalid(exc: ValidationError) -> InvalidArgument:
    errors = exc.errors(include_url=False)
    where = [_param(e["loc"]) for e in errors]
    if errors[0]["type"] == "extra_forbidden":
        return InvalidArgument(
            f"Unrecognized request argument supplied: {where[0]}", reason="UNKNOWN_PARAMETER", param=where[0]
        )
    problems = "; ".join(f"{w or 'body'}: {e['msg']}" for w, e in zip(where, errors, strict=True))
    return InvalidArgument(
        f"invalid request: {problems}", reason="INVALID_REQUEST_FIELDS", param=where[0], fields=",".join(where)
    )


def _param(loc: tuple) -> str:
    """A pydantic error location as OpenAI names parameters: `messages[0].content`
    (union branches, which pydantic names by type, left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and part not in TYPE_TAGS and part[0].islower() and not set("[-") & set(part):
            out += f".{part}" if out else part
    return out


TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}  # how pydantic names union branches
