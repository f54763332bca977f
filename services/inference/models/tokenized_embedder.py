"""What the sentence-transformers style embedders (torch, ONNX Runtime) share: the
tokenizer, read and called the way sentence-transformers does, and one model run by
several instances side by side."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from services.backend.types import Capability
from services.inference.models.base import ServedModel


class TokenizedEmbedder(ServedModel):
    capabilities = frozenset({Capability.EMBEDDING})

    def __init__(
        self, model_id: str, weights: Callable[[], Path], instances: int, threads: int, batch_size: int
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self._weights = weights
        self.instances = instances
        self._threads = threads  # per instance
        self._batch_size = batch_size
        # A fast tokenizer sets its padding and truncation state on every call and refuses
        # concurrent calls ("Already borrowed"), so instances take turns.
        self._tokenizer_lock = threading.Lock()
        self.tokenizer = None

    def _load_tokenizer(self, path: Path) -> None:
        from transformers import AutoTokenizer

        config = json.loads((path / "sentence_bert_config.json").read_text())
        # Inputs longer than the model was trained on are truncated, as sentence-transformers does.
        self.max_seq_length = self.context_length = int(config["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def _batches(self, texts: list[str], tensors: str) -> Iterator[Any]:
        """Texts in batches, tokenized the way sentence-transformers does (padded, truncated)."""
        for start in range(0, len(texts), self._batch_size):
            with self._tokenizer_lock:
                batch = self.tokenizer(
                    texts[start : start + self._batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors=tensors,
                )
            yield batch

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return min(len(self.tokenizer(text)["input_ids"]), self.max_seq_length)

    def warmup(self) -> None:
        self.embed(["warm up"])
