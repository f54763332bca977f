"""The model base class (load / warmup / stop), and what a model needs besides the
contract's types (services.backend.types)."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from pathlib import Path

from services.backend.types import Capability, ChatTurn, Embeddings, GenerationParams, TextChunk, Tools


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

    def chat_prompt(self, turns: list[ChatTurn], tools: Tools | None = None) -> tuple[str, tuple[str, ...]]:
        """The prompt for a conversation, with the tools the model may call (None: no
        tools), and extra stop sequences."""
        raise NotImplementedError

    def special_tokens(self, texts: set[str]) -> set[str]:
        """Which of `texts` the model's tokenizer has as single special tokens (for
        grammars, which must name those as tokens)."""
        return set()

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
