"""Summaries the benchmarks print."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` quantile (0.5: the median, 0.99: p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
