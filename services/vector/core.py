"""The vector service's core: collections and their points, on a backend, with texts
embedded by a function the service is given (the router's Embed, so the mesh's fallbacks,
metrics and the caller's limits apply). Knows nothing about gRPC.

Each collection lives on a backend (backends.py): `embedded` (this service's own files,
the default) or `qdrant` (when the service is given one). Every collection has a SQLite
file under `directory` (`{id}.db`) holding its settings, its backend among them: listing
the directory lists the collections, and a restart finds them all on their backends. An
embedded collection keeps its points in the same file; a Qdrant collection's are in
Qdrant (the Qdrant collection of the same id)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np

from infermesh.vector.v1 import vector_service_pb2 as pb
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.vector.backends import Backend, BackendKind, EmbeddedKind, collection_file, remove_collection_file
from services.vector.model import CollectionConfig, Match, StoredPoint

# Texts in, vectors out: (model, texts, the caller's call metadata).
Embedder = Callable[[str, list[str], Sequence[tuple[str, str]]], Awaitable[list[list[float]]]]
MAX_PAGE = 1000


class VectorStore:
    def __init__(self, directory: Path, embed: Embedder, qdrant: BackendKind | None = None) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._embed = embed
        self._kinds: dict[str, BackendKind] = {"embedded": EmbeddedKind(directory)}
        if qdrant is not None:
            self._kinds["qdrant"] = qdrant
        self._collections: dict[str, Backend] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Open every collection found on disk, on its backend (an embedded one's index is
        loaded from its snapshot, or rebuilt from its file). A collection on a backend this service is not given stops
        the start: serving without it would answer NOT_FOUND for a collection that exists."""
        for path in sorted(self._dir.glob("*.db")):
            config = _read_config(path)
            if config is not None:
                self._collections[config.name] = await asyncio.to_thread(self._kind(config.backend).open, config)

    def _kind(self, backend: str) -> BackendKind:
        kind = self._kinds.get(backend)
        if kind is None:
            raise FailedPrecondition(
                f"backend {backend!r} is not configured on this service", reason="BACKEND_UNAVAILABLE", backend=backend
            )
        return kind

    # -- collections ------------------------------------------------------------------

    async def create(self, collection_id: str, config: CollectionConfig, metadata) -> CollectionConfig:
        name = f"collections/{collection_id}"
        backend = config.backend or "embedded"
        kind = self._kind(backend)
        dimension = config.dimension
        if config.embedding_model:
            # The model decides the dimension: embed a probe text once.
            probe = await self._embed(config.embedding_model, ["dimension probe"], metadata)
            if dimension and dimension != len(probe[0]):
                raise InvalidArgument(
                    f"{config.embedding_model} makes vectors of {len(probe[0])} dimensions, not {dimension}",
                    reason="DIMENSION_MISMATCH",
                    model=config.embedding_model,
                    dimension=len(probe[0]),
                )
            dimension = len(probe[0])
        if dimension <= 0:
            raise InvalidArgument("a collection needs a dimension or an embedding model", reason="DIMENSION_REQUIRED")
        settled = CollectionConfig(name, dimension, config.distance, config.embedding_model, backend, time.time())
        async with self._lock:
            if name in self._collections:
                raise AlreadyExists(f"{name} already exists", reason="COLLECTION_EXISTS", collection=name)
            collection = await asyncio.to_thread(kind.create, settled)
            try:
                # The record last: a collection is listed once its backend has it.
                _write_config(collection_file(self._dir, name), settled)
            except BaseException:
                collection.close()
                await asyncio.to_thread(kind.drop, settled)
                raise
            self._collections[name] = collection
        return settled

    async def get(self, name: str) -> tuple[CollectionConfig, int]:
        collection = self._collection(name)
        return collection.config, await asyncio.to_thread(collection.count)

    async def list(self, page_size: int, page_token: str) -> tuple[list[tuple[CollectionConfig, int]], str]:
        size = min(page_size or 50, MAX_PAGE)
        names = sorted(n for n in self._collections if n > page_token)
        page = [await self.get(n) for n in names[:size]]
        return page, (names[size - 1] if len(names) > size else "")

    async def delete(self, name: str) -> None:
        async with self._lock:
            collection = self._collection(name)
            collection.close()
            await asyncio.to_thread(self._kinds[collection.config.backend].drop, collection.config)
            del self._collections[name]
            remove_collection_file(self._dir, name)  # the settings record (an embedded drop removed it already)

    # -- points -----------------------------------------------------------------------

    async def upsert(self, name: str, points: list[StoredPoint], metadata) -> tuple[int, int]:
        collection = self._collection(name)
        # An id given twice: the last wins, decided before anything is embedded.
        points = list({point.id: point for point in points}.values())
        to_embed = [p for p in points if not p.vector]
        for p in to_embed:
            if not p.text:
                raise InvalidArgument(f"point {p.id!r} has neither a vector nor a text", reason="POINT_EMPTY", id=p.id)
        if to_embed:
            model = self._embedding_model(collection)
            vectors = await self._embed(model, [p.text for p in to_embed], metadata)
            for point, vector in zip(to_embed, vectors, strict=True):
                point.vector = vector
        for p in points:
            if len(p.vector) != collection.config.dimension:
                raise InvalidArgument(
                    f"point {p.id!r} has {len(p.vector)} dimensions; {name} has {collection.config.dimension}",
                    reason="DIMENSION_MISMATCH",
                    id=p.id,
                    dimension=collection.config.dimension,
                )
        written = await asyncio.to_thread(collection.upsert, points)
        return written, len(to_embed)

    async def get_points(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> list[StoredPoint]:
        collection = self._collection(name)
        return await asyncio.to_thread(collection.get, ids, with_vectors)

    async def delete_points(self, name: str, ids: Sequence[str], where: pb.Filter | None) -> int:
        collection = self._collection(name)
        if bool(ids) == (where is not None):
            raise InvalidArgument("delete by ids or by a filter (one of them)", reason="DELETE_TARGET")
        return await asyncio.to_thread(collection.delete, ids, where)

    async def query(
        self,
        name: str,
        queries: list[tuple[list[float], str]],
        top_k: list[int],
        filters: list[pb.Filter | None],
        thresholds: list[float | None],
        metadata,
        with_vectors: list[bool] | None = None,
    ) -> list[list[Match]]:
        """Answer queries (each a vector, or a text to embed) in order."""
        with_vectors = with_vectors or [True] * len(queries)
        collection = self._collection(name)
        texts = [text for vector, text in queries if not vector]
        for vector, text in queries:
            if bool(vector) == bool(text):
                raise InvalidArgument("a query has a vector or a text (one of them)", reason="QUERY_TARGET")
        embedded = iter(await self._embed(self._embedding_model(collection), texts, metadata) if texts else [])
        vectors = [vector or next(embedded) for vector, _ in queries]
        for vector in vectors:
            if len(vector) != collection.config.dimension:
                raise InvalidArgument(
                    f"the query has {len(vector)} dimensions; {name} has {collection.config.dimension}",
                    reason="DIMENSION_MISMATCH",
                    dimension=collection.config.dimension,
                )
        # Queries alike but for their vectors are searched together (one batched call).
        alike: dict[tuple, list[int]] = {}
        for i in range(len(vectors)):
            spec = filters[i].SerializeToString(deterministic=True) if filters[i] is not None else None
            alike.setdefault((top_k[i] or 10, spec, thresholds[i], with_vectors[i]), []).append(i)
        results: list[list[Match]] = [[] for _ in vectors]
        for (k, _, threshold, with_vector), members in alike.items():
            i = members[0]
            batch = np.asarray([vectors[m] for m in members], np.float32)
            found = await asyncio.to_thread(collection.query, batch, k, filters[i], threshold, with_vector)
            for m, matches in zip(members, found, strict=True):
                results[m] = matches
        return results

    def _collection(self, name: str) -> Backend:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"{name} does not exist", reason="COLLECTION_NOT_FOUND", collection=name)
        return collection

    def _embedding_model(self, collection: Backend) -> str:
        if not collection.config.embedding_model:
            raise FailedPrecondition(
                f"{collection.config.name} has no embedding model: give vectors, not texts",
                reason="NO_EMBEDDING_MODEL",
                collection=collection.config.name,
            )
        return collection.config.embedding_model

    def close(self) -> None:
        for collection in self._collections.values():
            collection.checkpoint()  # e.g. the embedded index saved: the next start loads it
            collection.close()
        for kind in self._kinds.values():
            kind.close()


def _write_config(path: Path, config: CollectionConfig) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT OR REPLACE INTO settings VALUES ('collection', ?)", (json.dumps(config.__dict__),))
    db.close()


def _read_config(path: Path) -> CollectionConfig | None:
    with sqlite3.connect(path) as db:
        try:
            row = db.execute("SELECT value FROM settings WHERE key = 'collection'").fetchone()
        except sqlite3.OperationalError:
            row = None
    db.close()
    return CollectionConfig(**json.loads(row[0])) if row else None
