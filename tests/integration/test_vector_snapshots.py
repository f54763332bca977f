"""Restarting the embedded vector backend loads its HNSW index from a snapshot instead of
rebuilding it (minutes at a million points), replays the writes made after the snapshot
from the SQLite file (as after kill -9), and rebuilds when a snapshot can't be trusted.

EXACT_BELOW is lowered to 1,000 so 4,000 points take the path a 20k+ collection takes;
`_rebuild` is counted to tell a load from a rebuild."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from services.vector import embedded
from services.vector.backends import EmbeddedKind, collection_file
from services.vector.embedded import EmbeddedCollection
from services.vector.model import CollectionConfig, StoredPoint
from support.vectors import clustered, exact_scores

DIMENSION = 32
CONFIG = CollectionConfig("collections/docs", DIMENSION, "cosine", "", "embedded", 0.0)


@pytest.fixture
def rebuilds(monkeypatch) -> list[int]:
    monkeypatch.setattr(embedded, "EXACT_BELOW", 1000)
    calls: list[int] = []
    rebuild = EmbeddedCollection._rebuild
    monkeypatch.setattr(EmbeddedCollection, "_rebuild", lambda self: calls.append(1) or rebuild(self))
    return calls


def upsert(collection: EmbeddedCollection, ids: list[str], vectors: np.ndarray) -> None:
    for start in range(0, len(ids), 1000):
        batch = zip(ids[start : start + 1000], vectors[start : start + 1000], strict=True)
        collection.upsert([StoredPoint(i, v.tolist(), "", {"id": i}) for i, v in batch])


def nearest(collection: EmbeddedCollection, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    return [[m.point.id for m in row] for row in collection.query(queries, k, None, None, with_vectors=False)]


def truth(points: dict[str, np.ndarray], queries: np.ndarray, k: int = 10) -> list[set[str]]:
    ids = list(points)
    scores = exact_scores(np.stack([points[i] for i in ids]), queries, "cosine")
    return [{ids[j] for j in np.argsort(-row)[:k]} for row in scores]


def recall(found: list[list[str]], expected: list[set[str]]) -> float:
    return float(np.mean([len(set(f) & e) / len(e) for f, e in zip(found, expected, strict=True)]))


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.hnsw*"))


def test_a_restart_loads_the_index_and_replays_the_writes_after_its_snapshot(tmp_path, rebuilds):
    path = collection_file(tmp_path, CONFIG.name)
    vectors = clustered(4000, DIMENSION, 1)
    points = {f"p{i}": vectors[i] for i in range(4000)}
    queries = clustered(30, DIMENSION, 2)

    collection = EmbeddedCollection(path, CONFIG)
    upsert(collection, list(points), vectors)
    assert rebuilds == [1]  # built once, when the collection crossed EXACT_BELOW
    before = nearest(collection, queries)
    collection.checkpoint()  # the service's graceful stop
    collection.close()
    (saved,) = snapshot_files(tmp_path)
    assert saved.startswith("docs.") and saved.endswith(".hnsw")

    # A clean restart: loaded, not rebuilt; the same graph gives the same answers.
    collection = EmbeddedCollection(path, CONFIG)
    assert rebuilds == [1]
    assert nearest(collection, queries) == before

    # Writes after the snapshot, then a stop without one (kill -9): new points, moved
    # points, deleted points, and a deleted label reused by a new point.
    moved = clustered(200, DIMENSION, 3)
    upsert(collection, [f"p{i}" for i in range(200)], moved)
    fresh = clustered(300, DIMENSION, 4)
    upsert(collection, [f"n{i}" for i in range(300)], fresh)
    doomed = [f"p{i}" for i in range(3700, 4000)]
    assert collection.delete(doomed, None) == 300
    upsert(collection, ["late"], clustered(1, DIMENSION, 5))
    collection.close()
    points.update({f"p{i}": moved[i] for i in range(200)})
    points.update({f"n{i}": fresh[i] for i in range(300)})
    points["late"] = clustered(1, DIMENSION, 5)[0]
    for point_id in doomed:
        del points[point_id]

    collection = EmbeddedCollection(path, CONFIG)
    try:
        assert rebuilds == [1], "the restart rebuilt the index instead of replaying onto the snapshot"
        assert collection.count() == len(points) == 4001
        found = nearest(collection, queries)
        assert not {i for row in found for i in row} & set(doomed)
        assert recall(found, truth(points, queries)) >= 0.95
        # Moved and new points are found where they are now.
        for point_id in ("p7", "n11", "late"):
            assert nearest(collection, points[point_id][None, :], k=1) == [[point_id]]
    finally:
        collection.close()


def test_snapshots_follow_the_writes_so_a_kill_replays_little(tmp_path, rebuilds, monkeypatch):
    """Without a graceful stop ever happening, a snapshot is saved every
    UNSAVED_BEFORE_SAVING points written (here 1,000): after kill -9 a start replays
    only the writes since the last one."""
    monkeypatch.setattr(embedded, "UNSAVED_BEFORE_SAVING", 1000)
    path = collection_file(tmp_path, CONFIG.name)
    vectors = clustered(3500, DIMENSION, 10)
    collection = EmbeddedCollection(path, CONFIG)
    upsert(collection, [f"p{i}" for i in range(3000)], vectors[:3000])
    first = snapshot_files(tmp_path)
    assert len(first) == 1  # saved while writing, not at a stop
    upsert(collection, [f"p{i}" for i in range(3000, 3500)], vectors[3000:])
    collection.delete([f"p{i}" for i in range(600)], None)  # 500 + 600 more: another snapshot
    second = snapshot_files(tmp_path)
    assert len(second) == 1 and second != first  # the newer replaced the older
    collection.upsert([StoredPoint("p3499", clustered(1, DIMENSION, 11)[0].tolist(), "", {})])
    collection.close()  # no checkpoint: as after kill -9

    collection = EmbeddedCollection(path, CONFIG)
    try:
        assert rebuilds == [1] and collection.count() == 2900
        assert nearest(collection, clustered(1, DIMENSION, 11), k=1) == [["p3499"]]
        assert nearest(collection, vectors[5][None, :], k=1) != [["p5"]]
    finally:
        collection.close()


def test_a_snapshot_that_cannot_be_read_is_rebuilt_from_the_file(tmp_path, rebuilds, caplog):
    path = collection_file(tmp_path, CONFIG.name)
    vectors = clustered(3000, DIMENSION, 6)
    collection = EmbeddedCollection(path, CONFIG)
    upsert(collection, [f"p{i}" for i in range(3000)], vectors)
    queries = clustered(10, DIMENSION, 7)
    expected = truth({f"p{i}": vectors[i] for i in range(3000)}, queries)
    collection.checkpoint()
    collection.close()
    (saved,) = tmp_path.glob("*.hnsw")
    whole = saved.stat().st_size
    saved.write_bytes(saved.read_bytes()[: whole // 2])  # a torn file

    collection = EmbeddedCollection(path, CONFIG)
    try:
        assert rebuilds == [1, 1]
        assert "ignoring the index snapshot" in caplog.text
        assert recall(nearest(collection, queries), expected) >= 0.95
        # The rebuild was saved at once: the next start is quick again.
        (fresh,) = tmp_path.glob("*.hnsw")
        assert fresh.stat().st_size == whole
    finally:
        collection.close()


def test_a_collection_file_from_before_snapshots_opens_with_its_points(tmp_path, rebuilds):
    """Files written by the first release have no write numbers: they open, their points
    all there, and from then on are numbered."""
    path = collection_file(tmp_path, CONFIG.name)
    vectors = clustered(1500, DIMENSION, 8)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE points (label INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
            "vector BLOB NOT NULL, text TEXT NOT NULL, payload TEXT NOT NULL)"
        )
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        db.executemany(
            "INSERT INTO points VALUES (?, ?, ?, '', '{}')", [(i, f"p{i}", unit[i].tobytes()) for i in range(1500)]
        )
    collection = EmbeddedCollection(path, CONFIG)
    try:
        assert collection.count() == 1500 and rebuilds == [1]
        assert nearest(collection, vectors[42][None, :], k=1) == [["p42"]]
        assert collection.delete(["p42"], None) == 1
    finally:
        collection.checkpoint()
        collection.close()
    collection = EmbeddedCollection(path, CONFIG)
    try:
        assert rebuilds == [1] and collection.count() == 1499
        assert nearest(collection, vectors[42][None, :], k=1) != [["p42"]]
    finally:
        collection.close()


def test_dropping_a_collection_removes_its_snapshots(tmp_path, rebuilds):
    kind = EmbeddedKind(tmp_path)
    collection = kind.create(CONFIG)
    upsert(collection, [f"p{i}" for i in range(1200)], clustered(1200, DIMENSION, 9))
    collection.checkpoint()
    collection.close()
    assert snapshot_files(tmp_path)
    kind.drop(CONFIG)
    assert snapshot_files(tmp_path) == [] and list(tmp_path.iterdir()) == []
