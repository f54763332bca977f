"""Vector search through the front door (issue 10), on the session's mesh: a user creates
a collection whose texts are embedded by the mesh's all-MiniLM-L6-v2 (through the
router), upserts a few thousand texts with payloads, and queries by text over REST and
gRPC, with filters applied inside the search; bad input is a clear 4xx; upserts survive
the service being killed with SIGKILL."""

from __future__ import annotations

import os
import signal

import grpc
import httpx
import pytest

from infermesh.vector.v1 import vector_service_pb2 as pb
from infermesh.vector.v1 import vector_service_pb2_grpc as pb_grpc
from support.polling import eventually

MINILM = "all-minilm-l6-v2"
TOPICS = {
    "sport": ["football match", "tennis final", "marathon runners", "basketball season", "swimming record"],
    "food": ["pasta recipe", "baking bread", "spicy curry", "chocolate cake", "fresh salad"],
    "space": ["rocket launch", "mars rover", "distant galaxy", "telescope images", "astronaut training"],
    "music": ["piano concerto", "rock concert", "jazz trio", "violin lesson", "new album release"],
}
N = 2000


def texts() -> list[dict]:
    """N short texts over four topics, each with a topic, a number and a year."""
    points = []
    for i in range(N):
        topic = list(TOPICS)[i % 4]
        phrase = TOPICS[topic][(i // 4) % 5]
        points.append(
            {
                "id": f"doc-{i}",
                "text": f"{phrase} number {i}",
                "payload": {"topic": topic, "n": i, "year": 2000 + i % 25},
            }
        )
    return points


@pytest.fixture(scope="module")
def collection(base_url: str) -> str:
    created = httpx.post(
        f"{base_url}/v1/collections",
        params={"collection_id": "articles"},
        json={"distance": "DISTANCE_COSINE", "embedding_model": MINILM},
        timeout=60,
    )
    assert created.status_code == 200, created.text
    assert created.json()["dimension"] == 384  # from the model
    points = texts()
    for start in range(0, N, 500):
        reply = httpx.post(
            f"{base_url}/v1/collections/articles/points:upsert",
            json={"points": points[start : start + 500]},
            timeout=300,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"upserted": 500, "embedded": 500}
    return "collections/articles"


def test_query_by_text_over_rest_finds_the_topic(base_url, collection):
    got = httpx.get(f"{base_url}/v1/{collection}", timeout=30).json()
    assert int(got["point_count"]) == N and got["embedding_model"] == MINILM
    reply = httpx.post(
        f"{base_url}/v1/{collection}:query", json={"text": "a rocket going to space", "top_k": 10}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    found = reply.json()["points"]
    assert len(found) == 10
    assert all(p["point"]["payload"]["topic"] == "space" for p in found)
    scores = [p["score"] for p in found]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.4


def test_filters_apply_inside_the_search_and_still_return_k(base_url, collection):
    # Music only, in a year range, and not number 3: k results even though few match.
    query = {
        "text": "a rocket going to space",
        "top_k": 7,
        "filter": {
            "all": {
                "filters": [
                    {"field": {"key": "topic", "equals": "music"}},
                    {"field": {"key": "year", "range": {"gte": 2010, "lt": 2012}}},
                    {"not": {"field": {"key": "n", "in": [3, 7]}}},
                ]
            }
        },
        "with_payload": True,
    }
    found = httpx.post(f"{base_url}/v1/{collection}:query", json=query, timeout=60).json()["points"]
    assert len(found) == 7
    for p in found:
        payload = p["point"]["payload"]
        assert payload["topic"] == "music" and 2010 <= payload["year"] < 2012 and payload["n"] not in (3, 7)
    # Either topic: OR.
    either = {"any": {"filters": [{"field": {"key": "topic", "equals": "food"}}, {"field": {"key": "n", "equals": 5}}]}}
    found = httpx.post(
        f"{base_url}/v1/{collection}:query", json={"text": "cake", "top_k": 50, "filter": either}, timeout=60
    ).json()["points"]
    assert len(found) == 50 and {p["point"]["payload"]["topic"] for p in found} <= {"food", "space"}


def test_query_over_grpc_batched_with_vectors_and_thresholds(front_door, collection):
    with grpc.insecure_channel(front_door) as channel:
        stub = pb_grpc.VectorServiceStub(channel)
        one = stub.GetPoints(pb.GetPointsRequest(collection=collection, ids=["doc-2", "nope"], with_vectors=True))
        assert [p.id for p in one.points] == ["doc-2"] and len(one.points[0].vector) == 384
        batch = stub.BatchQuery(
            pb.BatchQueryRequest(
                collection=collection,
                queries=[
                    pb.QueryRequest(text="piano music", top_k=3),
                    pb.QueryRequest(vector=one.points[0].vector, top_k=1, with_payload=False),
                    pb.QueryRequest(text="piano music", top_k=1000, score_threshold=0.99),
                ],
            ),
            timeout=60,
        )
        first, nearest, strict = batch.results
        assert [p.point.payload["topic"] for p in first.points] == ["music"] * 3
        assert nearest.points[0].point.id == "doc-2" and nearest.points[0].score > 0.999
        assert not nearest.points[0].point.HasField("payload")
        assert all(p.score >= 0.99 for p in strict.points) and len(strict.points) < 10


def test_bad_input_is_a_clear_client_error(base_url, collection):
    wrong = httpx.post(f"{base_url}/v1/{collection}:query", json={"vector": [0.1, 0.2], "top_k": 3}, timeout=30)
    assert wrong.status_code == 400 and "384" in wrong.json()["message"]
    both = httpx.post(f"{base_url}/v1/{collection}:query", json={"vector": [0.1] * 384, "text": "x"}, timeout=30)
    assert both.status_code == 400
    missing = httpx.post(f"{base_url}/v1/collections/nope:query", json={"text": "x"}, timeout=30)
    assert missing.status_code == 404
    again = httpx.post(
        f"{base_url}/v1/collections",
        params={"collection_id": "articles"},
        json={"dimension": 3, "distance": "DISTANCE_DOT"},
        timeout=30,
    )
    assert again.status_code == 409
    no_model = httpx.post(
        f"{base_url}/v1/collections",
        params={"collection_id": "vectors-only"},
        json={"dimension": 3, "distance": "DISTANCE_L2"},
        timeout=30,
    )
    assert no_model.status_code == 200
    text_without_model = httpx.post(
        f"{base_url}/v1/collections/vectors-only/points:upsert",
        json={"points": [{"id": "a", "text": "hi"}]},
        timeout=30,
    )
    assert text_without_model.status_code == 400 and "no embedding model" in text_without_model.json()["message"]
    assert httpx.delete(f"{base_url}/v1/collections/vectors-only", timeout=30).status_code == 200


def test_deletes_by_id_and_filter(base_url, collection):
    by_id = httpx.post(
        f"{base_url}/v1/{collection}/points:delete", json={"ids": ["doc-0", "doc-1", "nope"]}, timeout=30
    )
    assert by_id.json() == {"deleted": 2}
    by_filter = {"filter": {"field": {"key": "year", "equals": 2024}}}
    deleted = httpx.post(f"{base_url}/v1/{collection}/points:delete", json=by_filter, timeout=30).json()["deleted"]
    gone = ("doc-0", "doc-1")
    assert deleted == sum(1 for p in texts() if p["payload"]["year"] == 2024 and p["id"] not in gone)
    left = int(httpx.get(f"{base_url}/v1/{collection}", timeout=30).json()["point_count"])
    assert left == N - 2 - deleted


def test_upserts_survive_kill_9(mesh, base_url, collection):
    reply = httpx.post(
        f"{base_url}/v1/{collection}/points:upsert",
        json={"points": [{"id": "durable", "text": "written just before the crash", "payload": {"topic": "crash"}}]},
        timeout=60,
    )
    assert reply.status_code == 200
    before = int(httpx.get(f"{base_url}/v1/{collection}", timeout=30).json()["point_count"])
    os.kill(mesh.child("vector").process.pid, signal.SIGKILL)
    mesh.child("vector").process.wait()
    mesh.restart("vector")
    got = eventually(
        lambda: httpx.get(f"{base_url}/v1/{collection}", timeout=30),
        until=lambda reply: reply.status_code == 200,
        timeout=60,
        interval=0.5,
    )
    assert int(got.json()["point_count"]) == before
    found = httpx.post(
        f"{base_url}/v1/{collection}:query",
        json={"text": "crash", "top_k": 1, "filter": {"field": {"key": "topic", "equals": "crash"}}},
        timeout=60,
    ).json()["points"]
    assert found[0]["point"]["id"] == "durable"
