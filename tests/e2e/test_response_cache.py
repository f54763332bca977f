"""The router's response cache through the front door: a repeated deterministic request
is answered identically from the cache (the backend does no work), sampling requests and
callers sending `cache-control: no-cache` always reach the backend."""

from __future__ import annotations

import uuid

import httpx

from support.metrics import metric

GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


def test_a_repeated_deterministic_request_is_answered_from_the_cache(base_url, mesh):
    inference, router = mesh.settings.inference_metrics_port, mesh.settings.router_metrics_port
    body = {"model": GEMMA, "prompt": f"Fact {uuid.uuid4().hex[:8]}: the sea is", "config": {"max_tokens": 8}}
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
    body = {"model": GEMMA, "prompt": f"Story {uuid.uuid4().hex[:8]}:", "config": {"max_tokens": 6, "temperature": 0.9}}
    replies = [httpx.post(f"{base_url}/v1/generate-text", json=body, timeout=120) for _ in range(2)]
    assert all(r.status_code == 200 and "x-infermesh-cache" not in r.headers for r in replies)


def test_embeddings_are_cached_too(base_url):
    body = {"model": MINILM, "inputs": [f"cache me {uuid.uuid4().hex[:8]}"]}
    first = httpx.post(f"{base_url}/v1/embed", json=body, timeout=60)
    second = httpx.post(f"{base_url}/v1/embed", json=body, timeout=60)
    assert (first.headers["x-infermesh-cache"], second.headers["x-infermesh-cache"]) == ("miss", "hit")
    assert second.json() == first.json()


def test_a_response_format_or_tools_are_part_of_the_key(base_url):
    """A structured-output or tool request is never answered from the plain request's
    entry (OpenAI's surface, where clients send these fields)."""
    import json

    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": f"A city {uuid.uuid4().hex[:6]}, as JSON with a field city."}]
    plain = client.chat.completions.with_raw_response.create(model=GEMMA, messages=messages, max_tokens=16)
    assert plain.headers["x-infermesh-cache"] == "miss"
    shaped = client.chat.completions.with_raw_response.create(
        model=GEMMA, messages=messages, max_tokens=16, response_format={"type": "json_object"}
    )
    assert shaped.headers["x-infermesh-cache"] == "miss"
    json.loads(shaped.parse().choices[0].message.content)  # the JSON answer, not the plain one
    tool = {"type": "function", "function": {"name": "city", "parameters": {"type": "object"}}}
    called = client.chat.completions.with_raw_response.create(
        model=GEMMA, messages=messages, max_tokens=16, tools=[tool], tool_choice="required"
    )
    assert called.headers["x-infermesh-cache"] == "miss" and called.parse().choices[0].message.tool_calls
    again = client.chat.completions.with_raw_response.create(
        model=GEMMA, messages=messages, max_tokens=16, response_format={"type": "json_object"}
    )
    assert again.headers["x-infermesh-cache"] == "hit"
    assert again.parse().choices[0].message.content == shaped.parse().choices[0].message.content
