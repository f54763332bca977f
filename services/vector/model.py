"""The vector service's plain types, shared by its backends and its core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
