"""The router's response cache through the front door: a repeated deterministic request
is answered identically from the cache (the backend does no work), sampling requests and
callers sending `cache-control: no-cache` always reach the backend."""

from __future__ import annotations

import uuid

import httpx

from conftest import metric

GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


def test_a_repeated_deterministic_request_is_answered_from_the_cache(base_url, mesh):
    inference, router = mesh.settings.inference_metrics_port, mesh.settings.router_metrics_port
    body = {"model": GEMMA, "prompt": f"Fact {uuid.uuid4().hex[:8]}: the sea is", "max_tokens": 8}
    first = httpx.post(f"{base_url}/v1/generate-text", json=body, timeout=120)
    assert first.status_code == 200 and first.headers["x-infermesh-cache"] == "miss"
    worked = metric(inference, "infermesh_inference_tokens_total", model=GEMMA, direction="output")
    hits = metric(router, "infermesh_router_cache_total", model=GEMMA, result="hit")

    second = httpx.post(f"{base_url}/v1/generate-text", json=body, timeout=120)
    assert second.headers["x-infermesh-cache"] == "hit"
    assert second.json() == first.json()  # identical answer, usage included
    assert metric(inference, "infermesh_inference_tokens_total", model=GEMMA, direction="output") == worked
    assert metric(router, "infermesh_router_cache_total", model=GEMMA, result="hit") == hits + 1

    bypass = httpx.post(f"{base_url}/v1/generate-text", json=body, headers={"cache-control": "no-cache"}, timeout=120)
    assert "x-infermesh-cache" not in bypass.headers
    assert metric(inference, "infermesh_inference_tokens_total", model=GEMMA, direction="output") > worked


def test_sampled_requests_are_never_cached(base_url):
    body = {"model": GEMMA, "prompt": f"Story {uuid.uuid4().hex[:8]}:", "max_tokens": 6, "temperature": 0.9}
    replies = [httpx.post(f"{base_url}/v1/generate-text", json=body, timeout=120) for _ in range(2)]
    assert all(r.status_code == 200 and "x-infermesh-cache" not in r.headers for r in replies)


def test_embeddings_are_cached_too(base_url):
    body = {"model": MINILM, "inputs": [f"cache me {uuid.uuid4().hex[:8]}"]}
    first = httpx.post(f"{base_url}/v1/embed", json=body, timeout=60)
    second = httpx.post(f"{base_url}/v1/embed", json=body, timeout=60)
    assert (first.headers["x-infermesh-cache"], second.headers["x-infermesh-cache"]) == ("miss", "hit")
    assert second.json() == first.json()
