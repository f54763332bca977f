"""`make bench`: how long the embedded vector backend takes to reopen a collection that has
an HNSW index, side by side in one run:

- from its snapshot after a graceful stop (the service saves the index as it stops);
- from that snapshot plus 1% of writes made after it, replayed from the SQLite file (a
  stop without a snapshot: kill -9, power cut);
- rebuilt from the SQLite file (no snapshot: what every start did before snapshots).

Each reopen also answers the same queries; recall@10 against exact search is printed to
show the reopened index is as good as the one that was closed.

    python bench/vector_restart_bench.py                   # 100k x 384
    python bench/vector_restart_bench.py --vectors 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)
from shaped_vectors import shaped_vectors  # noqa: E402

from services.vector import snapshots  # noqa: E402
from services.vector.backends import collection_file  # noqa: E402
from services.vector.embedded import EmbeddedCollection  # noqa: E402
from services.vector.model import CollectionConfig, StoredPoint  # noqa: E402

K = 10
WRITE_BATCH = 10_000


def write(collection: EmbeddedCollection, ids: list[str], vectors: np.ndarray) -> None:
    for start in range(0, len(ids), WRITE_BATCH):
        batch = zip(ids[start : start + WRITE_BATCH], vectors[start : start + WRITE_BATCH], strict=True)
        collection.upsert([StoredPoint(i, v.tolist(), "", {}) for i, v in batch])


def reopen(path: Path, config: CollectionConfig, queries: np.ndarray, truth: list[set[str]]) -> tuple[float, float]:
    """Seconds to open the collection, and the recall@10 of its answers."""
    started = time.perf_counter()
    collection = EmbeddedCollection(path, config)
    opened = time.perf_counter() - started
    found = collection.query(queries, K, None, None, with_vectors=False)
    collection.close()
    hits = [len({m.point.id for m in row} & expected) / K for row, expected in zip(found, truth, strict=True)]
    return opened, float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    data = shaped_vectors(args.vectors + args.queries + args.vectors // 100, args.dim, seed=1)
    base, queries = data[: args.vectors], data[args.vectors : args.vectors + args.queries]
    moved = data[args.vectors + args.queries :]
    config = CollectionConfig("collections/bench", args.dim, "cosine", "", "embedded", 0.0)
    ids = [f"p{i}" for i in range(args.vectors)]
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_name()}); {args.vectors:,} x {args.dim} vectors shaped like MiniLM embeddings"
    )

    with tempfile.TemporaryDirectory() as scratch:
        path = collection_file(Path(scratch), config.name)
        started = time.perf_counter()
        collection = EmbeddedCollection(path, config)
        write(collection, ids, base)
        built = time.perf_counter() - started
        collection.checkpoint()  # the graceful stop (nothing to do if a periodic save just had it all)
        collection.close()
        size = sum(p.stat().st_size for p in Path(scratch).glob("*.hnsw"))
        print(f"written in {built:.1f} s (SQLite commits, index, periodic snapshots); snapshot {size / 2**20:,.0f} MiB")

        def truth_now() -> list[set[str]]:
            unit = base / np.linalg.norm(base, axis=1, keepdims=True)
            scores = queries @ unit.T
            return [{ids[j] for j in np.argpartition(-row, K)[:K]} for row in scores]

        truth = truth_now()
        from_snapshot, recall_snapshot = reopen(path, config, queries, truth)

        # 1% of the points moved, with no snapshot after (a stop without one).
        collection = EmbeddedCollection(path, config)
        changed = list(range(0, args.vectors, 100))[: len(moved)]
        write(collection, [ids[i] for i in changed], moved[: len(changed)])
        collection.close()
        base[changed] = moved[: len(changed)]
        truth = truth_now()
        replayed, recall_replayed = reopen(path, config, queries, truth)  # saves nothing: under the threshold

        snapshots.remove(path.with_suffix(""))
        rebuilt, recall_rebuilt = reopen(path, config, queries, truth)

    print(f"reopen from the snapshot:              {from_snapshot:7.2f} s   recall@10 {recall_snapshot:.3f}")
    print(f"reopen from it + {len(changed):,} writes replayed: {replayed:7.2f} s   recall@10 {recall_replayed:.3f}")
    print(f"reopen rebuilding (and saving) it:     {rebuilt:7.2f} s   recall@10 {recall_rebuilt:.3f}")
    print(f"rebuild / snapshot: {rebuilt / from_snapshot:.1f}x;  rebuild / snapshot+replay: {rebuilt / replayed:.1f}x")


if __name__ == "__main__":
    main()
