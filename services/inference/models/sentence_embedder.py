"""A sentence-transformers style embedding model (transformer + mean pooling + L2 norm),
run with plain transformers so no extra framework sits between the server and torch."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from infermesh_inference.models.base import Capability, Embeddings, ServedModel, safetensors_bytes
from infermesh_inference.models.torch_threads import use_torch_threads


def tokenized_batches(
    tokenizer, lock: threading.Lock, texts: list[str], batch_size: int, max_length: int, tensors: str
) -> Iterator[Any]:
    """Texts in batches, tokenized the way sentence-transformers does (padded, truncated).

    A fast tokenizer sets its padding and truncation state on every call and refuses
    concurrent calls ("Already borrowed"), so model instances take turns through `lock`."""
    for start in range(0, len(texts), batch_size):
        with lock:
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors=tensors,
            )
        yield batch


class SentenceEmbedder(ServedModel):
    capabilities = frozenset({Capability.EMBEDDING})

    def __init__(
        self,
        model_id: str,
        weights: Callable[[], Path],
        device: str,
        dtype: torch.dtype,
        instances: int = 1,
        threads: int = 1,
        batch_size: int = 128,
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self._weights = weights
        self._torch_device = torch.device(device)
        self._torch_dtype = dtype
        self.instances = instances
        self._threads = threads  # per instance
        self._batch_size = batch_size
        self._tokenizer_lock = threading.Lock()
        self.device, self.dtype = str(self._torch_device), str(dtype).removeprefix("torch.")

    def load(self) -> None:
        path = self._weights()
        config = json.loads((path / "sentence_bert_config.json").read_text())
        # Inputs longer than the model was trained on are truncated, as sentence-transformers does.
        self.max_seq_length = int(config["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=self._torch_dtype)
        self.model = model.to(self._torch_device).eval()
        self.context_length = self.max_seq_length
        self.embedding_dimensions = int(model.config.hidden_size)

    def estimate_bytes(self) -> int:
        return safetensors_bytes(self._weights(), self._torch_dtype.itemsize)

    def warmup(self) -> None:
        self.embed(["warm up"])

    def stop(self) -> None:
        self.model = None
        self.tokenizer = None

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return min(len(self.tokenizer(text)["input_ids"]), self.max_seq_length)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> Embeddings:
        use_torch_threads(self._threads)
        vectors: list[list[float]] = []
        counts: list[int] = []
        batches = tokenized_batches(
            self.tokenizer, self._tokenizer_lock, texts, self._batch_size, self.max_seq_length, "pt"
        )
        for batch in batches:
            batch = batch.to(self._torch_device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors.extend(torch.nn.functional.normalize(pooled.float(), dim=-1).tolist())
            counts.extend(int(n) for n in batch["attention_mask"].sum(dim=1))
        return Embeddings(vectors=vectors, token_counts=counts)
