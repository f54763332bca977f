"""Where a collection's points live: the `Backend` protocol every backend's collection
satisfies (the core calls it from worker threads, so its methods are synchronous), and
the `BackendKind` that creates, opens and drops collections of one backend.

Each collection's settings record is the core's (a SQLite file per collection under the
vector directory, `{id}.db`, whatever its backend); the embedded backend keeps its points
in that same file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from infermesh.vector.v1 import vector_service_pb2 as pb
from services.vector import snapshots
from services.vector.embedded import EmbeddedCollection
from services.vector.model import CollectionConfig, Match, StoredPoint


class Backend(Protocol):
    """One collection's points."""

    config: CollectionConfig

    def upsert(self, points: Sequence[StoredPoint]) -> int:
        """Writes the points (their ids unique: the core keeps the last of each); returns how many."""
        ...

    def get(self, ids: Sequence[str], with_vectors: bool = True) -> list[StoredPoint]:
        """The points of these ids that exist, in the order asked."""
        ...

    def delete(self, ids: Sequence[str] | None, where: pb.Filter | None) -> int:
        """Deletes points by id, or every point the filter matches; returns how many."""
        ...

    def query(
        self,
        vectors: np.ndarray,
        top_k: int,
        where: pb.Filter | None,
        threshold: float | None,
        with_vectors: bool = True,
    ) -> list[list[Match]]:
        """For each query vector, the top_k nearest points the filter matches that score
        at least `threshold`, best first (scores: higher is nearer)."""
        ...

    def count(self) -> int: ...

    def checkpoint(self) -> None:
        """Make the next open quick (embedded: save the index); called when the service stops."""
        ...

    def close(self) -> None: ...


class BackendKind(Protocol):
    """Creates, opens and drops the collections of one backend."""

    def create(self, config: CollectionConfig) -> Backend: ...

    def open(self, config: CollectionConfig) -> Backend: ...

    def drop(self, config: CollectionConfig) -> None:
        """Removes a (closed) collection's points."""
        ...

    def close(self) -> None: ...


def collection_file(directory: Path, name: str) -> Path:
    """The SQLite file of `collections/{id}`: its settings record (and, embedded, its points)."""
    return directory / f"{name.removeprefix('collections/')}.db"


def remove_collection_file(directory: Path, name: str) -> None:
    """Delete a collection's SQLite file with its write-ahead log, shared memory and
    index snapshots."""
    path = collection_file(directory, name)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    snapshots.remove(path.with_suffix(""))


class EmbeddedKind:
    """Collections in this service's own files (embedded.py)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def create(self, config: CollectionConfig) -> Backend:
        return self.open(config)  # the file is made on first open

    def open(self, config: CollectionConfig) -> Backend:
        return EmbeddedCollection(collection_file(self._dir, config.name), config)

    def drop(self, config: CollectionConfig) -> None:
        remove_collection_file(self._dir, config.name)

    def close(self) -> None:
        pass
