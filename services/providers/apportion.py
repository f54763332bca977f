"""Splitting a provider's total input tokens over the inputs of a batch call."""

from __future__ import annotations


def apportion(total: int, texts: list[str]) -> list[int]:
    """`total` split over `texts` in proportion to their length, summing exactly to it.

    Providers report one token count per embedding call, but each vector in the
    contract carries its own count (the router splits shared calls by it)."""
    weights = [max(len(t), 1) for t in texts]
    whole = sum(weights)
    shares = [total * w / whole for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(texts)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
