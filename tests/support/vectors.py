"""Vectors for the vector backends' tests, and the exact answers to check them against."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dimension: int, seed: int) -> np.ndarray:
    """Points around n/50 centres: shaped like embeddings, not uniform noise (on which
    HNSW's recall collapses)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 4), dimension))
    return (centres[rng.integers(len(centres), size=n)] + 0.3 * rng.normal(size=(n, dimension))).astype(np.float32)


def exact_scores(vectors: np.ndarray, queries: np.ndarray, distance: str) -> np.ndarray:
    """Every query's score against every vector (higher is nearer), in float64."""
    v, q = vectors.astype(np.float64), queries.astype(np.float64)
    if distance == "cosine":
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if distance == "l2":
        return -np.sqrt(((q[:, None, :] - v[None, :, :]) ** 2).sum(-1))
    return q @ v.T
