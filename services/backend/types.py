"""The plain types of the backend contract (protos/infermesh/inference/v1), as every
backend's core exchanges them: what a generation is asked for (GenerationParams, with
its response format and tools), what comes back (TextChunk, Embeddings, Usage), and a
conversation's turns. contract.py maps them to and from the protos; the inference
server and the provider adapters both speak them."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from services.runtime.errors import InvalidArgument


class Capability(enum.Enum):
    TEXT_GENERATION = "text-generation"
    CHAT = "chat"
    EMBEDDING = "embedding"
    IMAGE_DESCRIPTION = "image-description"
    TRANSCRIPTION = "transcription"
    SPEECH_SYNTHESIS = "speech-synthesis"
    OCR = "ocr"
    IMAGE_CLASSIFICATION = "image-classification"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}

ChoiceMode = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_openai(self) -> dict[str, Any]:
        """The tool as chat templates expect it (OpenAI's shape)."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters or NO_ARGUMENTS}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    name: str = ""  # for mode "function"


@dataclass(frozen=True)
class Tools:
    """The tools a chat request offers, and the rule for calling them."""

    specs: tuple[ToolSpec, ...]
    choice: ToolChoice = ToolChoice()
    parallel: bool = True

    @property
    def callable(self) -> bool:
        return bool(self.specs) and self.choice.mode != "none"

    def callable_specs(self) -> tuple[ToolSpec, ...]:
        if self.choice.mode != "function":
            return self.specs
        named = tuple(s for s in self.specs if s.name == self.choice.name)
        if not named:
            raise InvalidArgument(
                f"tool_choice names {self.choice.name!r}, which is not among the tools "
                f"({', '.join(s.name for s in self.specs) or 'none'})",
                reason="UNKNOWN_TOOL",
                param="tool_choice",
                tool=self.choice.name,
            )
        return named


@dataclass(frozen=True)
class ResponseFormat:
    """The shape the answer must have: any JSON object, or JSON following `schema`."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str = ""
    strict: bool = False
    description: str = ""

    def answer_schema(self) -> dict[str, Any]:
        return self.schema if self.kind == "json_schema" and self.schema is not None else {"type": "object"}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling options. max_tokens None means the server default; the core settles it
    (against the context window) before a model sees the parameters."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id of the model's tokenizer, bias)
    # None: no log probabilities; k >= 0: the chosen token's and the k most likely.
    logprobs: int | None = None
    response_format: ResponseFormat | None = None  # None: text
    tools: Tools | None = None  # chat only
    # The llguidance grammar (grammar.py) the output must follow, which the inference
    # core derives from response_format and tools; None: free text.
    grammar: str | None = None

    @property
    def plain(self) -> bool:
        """Whether nothing beyond temperature and stop sequences shapes the decoding."""
        return (
            self.repetition_penalty == 1.0
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logit_bias
            and self.logprobs is None
            and self.grammar is None
        )


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's text (the text it added), its log probability, and the most
    likely alternatives at its position."""

    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass
class ToolCallDelta:
    """A tool call, or in a stream a piece of one: the first piece of a call has its id
    and name; `arguments` pieces join to the call's JSON arguments."""

    index: int
    arguments: str = ""
    id: str = ""
    name: str = ""


@dataclass
class TextChunk:
    """Text added by one step; the last chunk of a generation has finish_reason and usage."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation: an assistant turn may carry the tool calls it made
    (complete, arguments as JSON text); a tool turn names the call it answers."""

    role: str  # system, user, assistant, tool
    content: str
    tool_calls: tuple[ToolCallDelta, ...] = ()
    tool_call_id: str = ""


@dataclass
class Embeddings:
    vectors: list[list[float]]
    token_counts: list[int] = field(default_factory=list)  # per input, as the model saw it

    @property
    def usage(self) -> Usage:
        return Usage(input_tokens=sum(self.token_counts))


def new_call_id() -> str:
    """An id for a tool call, as OpenAI's look (`call_...`)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class TranscriptionParams:
    """How to transcribe: the spoken language (None: detect it), text that guides the
    model, its temperature, and whether to time each word."""

    language: str | None = None
    prompt: str = ""
    temperature: float = 0.0
    word_timestamps: bool = False


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of speech transcribed at once, with the model's own measures of it."""

    id: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration_seconds: float
    segments: tuple[Segment, ...] = ()
    usage: Usage | None = None


AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


@dataclass(frozen=True)
class SpeechParams:
    """How to speak: the voice (None: the model's own), the encoding, the speaking rate."""

    voice: str | None = None
    format: AudioFormat = "mp3"
    speed: float = 1.0


@dataclass(frozen=True)
class SpeechChunk:
    """The next bytes of encoded speech; the last one carries the usage (no tokens), the
    seconds of audio made and the characters spoken."""

    audio: bytes
    mime_type: str
    sample_rate: int
    usage: Usage | None = None
    duration_seconds: float = 0.0
    characters: int = 0


@dataclass(frozen=True)
class TextLine:
    """A line of text found in an image, with the corners of its box in pixels."""

    text: str
    confidence: float
    box: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class ExtractedText:
    lines: tuple[TextLine, ...]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True)
class ImageLabel:
    label: str
    score: float  # the model's probability for the class, 0 to 1
    class_id: int = 0


@dataclass(frozen=True)
class Labels:
    """An image's likeliest classes, best first."""

    labels: tuple[ImageLabel, ...]
    usage: Usage | None = None
