"""The model base class (load / warmup / stop) and the plain types cores exchange."""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class Capability(enum.Enum):
    TEXT_GENERATION = "text-generation"
    CHAT = "chat"
    EMBEDDING = "embedding"
    IMAGE_DESCRIPTION = "image-description"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"


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


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class TextChunk:
    """Text added by one step; the last chunk of a generation has finish_reason and usage."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass
class Embeddings:
    vectors: list[list[float]]
    token_counts: list[int] = field(default_factory=list)  # per input, as the model saw it

    @property
    def usage(self) -> Usage:
        return Usage(input_tokens=sum(self.token_counts))


class CancelToken:
    """Set by the serving side when the caller has gone; models check it between steps."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ServedModel(abc.ABC):
    """A model the server can hold. Methods are blocking; the core runs them in threads."""

    model_id: str
    capabilities: frozenset[Capability]
    # How many embed() calls the model runs side by side, each on its own share of the
    # threads (Triton's instance count); the core's batcher keeps that many batches going.
    instances: int = 1

    def __init__(self) -> None:
        self.device = "cpu"
        self.dtype = "float32"
        self.context_length = 0
        self.embedding_dimensions = 0

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights; raise if the model cannot serve (fail fast)."""

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run one tiny request so first-call latency is not paid by a user."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Release weights."""

    def estimate_bytes(self) -> int:
        """Bytes the model will hold once loaded, known before loading; 0 when unknown."""
        return 0

    def memory_bytes(self) -> int:
        """Bytes of weights and buffers the model holds (on whichever device)."""
        module = getattr(self, "model", None)
        if module is None:
            return 0
        tensors = [*module.parameters(), *module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def generate(self, prompt: str, params: GenerationParams, cancel: CancelToken) -> Iterator[TextChunk]:
        raise NotImplementedError

    def chat_prompt(self, messages: list[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
        """The prompt for a conversation of (role, content) pairs, and extra stop sequences."""
        raise NotImplementedError

    def embed(self, texts: list[str]) -> Embeddings:
        raise NotImplementedError


def safetensors_bytes(directory: Path, element_size: int) -> int:
    """Size of the weights in `directory` at `element_size` bytes per value, read from the
    safetensors headers alone (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a dict
                total += math.prod(weights.get_slice(name).get_shape()) * element_size
    return total
