"""`make bench`: the vector search index against exact search, side by side, in one run.

The embedded backend's index (hnswlib HNSW, inner product on unit vectors) and exact search
(numpy matmul + argpartition) on the same vectors, queries and machine:

- build time and memory of the index;
- single-query QPS (one query per call) and batched QPS (100 per call, all cores), for
  the index at the smallest ef whose recall@10 against exact search reaches the target,
  and for exact search; their ratio;
- filtered search at 10% and 1% selectivity, the filter applied inside the graph search:
  recall@10, QPS and whether every query got k results; exact search over just the
  allowed points alongside, the cheaper plan when few points pass;
- deletes, saving and loading the index.

The vectors are shaped like MiniLM sentence embeddings (bench/shaped_vectors.py); uniform
random vectors would make any HNSW index look broken. Targets (issue 10): recall@10 >= 0.95
at >= 20x exact search's single-query QPS. Exits 1 when missed.

    python bench/vector_bench.py                     # quick: 100k x 384
    python bench/vector_bench.py --vectors 1000000   # 1M x 384 (about 4 GB of memory)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402
from shaped_vectors import shaped_vectors  # noqa: E402  (bench/ is this script's own folder)

K = 10
BATCH = 100
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass
class Speed:
    single_qps: float
    batch_qps: float


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def top_k(scores: np.ndarray) -> np.ndarray:
    """Ids of the K highest scores in each row, best first."""
    part = np.argpartition(scores, -K, axis=-1)[..., -K:]
    order = np.argsort(-np.take_along_axis(scores, part, -1), axis=-1)
    return np.take_along_axis(part, order, -1)


def best_rate(
    call: Callable[[np.ndarray], object], items: list[np.ndarray], per_item: int, round_s: float = 2.0
) -> float:
    """Queries per second of `call` over `items` (each `per_item` queries), best of 3 rounds.

    Each round goes through the items until they or `round_s` run out. The best round is the
    one least disturbed by whatever else the machine runs; index and exact search get the same.
    """
    call(items[0])
    best = 0.0
    for _ in range(3):
        started, done = time.perf_counter(), 0
        for item in items:
            call(item)
            done += per_item
            if time.perf_counter() - started > round_s:
                break
        best = max(best, done / (time.perf_counter() - started))
    return best


def batches(queries: np.ndarray) -> list[np.ndarray]:
    return [queries[i : i + BATCH] for i in range(0, len(queries), BATCH)]


def exact(base: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, Speed]:
    """Ground truth for every query, and exact search's speed one query at a time and in batches."""
    truth = np.concatenate([top_k(batch @ base.T) for batch in batches(queries)])
    single = best_rate(lambda q: top_k(base @ q), list(queries), 1)
    batched = best_rate(lambda b: top_k(b @ base.T), batches(queries), BATCH, round_s=5.0)
    return truth, Speed(single, batched)


def build(base: np.ndarray, m: int, ef_construction: int) -> tuple[hnswlib.Index, float, int]:
    before = rss()
    started = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=m, ef_construction=ef_construction, random_seed=1)
    index.add_items(base, np.arange(len(base)), num_threads=-1)
    return index, time.perf_counter() - started, rss() - before


