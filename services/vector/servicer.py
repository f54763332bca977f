"""VectorService: protos in, plain calls on the core, protos out."""

from __future__ import annotations

from google.protobuf import empty_pb2, json_format

from infermesh.vector.v1 import vector_service_pb2 as pb
from infermesh.vector.v1 import vector_service_pb2_grpc as pb_grpc
from services.runtime.identity import forwarded
from services.vector.core import VectorStore
from services.vector.model import CollectionConfig, Match, StoredPoint

DISTANCE_NAMES = {pb.DISTANCE_COSINE: "cosine", pb.DISTANCE_DOT: "dot", pb.DISTANCE_L2: "l2"}
DISTANCE_ENUMS = {name: value for value, name in DISTANCE_NAMES.items()}


def _forwarded(context) -> list[tuple[str, str]]:
    """Calls made on the caller's behalf (embedding) carry who the caller is and what it
    may use."""
    return forwarded(context.invocation_metadata() or ())


def collection_proto(config: CollectionConfig, count: int) -> pb.Collection:
    collection = pb.Collection(
        name=config.name,
        dimension=config.dimension,
        distance=DISTANCE_ENUMS[config.distance],
        embedding_model=config.embedding_model,
        backend=config.backend,
        point_count=count,
    )
    collection.create_time.FromNanoseconds(int(config.create_time * 1e9))
    return collection


def point_proto(point: StoredPoint, with_vector: bool, with_payload: bool = True) -> pb.Point:
    proto = pb.Point(id=point.id, text=point.text, vector=point.vector if with_vector else [])
    if with_payload:
        proto.payload.update(point.payload)
    return proto


def _point(proto: pb.Point) -> StoredPoint:
    return StoredPoint(proto.id, list(proto.vector), proto.text, json_format.MessageToDict(proto.payload))


class VectorServicer(pb_grpc.VectorServiceServicer):
    def __init__(self, store: VectorStore) -> None:
        self.store = store

    async def CreateCollection(self, request, context):
        c = request.collection
        config = CollectionConfig(
            "", c.dimension, DISTANCE_NAMES[c.distance], c.embedding_model, c.backend or "embedded"
        )
        settled = await self.store.create(request.collection_id, config, _forwarded(context))
        return collection_proto(settled, 0)

    async def GetCollection(self, request, context):
        return collection_proto(*await self.store.get(request.name))

    async def ListCollections(self, request, context):
        page, token = await self.store.list(request.page_size, request.page_token)
        return pb.ListCollectionsResponse(collections=[collection_proto(*c) for c in page], next_page_token=token)

    async def DeleteCollection(self, request, context):
        await self.store.delete(request.name)
        return empty_pb2.Empty()

    async def UpsertPoints(self, request, context):
        points = [_point(p) for p in request.points]
        written, embedded = await self.store.upsert(request.collection, points, _forwarded(context))
        return pb.UpsertPointsResponse(upserted=written, embedded=embedded)

    async def GetPoints(self, request, context):
        found = await self.store.get_points(request.collection, list(request.ids), request.with_vectors)
        return pb.GetPointsResponse(points=[point_proto(p, request.with_vectors) for p in found])

    async def DeletePoints(self, request, context):
        where = request.filter if request.HasField("filter") else None
        deleted = await self.store.delete_points(request.collection, list(request.ids), where)
        return pb.DeletePointsResponse(deleted=deleted)

    async def Query(self, request, context):
        (result,) = await self._answer(request.collection, [request], context)
        return result

    async def BatchQuery(self, request, context):
        return pb.BatchQueryResponse(results=await self._answer(request.collection, list(request.queries), context))

    async def _answer(self, collection: str, queries: list[pb.QueryRequest], context) -> list[pb.QueryResponse]:
        found = await self.store.query(
            collection,
            [(list(q.vector), q.text) for q in queries],
            [q.top_k for q in queries],
            [q.filter if q.HasField("filter") else None for q in queries],
            [q.score_threshold if q.HasField("score_threshold") else None for q in queries],
            _forwarded(context),
            [q.with_vectors for q in queries],
        )
        return [
            pb.QueryResponse(points=[_scored(m, q) for m in matches]) for q, matches in zip(queries, found, strict=True)
        ]


def _scored(match: Match, query: pb.QueryRequest) -> pb.ScoredPoint:
    with_payload = not query.HasField("with_payload") or query.with_payload
    return pb.ScoredPoint(point=point_proto(match.point, query.with_vectors, with_payload), score=match.score)
