"""Vectors shaped like all-MiniLM-L6-v2 sentence embeddings, made without the model.

Uniformly random unit vectors are the wrong test data for nearest-neighbour search: in
384 dimensions every point is almost equally far from every other, and HNSW recall
collapses. Real sentence embeddings are clustered and locally low-dimensional. This
generator reproduces that structure from a few numbers fitted to 96,302 real MiniLM
embeddings of English sentences (docstrings and package documentation):

- a shared mean direction (real: norm 0.285, so two unrelated sentences score about 0.08);
- topic centres drawn from a Gaussian with the real between-topic covariance spectrum
  (k-means with 1,000 clusters), about 100 points per topic, topic sizes log-normal;
- inside a topic, a random 32-dimensional subspace (drawn from the real within-topic
  spectrum) carries 70% of the spread and full-rank noise the rest, and each point's
  distance from its centre is scaled log-normally (dense cores, loose fringes);
- a random rotation, and every vector L2-normalised.

Held-out points from the same call are the right queries. Against the real sample at 95k
(hnswlib, M=16, ef_construction=128) the nearest-neighbour structure matches:

                      sim@1  sim@10  sim@100  local dim.  recall@10 at ef 10 / 16 / 32 / 64
    real MiniLM       0.716  0.563   0.449    18.5        0.801 / 0.875 / 0.948 / 0.978
    shaped (this)     0.712  0.642   0.491    20.1        0.818 / 0.880 / 0.939 / 0.970
    one Gaussian      0.430  0.386   0.340    71.4        0.244 / 0.330 / 0.470 / 0.628

(local dim.: maximum-likelihood intrinsic dimension over 20 neighbours; the last row: a
single Gaussian with the real covariance, for contrast.) The number of topics grows with
n, so a larger corpus has more, overlapping topics rather than denser ones; that is the
cautious way to scale: at 1M, recall@10 0.95 takes hnswlib (M=16) ef 192 where 100k takes 48.
"""

from __future__ import annotations

import numpy as np

# Covariance spectra of the real embeddings at these ranks (log-log interpolated between).
_RANKS = (1, 2, 3, 5, 10, 20, 50, 100, 150, 200, 250, 300, 340, 370, 384)
_BETWEEN = (0.0234, 0.0151, 0.0137, 0.0108, 0.00697, 0.00358, 0.0015, 0.000662, 0.000324, 0.000156, 7.08e-05, 2.43e-05, 9.45e-06, 3.93e-06, 1e-07)  # fmt: skip
_WITHIN = (0.0145, 0.0138, 0.0122, 0.00973, 0.00754, 0.00542, 0.00307, 0.00187, 0.00127, 0.000882, 0.000541, 0.000224, 0.000118, 7.03e-05, 1e-07)  # fmt: skip
_MEAN_NORM = 0.285
_POINTS_PER_TOPIC = 100
_TOPIC_SIZE_SIGMA = 1.0
_TOPIC_RANK = 32
_NOISE_SHARE = 0.3
_POINT_SCALE_SIGMA = 0.5


def _spectrum(knots: tuple[float, ...], dim: int) -> np.ndarray:
    """The 384-dimensional spectrum stretched to `dim` ranks, with the same total variance."""
    rank = 1 + np.arange(dim) * (383 / max(dim - 1, 1))
    full = np.exp(np.interp(np.log(np.arange(1, 385)), np.log(_RANKS), np.log(knots)))
    values = np.exp(np.interp(np.log(rank), np.log(_RANKS), np.log(knots)))
    return values * (full.sum() / values.sum())


def shaped_vectors(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """`n` unit vectors (float32, shape (n, dim)) shaped like MiniLM sentence embeddings.

    The same (n, dim, seed) always gives the same vectors. Split one call into a corpus
    and queries, so the queries come from the same topics.
    """
    rng = np.random.default_rng(seed)
    between, within = _spectrum(_BETWEEN, dim), _spectrum(_WITHIN, dim)
    rotation, upper = np.linalg.qr(rng.standard_normal((dim, dim)))
    rotation *= np.sign(np.diag(upper))
    mean = rng.standard_normal(dim)
    mean *= _MEAN_NORM / np.linalg.norm(mean)

    topics = max(1, n // _POINTS_PER_TOPIC)
    centres = mean + rng.standard_normal((topics, dim)) * np.sqrt(between)
    weights = rng.lognormal(0.0, _TOPIC_SIZE_SIGMA, topics)
    sizes = rng.multinomial(n, weights / weights.sum())

    # Built in the spectrum's own basis, then rotated; rows are shuffled at the end.
    out = np.empty((n, dim), np.float32)
    topic_scale = np.sqrt(within[:, None] * (1 - _NOISE_SHARE) / _TOPIC_RANK).astype(np.float32)
    noise_scale = np.sqrt(within * _NOISE_SHARE).astype(np.float32)
    start = 0
    for centre, size in zip(centres, sizes, strict=True):
        if size == 0:
            continue
        basis = rng.standard_normal((dim, _TOPIC_RANK), np.float32) * topic_scale
        spread = rng.standard_normal((size, _TOPIC_RANK), np.float32) @ basis.T
        spread += rng.standard_normal((size, dim), np.float32) * noise_scale
        spread *= rng.lognormal(-(_POINT_SCALE_SIGMA**2) / 2, _POINT_SCALE_SIGMA, (size, 1)).astype(np.float32)
        out[start : start + size] = centre + spread
        start += size
    for chunk in range(0, n, 65536):
        block = out[chunk : chunk + 65536] @ rotation.T.astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[chunk : chunk + 65536] = block
    rng.shuffle(out)
    return out
