"""The Qdrant backend, through qdrant-client: for collections that outgrow one machine
(a Qdrant server or cluster at QDRANT_URL), or Qdrant's local mode (QDRANT_PATH: a
directory, or `:memory:`; for tests and development, no server needed).

The mapping is one to one:
  - `collections/{id}` is the Qdrant collection `{id}`: one unnamed vector of the
    collection's dimension; distance cosine → Cosine, dot → Dot, l2 → Euclid. Its settings
    are also written to the Qdrant collection's metadata (`infermesh`), for whoever looks
    at Qdrant directly; the core's own record is the one it reads.
  - A point's id is any string, Qdrant's a UUID or an integer: a point is stored under
    UUIDv5(ID_NAMESPACE, id), with the id itself in its payload (`_id`) and its text in
    `_text`; the caller never sees either key. The payload's layout and the filters'
    translation are in qdrant_payload.py.
  - Scores are the API's (higher is nearer): Qdrant's for cosine and dot; for L2, Qdrant's
    Euclidean distance negated. A score threshold is Qdrant's `score_threshold` (for L2,
    the distance bound), a hair looser, and applied exactly (score ≥ threshold) to what
    comes back: Qdrant's own comparison is strict.
  - Filters are Qdrant filters, applied inside Qdrant's search (qdrant_payload.py).

An upsert is sent in chunks of UPSERT_CHUNK points (each an atomic Qdrant operation, and
under Qdrant's request size limit); one that fails part-way has written the chunks before
it, and is safe to retry. Counts of deleted points are counted just before the delete.

Qdrant's local mode is not thread-safe, and its SQLite persistence is tied to the thread
that opened it unless told otherwise: calls on it take one lock. A server's client is
thread-safe and calls on it run concurrently.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from infermesh.vector.v1 import vector_service_pb2 as pb
from services.runtime.errors import AlreadyExists, FailedPrecondition, Unavailable
from services.vector.model import CollectionConfig, Match, StoredPoint, as_matrix
from services.vector.qdrant_payload import from_payload, to_filter, to_payload

DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "l2": models.Distance.EUCLID}
ID_NAMESPACE = uuid.UUID("5d0c3f6e-8a8e-4b7a-9a53-3c1f0e6b7a10")  # fixed: changing it orphans every point
UPSERT_CHUNK = 512


def point_uuid(point_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, point_id))


def qdrant_name(name: str) -> str:
    return name.removeprefix("collections/")


class QdrantKind:
    """Collections on one Qdrant (a server, or local mode), through one client."""

    def __init__(self, client: QdrantClient, local: bool) -> None:
        self._client = client
        # Local mode: one lock for every call (see the module's docstring).
        self._lock: contextlib.AbstractContextManager = threading.Lock() if local else contextlib.nullcontext()

    @classmethod
    def connect(cls, url: str = "", path: str = "", api_key: str | None = None) -> QdrantKind:
        """A server at `url`, or local mode in `path` (a directory, or ":memory:")."""
        if bool(url) == bool(path):
            raise ValueError("Qdrant needs a URL or a local path (one of them)")
        if url:
            # No version check at start: it would call the server before it is needed.
            return cls(QdrantClient(url=url, api_key=api_key, check_compatibility=False), local=False)
        if path == ":memory:":
            return cls(QdrantClient(location=path, force_disable_check_same_thread=True), local=True)
        return cls(QdrantClient(path=path, force_disable_check_same_thread=True), local=True)

    def create(self, config: CollectionConfig) -> QdrantCollection:
        name = qdrant_name(config.name)
        with self._lock, _errors(name):
            if self._client.collection_exists(name):
                raise AlreadyExists(
                    f"Qdrant already has a collection {name!r}: delete it there, or pick another id",
                    reason="BACKEND_COLLECTION_EXISTS",
                    collection=config.name,
                )
            self._client.create_collection(
                name,
                vectors_config=models.VectorParams(size=config.dimension, distance=DISTANCES[config.distance]),
                metadata={"infermesh": asdict(config)},
            )
        return self.open(config)

    def open(self, config: CollectionConfig) -> QdrantCollection:
        return QdrantCollection(self._client, config, self._lock)

    def drop(self, config: CollectionConfig) -> None:
        name = qdrant_name(config.name)
        with self._lock, _errors(name):
            self._client.delete_collection(name)

    def close(self) -> None:
        with self._lock:
            self._client.close()


class QdrantCollection:
    """One collection in Qdrant; satisfies backends.Backend."""

    def __init__(self, client: QdrantClient, config: CollectionConfig, lock: contextlib.AbstractContextManager) -> None:
        self.config = config
        self._client = client
        self._name = qdrant_name(config.name)
        self._lock = lock

    def upsert(self, points: Sequence[StoredPoint]) -> int:
        vectors = as_matrix(np.asarray([p.vector for p in points], np.float32), self.config)
        structs = [
            models.PointStruct(id=point_uuid(p.id), vector=vector.tolist(), payload=to_payload(p))
            for p, vector in zip(points, vectors, strict=True)
        ]
        with self._lock, _errors(self._name):
            for start in range(0, len(structs), UPSERT_CHUNK):
                self._client.upsert(self._name, points=structs[start : start + UPSERT_CHUNK], wait=True)
        return len(points)

    def get(self, ids: Sequence[str], with_vectors: bool = True) -> list[StoredPoint]:
        wanted = list(dict.fromkeys(point_uuid(i) for i in ids))
        with self._lock, _errors(self._name):
            found = self._client.retrieve(self._name, ids=wanted, with_payload=True, with_vectors=with_vectors)
        by_id = {point.id: point for point in map(self._stored, found)}
        return [by_id[i] for i in ids if i in by_id]

    def delete(self, ids: Sequence[str] | None, where: pb.Filter | None) -> int:
        with self._lock, _errors(self._name):
            if where is not None:
                selector = to_filter(where)
                doomed = self._client.count(self._name, count_filter=selector, exact=True).count
                if doomed:
                    self._client.delete(self._name, points_selector=models.FilterSelector(filter=selector), wait=True)
                return doomed
            wanted = list(dict.fromkeys(point_uuid(i) for i in ids or ()))
            found = self._client.retrieve(self._name, ids=wanted, with_payload=False, with_vectors=False)
            if found:
                selector = models.PointIdsList(points=[point.id for point in found])
                self._client.delete(self._name, points_selector=selector, wait=True)
            return len(found)

    def query(
        self,
        vectors: np.ndarray,
        top_k: int,
        where: pb.Filter | None,
        threshold: float | None,
        with_vectors: bool = True,
    ) -> list[list[Match]]:
        selector = to_filter(where) if where is not None else None
        requests = [
            models.QueryRequest(
                query=vector.tolist(),
                limit=top_k,
                filter=selector,
                score_threshold=self._qdrant_threshold(threshold),
                with_payload=True,
                with_vector=with_vectors,
            )
            for vector in as_matrix(vectors, self.config)
        ]
        with self._lock, _errors(self._name):
            responses = self._client.query_batch_points(self._name, requests=requests)
        results = []
        for response in responses:
            matches = [Match(self._stored(p), self._score(p.score)) for p in response.points]
            results.append([m for m in matches if threshold is None or m.score >= threshold])
        return results

    def count(self) -> int:
        with self._lock, _errors(self._name):
            return self._client.count(self._name, exact=True).count

    def checkpoint(self) -> None:
        pass  # Qdrant keeps its own index on disk

    def close(self) -> None:
        pass  # the client is the QdrantKind's

    def _score(self, score: float) -> float:
        return -float(score) if self.config.distance == "l2" else float(score)

    def _qdrant_threshold(self, threshold: float | None) -> float | None:
        """Qdrant's score_threshold for ours, a hair looser (Qdrant's own test is strict,
        ours is score ≥ threshold; query() applies ours exactly)."""
        if threshold is None:
            return None
        slack = 1e-5 * max(1.0, abs(threshold))
        return -threshold + slack if self.config.distance == "l2" else threshold - slack

    @staticmethod
    def _stored(point: models.Record | models.ScoredPoint) -> StoredPoint:
        point_id, text, payload = from_payload(point.payload or {})
        vector = point.vector if isinstance(point.vector, list) else []
        return StoredPoint(point_id, vector, text, payload)


@contextlib.contextmanager
def _errors(collection: str) -> Iterator[None]:
    """Qdrant's failures as the service's errors: unreachable (or failing) is UNAVAILABLE,
    a collection gone from Qdrant behind the service's back is FAILED_PRECONDITION."""
    try:
        yield
    except UnexpectedResponse as error:
        if error.status_code == 404:
            raise FailedPrecondition(
                f"Qdrant has no collection {collection!r} (deleted outside this service?)",
                reason="BACKEND_COLLECTION_MISSING",
                collection=collection,
            ) from error
        if error.status_code is not None and error.status_code < 500:
            raise
        raise Unavailable("Qdrant failed to answer", reason="BACKEND_UNAVAILABLE", backend="qdrant") from error
    except (ResponseHandlingException, httpx.TransportError) as error:
        raise Unavailable("Qdrant is unreachable", reason="BACKEND_UNAVAILABLE", backend="qdrant") from error
