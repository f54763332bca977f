"""A sentence-transformers style embedding model (transformer + mean pooling + L2 norm),
run with plain transformers so no extra framework sits between the server and torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModel

from services.backend.types import Embeddings
from services.inference.models.base import safetensors_bytes
from services.inference.models.tokenized_embedder import TokenizedEmbedder
from services.inference.models.torch_threads import use_torch_threads


class SentenceEmbedder(TokenizedEmbedder):
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
        super().__init__(model_id, weights, instances, threads, batch_size)
        self._torch_device = torch.device(device)
        self._torch_dtype = dtype
        self.device, self.dtype = str(self._torch_device), str(dtype).removeprefix("torch.")

    def load(self) -> None:
        path = self._weights()
        self._load_tokenizer(path)
        model = AutoModel.from_pretrained(path, dtype=self._torch_dtype)
        self.model = model.to(self._torch_device).eval()
        self.embedding_dimensions = int(model.config.hidden_size)

    def estimate_bytes(self) -> int:
        return safetensors_bytes(self._weights(), self._torch_dtype.itemsize)

    def stop(self) -> None:
        self.model = None
        self.tokenizer = None

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> Embeddings:
        use_torch_threads(self._threads)
        vectors: list[list[float]] = []
        counts: list[int] = []
        for batch in self._batches(texts, "pt"):
            batch = batch.to(self._torch_device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors.extend(torch.nn.functional.normalize(pooled.float(), dim=-1).tolist())
            counts.extend(int(n) for n in batch["attention_mask"].sum(dim=1))
        return Embeddings(vectors=vectors, token_counts=counts)
