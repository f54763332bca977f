"""OCR with RapidOCR: PaddleOCR's PP-OCRv6 detection and recognition models (small, with
the text-direction classifier), shipped inside the rapidocr wheel and run by ONNX
Runtime. Lines come back in RapidOCR's reading order: top to bottom, then left to right
on the same row."""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path

from services.backend.types import Capability, ExtractedText, TextLine, Usage
from services.inference.models.base import ServedModel


class RapidOcrReader(ServedModel):
    capabilities = frozenset({Capability.OCR})

    def __init__(self, model_id: str, threads: int) -> None:
        super().__init__()
        self.model_id = model_id
        self._threads = threads
        self._engine = None

    def load(self) -> None:
        from rapidocr import RapidOCR

        self._engine = RapidOCR(
            params={
                "Global.log_level": "warning",
                "EngineConfig.onnxruntime.intra_op_num_threads": self._threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)

    def estimate_bytes(self) -> int:
        """The ONNX models' size (ONNX Runtime holds about that much)."""
        spec = find_spec("rapidocr")
        if spec is None or not spec.submodule_search_locations:
            return 0
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        return sum(f.stat().st_size for f in models.glob("*.onnx"))

    def memory_bytes(self) -> int:
        return self.estimate_bytes() if self._engine is not None else 0

    def stop(self) -> None:
        self._engine = None

    def read(self, image: bytes) -> ExtractedText:
        assert self._engine is not None, "load() first"
        found = self._engine(image)
        lines = []
        if found.txts:
            for text, score, box in zip(found.txts, found.scores, found.boxes, strict=True):
                corners = tuple((float(x), float(y)) for x, y in box)
                lines.append(TextLine(text, round(float(score), 4), corners))
        return ExtractedText(tuple(lines), Usage())