def smallest_ef(index: hnswlib.Index, queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[int, float]:
    """The first ef on the ladder whose recall@10 reaches `target` (the last one if none does)."""
    for ef in EF_LADDER:
        index.set_ef(ef)
        reached = recall(index.knn_query(queries, k=K, num_threads=-1)[0], truth)
        print(f"  ef {ef:4d}: recall@10 {reached:.4f}")
        if reached >= target:
            break
    return ef, reached


def index_speed(index: hnswlib.Index, queries: np.ndarray) -> Speed:
    single = best_rate(lambda q: index.knn_query(q, k=K, num_threads=1), list(queries), 1)
    batched = best_rate(lambda b: index.knn_query(b, k=K, num_threads=-1), batches(queries), BATCH, round_s=5.0)
    return Speed(single, batched)


def filtered(index: hnswlib.Index, base: np.ndarray, queries: np.ndarray, seed: int) -> None:
    """A payload filter passed by a random share of the points, applied inside the search."""
    queries = queries[:200]
    group = np.random.default_rng(seed).integers(0, 1000, len(base))
    for share in (0.10, 0.01):
        allowed_ids = np.flatnonzero(group < share * 1000)
        truth = allowed_ids[top_k(queries @ base[allowed_ids].T)]
        allowed = set(allowed_ids.tolist()).__contains__
        started, found = time.perf_counter(), []
        for query in queries:
            try:
                found.append(index.knn_query(query, k=K, num_threads=1, filter=allowed)[0][0])
            except RuntimeError:  # hnswlib's answer when it found fewer than k
                found.append(np.full(K, -1))
        in_graph_qps = len(queries) / (time.perf_counter() - started)
        found = np.array(found)
        full = np.mean([len(set(row.tolist()) - {-1}) == K for row in found])
        leaked = int(sum(not allowed(int(i)) for i in found.ravel() if i >= 0))
        subset_qps = best_rate(lambda q, ids=allowed_ids: ids[top_k(base[ids] @ q)], list(queries), 1)
        print(
            f"  {share:4.0%} pass ({len(allowed_ids):,} points): in the graph recall@10 {recall(found, truth):.4f}, "
            f"{in_graph_qps:7.0f} q/s, k results for {full:.0%} of queries, {leaked} results outside the filter; "
            f"exact over the passing points {subset_qps:7.0f} q/s"
        )


def deletes_and_persistence(index: hnswlib.Index, base: np.ndarray, queries: np.ndarray, seed: int) -> None:
    sample = queries[:200]
    before = recall(index.knn_query(sample, k=K, num_threads=-1)[0], top_k(sample @ base.T))
    gone = np.random.default_rng(seed).choice(len(base), len(base) // 100, replace=False)
    started = time.perf_counter()
    for label in gone:
        index.mark_deleted(int(label))
    delete_s = time.perf_counter() - started
    alive = np.setdiff1d(np.arange(len(base)), gone)
    truth = alive[top_k(sample @ base[alive].T)]
    found = index.knn_query(sample, k=K, num_threads=-1)[0]
    returned = int(np.isin(found, gone).sum())
    print(
        f"  delete 1% ({len(gone):,} ids): {delete_s:.2f} s; recall@10 on 200 queries {before:.4f} before, "
        f"{recall(found, truth):.4f} after, "
        f"{returned} deleted ids returned"
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "index.bin")
        started = time.perf_counter()
        index.save_index(path)
        save_s = time.perf_counter() - started
        started = time.perf_counter()
        loaded = hnswlib.Index(space="ip", dim=base.shape[1])
        loaded.load_index(path)
        load_s = time.perf_counter() - started
        loaded.set_ef(index.ef)
        same = np.array_equal(loaded.knn_query(sample, k=K, num_threads=-1)[0], found)
        print(
            f"  save {save_s:.2f} s, load {load_s:.2f} s, file {os.path.getsize(path) / 2**20:,.0f} MiB; "
            f"loaded index gives the same results: {same}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--m", type=int, default=32, help="HNSW links per node")
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--target-ratio", type=float, default=20.0, help="index / exact single-query QPS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_name()}), {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"hnswlib {_version('hnswlib')}, numpy {np.__version__}"
    )
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f} before starting; other work on this machine lowers every rate")
    started = time.perf_counter()
    vectors = shaped_vectors(args.vectors + args.queries, args.dim, args.seed)
    base, queries = vectors[: args.vectors], vectors[args.vectors :]
    print(
        f"data: {args.vectors:,} x {args.dim} float32 shaped like MiniLM embeddings ({base.nbytes / 2**20:,.0f} MiB), "
        f"{args.queries:,} held-out queries; made in {time.perf_counter() - started:.1f} s"
    )

    print("\nExact search (numpy matmul + argpartition)")
    truth, brute = exact(base, queries)
    print(f"  single {brute.single_qps:9,.0f} q/s   batched {brute.batch_qps:9,.0f} q/s")

    print(f"\nHNSW index (hnswlib, M={args.m}, ef_construction={args.ef_construction})")
    index, build_s, grown = build(base, args.m, args.ef_construction)
    print(f"  built in {build_s:.1f} s ({args.vectors / build_s:,.0f} vectors/s); memory +{grown / 2**20:,.0f} MiB")
    ef, reached = smallest_ef(index, queries, truth, args.target_recall)
    index.set_ef(ef)
    ann = index_speed(index, queries)
    single_ratio, batch_ratio = ann.single_qps / brute.single_qps, ann.batch_qps / brute.batch_qps
    print(f"  at ef {ef}: recall@10 {reached:.4f}")
    print(f"  single {ann.single_qps:9,.0f} q/s = {single_ratio:5.1f}x exact")
    print(f"  batched {ann.batch_qps:8,.0f} q/s = {batch_ratio:5.1f}x exact")

    print(f"\nFiltered search (ef {ef}, one query per call)")
    filtered(index, base, queries, args.seed)

    print("\nDeletes and persistence")
    deletes_and_persistence(index, base, queries, args.seed)
    print(f"\nprocess memory: {rss() / 2**30:.2f} GiB resident")

    met = reached >= args.target_recall and single_ratio >= args.target_ratio
    print(
        f"\ntargets (recall@10 >= {args.target_recall}, single-query QPS >= {args.target_ratio:g}x exact): "
        f"{'met' if met else 'MISSED'} (recall@10 {reached:.4f}, {single_ratio:.1f}x; batched {batch_ratio:.1f}x)"
    )
    sys.exit(0 if met else 1)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
