"""The vector service's plain types, shared by its backends and its core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# API distance → hnswlib space. Cosine is inner product on normalised vectors.
DISTANCES = {"cosine": "ip", "dot": "ip", "l2": "l2"}


@dataclass(frozen=True)
class CollectionConfig:
    name: str  # `collections/{id}`
    dimension: int
    distance: str  # cosine, dot, l2
    embedding_model: str = ""
    backend: str = "embedded"
    create_time: float = 0.0  # seconds since the epoch


@dataclass
class StoredPoint:
    id: str
    vector: list[float]
    text: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Match:
    point: StoredPoint
    score: float


def as_matrix(vectors: np.ndarray, config: CollectionConfig) -> np.ndarray:
    """Vectors as a contiguous float32 matrix of the collection's dimension; for cosine,
    each normalised (a zero vector stays zero), so cosine is the dot product."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != config.dimension:
        raise ValueError(f"vectors must have {config.dimension} dimensions")
    if config.distance == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1, norms)
    return np.ascontiguousarray(vectors, np.float32)
