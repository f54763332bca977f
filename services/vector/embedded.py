"""The embedded backend: each collection a SQLite file under the data directory (the
durable record: an upsert is acknowledged once its transaction is on disk, WAL with
synchronous=FULL, so it survives kill -9) and an in-memory HNSW index (hnswlib) built
from it at start and kept current on every write.

Queries:
  - small collections (under EXACT_BELOW points) are searched exactly (one matrix product);
  - otherwise HNSW, with `ef` at least EF_SEARCH and above k;
  - a filter is applied inside the search: HNSW visits only points that match (hnswlib's
    filter callback), with `ef` raised by the filter's estimated selectivity; when few
    points match (under EXACT_MATCHING, estimated from a sample), the matching points are
    found first and searched exactly, which is both faster and exact. Either way a filtered
    query returns k points when k match; where HNSW reaches fewer than k (fewer match than
    the sample suggested), the matching points are searched exactly instead.

Restarts: the index is saved next to the file (snapshots.py) when the service stops,
after a start that had to build it, and every UNSAVED_BEFORE_SAVING points written; a
start loads the newest snapshot and replays onto it the writes made after it (every write
numbers itself, `writes.seq`; points carry the number of their last write, deletions
leave one in `removed` until the next snapshot), so a restart costs reading the file plus
the writes since the last snapshot, not a rebuild. A snapshot that can't be read, or that
disagrees with the file, is ignored: rebuilt.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from infermesh.vector.v1 import vector_service_pb2 as pb
from services.vector import snapshots
from services.vector.filters import Predicate, predicate
from services.vector.model import DISTANCES, CollectionConfig, Match, StoredPoint, as_matrix

EXACT_BELOW = 20_000
# Measured (bench/vector_bench.py): under ~10k passing points, exact search over them beats
# the graph's filter callback (a Python call per candidate) by 7-20x; above, the graph wins.
EXACT_MATCHING = 10_000
EF_SEARCH = 96
# bench/vector_bench.py on MiniLM-shaped data: M=32 reaches recall@10 0.95 at 1M with ef 96
# (M=16 needed ef 192 and ran at half the rate).
M, EF_CONSTRUCTION = 32, 128
SAMPLE = 512
# A new snapshot is saved once this many points (or a tenth of the collection, if more)
# have been written since the last: a restart after kill -9 then replays at most that
# many, and the pause of saving (0.3 s at 100k points on 2 cores) comes once per that
# many writes. A start that replays this many saves at once.
UNSAVED_BEFORE_SAVING = 10_000
log = logging.getLogger(__name__)


@dataclass
class _Points:
    """One collection's points in memory, by label (the index's integer id)."""

    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    # Which rows hold a point (deleted labels keep their row): exact search over every
    # point scores the matrix in place, without gathering the live rows on each query.
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    ids: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    payloads: list[dict[str, Any] | None] = field(default_factory=list)
    by_id: dict[str, int] = field(default_factory=dict)

    def live(self) -> list[int]:
        return list(self.by_id.values())


class EmbeddedCollection:
    """One collection: its SQLite file, its points and its index. Thread-safe; the
    service calls it from worker threads."""

    def __init__(self, path: Path, config: CollectionConfig) -> None:
        self.config = config
        self._space = DISTANCES[config.distance]
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._stem = path.with_suffix("")  # snapshots are {stem}.{seq}.hnsw
        self._seq = self._schema()  # the number of the last write
        self._saved_seq = -1  # the write the newest snapshot has (-1: none known)
        self._unsaved = 0  # points written or deleted since it
        self._points = _Points()
        self._index: hnswlib.Index | None = None
        self._load()

    def _schema(self) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "CREATE TABLE IF NOT EXISTS points (label INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
            "vector BLOB NOT NULL, text TEXT NOT NULL, payload TEXT NOT NULL, seq INTEGER NOT NULL DEFAULT 0)"
        )
        if "seq" not in {row[1] for row in db.execute("PRAGMA table_info(points)")}:
            db.execute("ALTER TABLE points ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")  # a file from before snapshots
        db.execute("CREATE TABLE IF NOT EXISTS removed (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS writes (seq INTEGER NOT NULL)")
        if db.execute("SELECT 1 FROM writes").fetchone() is None:
            db.execute("INSERT INTO writes VALUES (0)")
        db.execute("COMMIT")
        return db.execute("SELECT seq FROM writes").fetchone()[0]

    @contextmanager
    def _write(self) -> Iterator[int]:
        """One numbered write transaction (yields its number); durable when it returns."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("UPDATE writes SET seq = seq + 1")
            yield self._seq + 1
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._seq += 1

    # -- start-up -------------------------------------------------------------------

    def _load(self) -> None:
        rows = self._db.execute("SELECT label, id, vector, text, payload, seq FROM points ORDER BY label").fetchall()
        size = (rows[-1][0] + 1) if rows else 0
        p = self._points
        p.vectors = np.zeros((size, self.config.dimension), np.float32)
        p.alive = np.zeros(size, bool)
        p.ids, p.texts, p.payloads = [None] * size, [""] * size, [None] * size
        written = np.zeros(size, np.int64)  # each label's last write
        for label, point_id, blob, text, payload, seq in rows:
            p.vectors[label], p.alive[label] = np.frombuffer(blob, np.float32), True
            p.ids[label], p.texts[label], p.payloads[label] = point_id, text, json.loads(payload)
            p.by_id[point_id] = label
            written[label] = seq
        if len(p.by_id) < EXACT_BELOW:
            return  # searched exactly: no index
        replayed = self._restore(written)
        if replayed is None:
            self._rebuild()
            self.snapshot()
        else:
            self._unsaved = replayed
            self._save_if_due()

    def _restore(self, written: np.ndarray) -> int | None:
        """Load the newest snapshot and replay the writes after it; how many were
        replayed, or None when there is no usable snapshot."""
        found = snapshots.latest(self._stem, self._seq)
        if found is None:
            return None
        seq, path = found
        p = self._points
        index = hnswlib.Index(space=self._space, dim=self.config.dimension)
        try:
            index.load_index(str(path), max_elements=max(len(p.ids) * 2, 1))
            # Spot-check it against the file: points untouched since the snapshot must be
            # in it with the same vectors (hnswlib normalises for cosine, as we do).
            untouched = [label for label in p.live() if written[label] <= seq]
            sample = random.sample(untouched, min(16, len(untouched)))
            if sample and not np.allclose(index.get_items(sample, return_type="numpy"), p.vectors[sample], atol=1e-5):
                raise ValueError("its vectors differ from the collection's")
        except (RuntimeError, ValueError) as error:
            log.warning("ignoring the index snapshot, rebuilding", extra={"snapshot": str(path), "error": str(error)})
            return None
        self._index = index
        changed = [label for label in p.live() if written[label] > seq]
        removed = [
            label
            for (label,) in self._db.execute("SELECT label FROM removed WHERE seq > ?", (seq,))
            if label >= len(p.alive) or not p.alive[label]  # not written again since
        ]
        for label in removed:
            try:
                index.mark_deleted(label)
            except RuntimeError:
                pass  # added and deleted after the snapshot: never in it
        if changed:
            self._index_added(changed)
        index.set_ef(EF_SEARCH)
        self._saved_seq = seq
        log.info(
            "index loaded from its snapshot",
            extra={"collection": self.config.name, "points": len(p.by_id), "replayed": len(changed) + len(removed)},
        )
        return len(changed) + len(removed)

    def snapshot(self) -> None:
        """Save the index next to the file, when there is one and it changed since the
        last save; a failure (disk full) is logged: the next start rebuilds."""
        with self._lock:
            if self._index is None or self._seq == self._saved_seq:
                return
            try:
                snapshots.save(self._index, self._stem, self._seq)
            except OSError as error:
                log.warning(
                    "could not save the index snapshot", extra={"collection": self.config.name, "error": str(error)}
                )
                return
            self._db.execute("DELETE FROM removed WHERE seq <= ?", (self._seq,))
            self._saved_seq, self._unsaved = self._seq, 0

    def _save_if_due(self) -> None:
        if self._unsaved >= max(UNSAVED_BEFORE_SAVING, len(self._points.by_id) // 10):
            self.snapshot()

    def _rebuild(self) -> None:
        live = self._points.live()
        if len(live) < EXACT_BELOW:
            self._index = None
            return
        index = hnswlib.Index(space=self._space, dim=self.config.dimension)
        index.init_index(max_elements=max(len(self._points.ids), 1) * 2, M=M, ef_construction=EF_CONSTRUCTION)
        index.add_items(self._points.vectors[live], np.asarray(live))
        index.set_ef(EF_SEARCH)
        self._index = index

    # -- writes ---------------------------------------------------------------------

    def upsert(self, points: Sequence[StoredPoint]) -> int:
        vectors = as_matrix(np.asarray([p.vector for p in points], np.float32), self.config)
        with self._lock:
            p = self._points
            labels, fresh = [], []
            for point in points:
                label = p.by_id.get(point.id)
                if label is None:
                    label = len(p.ids) + len(fresh)
                    fresh.append(label)
                labels.append(label)
            with self._write() as seq:  # durable after it: acknowledged only then
                rows = [
                    (label, point.id, vectors[i].tobytes(), point.text, json.dumps(point.payload), seq)
                    for i, (label, point) in enumerate(zip(labels, points, strict=True))
                ]
                self._db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?)", rows)
            grow = len(p.ids) + len(fresh)
            if grow > len(p.vectors):
                bigger = np.zeros((max(grow, 2 * len(p.vectors)), self.config.dimension), np.float32)
                bigger[: len(p.vectors)] = p.vectors
                p.vectors = bigger
                p.alive = np.concatenate([p.alive, np.zeros(len(bigger) - len(p.alive), bool)])
            p.ids.extend([None] * len(fresh))
            p.texts.extend([""] * len(fresh))
            p.payloads.extend([None] * len(fresh))
            for i, (label, point) in enumerate(zip(labels, points, strict=True)):
                p.vectors[label], p.alive[label] = vectors[i], True
                p.ids[label], p.texts[label], p.payloads[label] = point.id, point.text, dict(point.payload)
                p.by_id[point.id] = label
            self._index_added(labels)
            self._unsaved += len(points)
            self._save_if_due()
            return len(points)

    def _index_added(self, labels: list[int]) -> None:
        if self._index is None:
            if len(self._points.by_id) >= EXACT_BELOW:
                self._rebuild()
            return
        needed = max(labels) + 1
        if needed > self._index.get_max_elements():
            self._index.resize_index(2 * needed)
        unique = sorted(set(labels))
        for label in unique:
            try:
                self._index.unmark_deleted(label)
            except RuntimeError:
                pass  # not in the index yet
        self._index.add_items(self._points.vectors[unique], np.asarray(unique), replace_deleted=False)

    def delete(self, ids: Sequence[str] | None, where: pb.Filter | None) -> int:
        matches = predicate(where) if where is not None else None
        with self._lock:
            p = self._points
            if matches is not None:
                doomed = [label for label in p.live() if matches(p.payloads[label])]
            else:
                doomed = [p.by_id[i] for i in dict.fromkeys(ids or ()) if i in p.by_id]
            if not doomed:
                return 0
            with self._write() as seq:
                self._db.executemany("DELETE FROM points WHERE label = ?", [(label,) for label in doomed])
                self._db.executemany("INSERT OR REPLACE INTO removed VALUES (?, ?)", [(label, seq) for label in doomed])
            for label in doomed:
                del p.by_id[p.ids[label]]
                p.ids[label], p.payloads[label], p.texts[label] = None, None, ""
                p.alive[label] = False
                if self._index is not None:
                    self._index.mark_deleted(label)
            self._unsaved += len(doomed)
            self._save_if_due()
            return len(doomed)

    # -- reads ----------------------------------------------------------------------

    def count(self) -> int:
        return len(self._points.by_id)

    def get(self, ids: Sequence[str], with_vectors: bool = True) -> list[StoredPoint]:
        with self._lock:
            return [self._stored(self._points.by_id[i], with_vectors) for i in ids if i in self._points.by_id]

    def query(
        self,
        vectors: np.ndarray,
        top_k: int,
        where: pb.Filter | None,
        threshold: float | None,
        with_vectors: bool = True,
    ) -> list[list[Match]]:
        matches = predicate(where) if where is not None else None
        queries = as_matrix(vectors, self.config)
        with self._lock:
            live = self._points.live()
            if not live:
                return [[] for _ in queries]
            if matches is not None:
                share = self._selectivity(live, matches)
                found = None
                if self._index is not None and share * len(live) >= EXACT_MATCHING:
                    found = self._approximate(queries, top_k, matches, share)
                if found is None:  # few match, or HNSW could not reach k of them: all of them, exactly
                    allowed = [label for label in live if matches(self._points.payloads[label])]
                    found = self._exact(queries, allowed, top_k)
            elif self._index is None:
                found = self._exact(queries, None, top_k)
            else:
                found = self._approximate(queries, top_k, None, 1.0) or self._exact(queries, None, top_k)
            return [
                [
                    Match(self._stored(label, with_vectors), score)
                    for label, score in hits
                    if threshold is None or score >= threshold
                ]
                for hits in found
            ]

    def _selectivity(self, live: list[int], matches: Predicate) -> float:
        sample = live if len(live) <= SAMPLE else random.sample(live, SAMPLE)
        hits = sum(1 for label in sample if matches(self._points.payloads[label]))
        return max(hits, 1) / len(sample)

    def _exact(self, queries: np.ndarray, labels: list[int] | None, top_k: int) -> list[list[tuple[int, float]]]:
        """The top_k of `labels` (None: of every point) by exact score."""
        p = self._points
        count = len(p.by_id) if labels is None else len(labels)
        if not count:
            return [[] for _ in queries]
        if labels is None:
            size = len(p.ids)
            candidates = np.arange(size)
            scores = self._scores(queries, p.vectors[:size])  # a view: no copy of the matrix
            scores[:, ~p.alive[:size]] = -np.inf
        else:
            candidates = np.asarray(labels)
            scores = self._scores(queries, p.vectors[candidates])
        k = min(top_k, count)
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for row, picks in zip(scores, best, strict=True):
            ordered = picks[np.argsort(-row[picks])]
            results.append([(int(candidates[i]), float(row[i])) for i in ordered])
        return results

    def _approximate(
        self, queries: np.ndarray, top_k: int, matches: Predicate | None, share: float
    ) -> list[list[tuple[int, float]]] | None:
        """HNSW's answers, or None where it finds fewer than k points (fewer than k match
        the filter, or the ones that do are out of its reach): hnswlib then raises."""
        index = self._index
        k = min(top_k, len(self._points.by_id))
        # A filter that passes a fraction of points needs that much more of the graph seen.
        index.set_ef(min(max(EF_SEARCH, 2 * k, math.ceil(k / share)), 4096))
        payloads = self._points.payloads
        keep = None if matches is None else (lambda label: payloads[label] is not None and matches(payloads[label]))
        try:
            labels, distances = index.knn_query(queries, k=k, filter=keep, num_threads=1 if keep else -1)
        except RuntimeError:
            return None
        finally:
            index.set_ef(EF_SEARCH)
        return [
            [(int(label), self._score(d)) for label, d in zip(row, dist, strict=True)]
            for row, dist in zip(labels, distances, strict=True)
        ]

    def _scores(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        if self.config.distance == "l2":
            # |q - v|² = |q|² - 2 q·v + |v|²: one matrix product, not a (queries × points × dims)
            # array; in float64, so the expansion's rounding stays below float32's precision.
            q, v = queries.astype(np.float64), vectors.astype(np.float64)
            squared = (q**2).sum(1)[:, None] - 2 * q @ v.T + (v**2).sum(1)[None, :]
            return -np.sqrt(np.maximum(squared, 0))
        return queries @ vectors.T  # cosine: both sides normalised

    def _score(self, distance: float) -> float:
        """hnswlib's distance as the API's score (higher is nearer)."""
        if self.config.distance == "l2":
            return -math.sqrt(max(distance, 0.0))  # hnswlib's l2 is squared
        return 1.0 - float(distance)  # ip and cosine: 1 - dot

    def _stored(self, label: int, with_vector: bool = True) -> StoredPoint:
        p = self._points
        vector = p.vectors[label].tolist() if with_vector else []
        return StoredPoint(p.ids[label], vector, p.texts[label], p.payloads[label] or {})

    def checkpoint(self) -> None:
        self.snapshot()

    def close(self) -> None:
        self._db.close()
