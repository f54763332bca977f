"""A sentence embedding model run by ONNX Runtime.

The transformer is exported to ONNX once (from its safetensors, with torch) into the data
directory; later loads read the export. Pooling and normalisation are the same as the
transformers runtime's, so both give the same vectors.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.backend.types import Embeddings
from services.inference.models.tokenized_embedder import TokenizedEmbedder

ONNX_FILE = "model.onnx"


def export_to_onnx(source: Path, target: Path) -> Path:
    """Export an HF encoder to `target/model.onnx` (fp32, dynamic batch and length), once."""
    if (target / ONNX_FILE).exists():
        return target
    import torch
    from transformers import AutoModel

    scratch = target.with_name(f".{target.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    class Encoder(torch.nn.Module):
        """Just the two inputs and the one output the server uses."""

        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModel.from_pretrained(source, dtype=torch.float32).eval()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    torch.onnx.export(
        Encoder(),
        example,
        str(scratch / ONNX_FILE),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "last_hidden_state")
        },
        opset_version=17,
        dynamo=False,
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(scratch, target)
    return target


class OnnxEmbedder(TokenizedEmbedder):
    def __init__(
        self,
        model_id: str,
        weights: Callable[[], Path],
        export_dir: Path,
        device: str,
        instances: int = 1,
        threads: int = 1,
        batch_size: int = 128,
    ) -> None:
        # Concurrent run() calls share the session and its `threads` intra-op threads.
        super().__init__(model_id, weights, instances, threads, batch_size)
        self._export_dir = export_dir
        self.device, self.dtype = device, "float32"
        self.session = None

    def load(self) -> None:
        import onnxruntime as ort

        source = self._weights()
        exported = export_to_onnx(source, self._export_dir)
        self._load_tokenizer(source)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(exported / ONNX_FILE), options, providers=providers)
        self.embedding_dimensions = int(self.session.get_outputs()[0].shape[-1] or 0) or self._probe_width()

    def _probe_width(self) -> int:
        return len(self.embed(["width"]).vectors[0])

    def stop(self) -> None:
        self.session = None
        self.tokenizer = None

    def estimate_bytes(self) -> int:
        onnx = self._export_dir / ONNX_FILE
        if onnx.exists():
            return onnx.stat().st_size
        return sum(f.stat().st_size for f in self._weights().glob("*.safetensors"))

    def memory_bytes(self) -> int:
        return self.estimate_bytes() if self.session is not None else 0

    def embed(self, texts: list[str]) -> Embeddings:
        vectors: list[list[float]] = []
        counts: list[int] = []
        for batch in self._batches(texts, "np"):
            mask = batch["attention_mask"].astype(np.int64)
            (hidden,) = self.session.run(
                ["last_hidden_state"], {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": mask}
            )
            weights = mask[..., None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            vectors.extend(pooled.tolist())
            counts.extend(int(n) for n in mask.sum(axis=1))
        return Embeddings(vectors=vectors, token_counts=counts)
