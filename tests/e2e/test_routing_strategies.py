"""`auto` routing through the front door: the router picks among the registry's models
that can do the task and are deployed on a live backend, by quality rank, by price, by
measured latency or by load; the ones not picked are the fallbacks, in the same order."""

from __future__ import annotations

import uuid

import httpx

from support.polling import eventually

NO_CACHE = {"cache-control": "no-cache"}  # each request must really be routed


def embed(base_url: str, model: str) -> httpx.Response:
    body = {"model": model, "inputs": [f"route me {uuid.uuid4().hex[:6]}"]}
    return httpx.post(f"{base_url}/v1/embed", json=body, headers=NO_CACHE, timeout=60)


def set_price(base_url: str, model: str, input_price: float) -> None:
    reply = httpx.patch(
        f"{base_url}/v1/registry/models/{model}",
        params={"update_mask": "pricing"},
        json={"pricing": {"input_per_1k_tokens": input_price, "currency": "USD"}},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def until_model(base_url: str, requested: str, expected: str) -> httpx.Response:
    """The router learns of registry changes from its feed: ask until it has."""
    return eventually(
        lambda: embed(base_url, requested),
        until=lambda reply: reply.status_code == 200 and reply.json()["model"] == expected,
        timeout=30,
        what=f"{requested} answered by {expected}",
    )


def test_auto_picks_by_quality_or_by_price_among_models_that_can_do_the_task(base_url):
    # Embedding models here: all-minilm-l6-v2 (local, quality rank 1, free) and the
    # Gemini stand-in's gemini-embedding-test (unranked, free).
    best = until_model(base_url, "auto", "all-minilm-l6-v2")  # auto = auto:quality
    assert (
        best.headers["x-infermesh-fallback"] == "false"
        and best.headers["x-infermesh-served-by"] == "inference/all-minilm-l6-v2"
    )
    assert embed(base_url, "auto:cost").json()["model"] == "all-minilm-l6-v2"  # a tie on price: quality decides
    set_price(base_url, "all-minilm-l6-v2", 0.01)
    try:
        cheapest = until_model(base_url, "auto:cost", "gemini-embedding-test")
        assert cheapest.headers["x-infermesh-served-by"] == "gemini"
        assert embed(base_url, "auto:quality").json()["model"] == "all-minilm-l6-v2"
    finally:
        set_price(base_url, "all-minilm-l6-v2", 0.0)


def test_latency_and_load_strategies_answer_with_a_model_that_can_do_the_task(base_url):
    for strategy in ("latency", "least-busy"):
        reply = embed(base_url, f"auto:{strategy}")
        assert reply.status_code == 200 and reply.json()["model"] in {"all-minilm-l6-v2", "gemini-embedding-test"}


def test_unknown_strategies_are_refused_naming_the_known_ones(base_url):
    reply = embed(base_url, "auto:fastest")
    assert reply.status_code == 400 and "auto:least-busy" in reply.json()["message"]
