"""Usage, cost and context limits through the front door (issue 6): the tokens and cost
the router meters, streamed answers included, add up to exactly what the individual
responses reported; the usage API and the GenAI-convention Prometheus series say the
same; requests that fall back or fail are counted for the model asked for; a prompt too
long for a model's context window falls to a fallback with a larger one.

The priced models here are answered by the Gemini adapter against the session's Gemini
stand-in (no internet; see conftest.gemini_stand_in), whose usage is deterministic."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from support.meshes import register_model
from support.metrics import metric
from support.provider_stand_ins import gemini_error

GEMMA = "gemma-3-270m"
NO_CACHE = {"cache-control": "no-cache"}
PRICE = {"input_per_1k_tokens": 0.5, "output_per_1k_tokens": 1.5, "currency": "USD"}


def generate(base_url: str, body: dict, headers=NO_CACHE) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/generate-text", json=body, headers=headers, timeout=120)


def stream(base_url: str, body: dict) -> list[dict]:
    """A streamed generation over REST (server-sent events), as its chunks."""
    with httpx.stream("POST", f"{base_url}/v1/generate-text:stream", json=body, headers=NO_CACHE, timeout=120) as reply:
        assert reply.status_code == 200, reply.read()
        return [json.loads(line[5:]) for line in reply.iter_lines() if line.startswith("data:")]


def model_metrics(base_url: str, model: str) -> dict:
    reply = httpx.get(f"{base_url}/v1/metrics/models/{model}", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_metered_tokens_and_cost_are_the_sum_of_the_answers_streamed_ones_included(base_url, mesh):
    router = mesh.settings.router_metrics_port
    model = f"priced-{uuid.uuid4().hex[:6]}"
    register_model(base_url, model, "gemini", "gemini-test", pricing=PRICE)
    usages = []
    for prompt in ("one two three", "alpha beta gamma delta epsilon", "a b"):
        reply = generate(base_url, {"model": model, "prompt": prompt, "config": {"max_tokens": 3}})
        assert reply.status_code == 200, reply.text
        usages.append(reply.json()["usage"])
    for prompt in ("stream me please now", "x y z w v u"):
        chunks = stream(base_url, {"model": model, "prompt": prompt, "config": {"max_tokens": 4}})
        assert "".join(c["text"] for c in chunks).split() == prompt.split()[:4]
        usages.append(chunks[-1]["usage"])  # usage rides on the last chunk
    # A repeated request from the cache costs nothing and is counted as a hit.
    body = {"model": model, "prompt": "cached words", "config": {"max_tokens": 2}}
    usages.append(generate(base_url, body, headers={}).json()["usage"])
    assert generate(base_url, body, headers={}).headers["x-infermesh-cache"] == "hit"

    input_tokens = sum(u["input_tokens"] for u in usages)
    output_tokens = sum(u["output_tokens"] for u in usages)
    cost = (input_tokens * 0.5 + output_tokens * 1.5) / 1000
    assert input_tokens > 0 and output_tokens > 0

    seen = model_metrics(base_url, model)
    total = seen["total"]
    assert (total["requests"], total["cache_hits"], total["errors"], total["fallbacks"]) == ("7", "1", "0", "0")
    assert (int(total["input_tokens"]), int(total["output_tokens"])) == (input_tokens, output_tokens)
    assert total["cost"] == pytest.approx(cost) and total["currency"] == "USD"
    assert total["cache_hit_rate"] == pytest.approx(1 / 7)
    assert [v["version"] for v in seen["versions"]] == ["v1"]
    assert 0 < total["latency"]["p50_seconds"] <= total["latency"]["p99_seconds"] < 60
    assert total["time_to_first_token"]["p50_seconds"] > 0  # the two streams

    summary = httpx.get(
        f"{base_url}/v1/usage", params={"period": "USAGE_PERIOD_MINUTE", "model": model}, timeout=30
    ).json()
    assert sum(int(b["requests"]) for b in summary["buckets"]) == 6  # answers produced: the hit excluded
    assert (int(summary["total_input_tokens"]), int(summary["total_output_tokens"])) == (input_tokens, output_tokens)
    assert summary["total_cost"]["USD"] == pytest.approx(cost)

    # Prometheus says the same, under the mesh's names and the GenAI conventions'.
    assert metric(router, "infermesh_router_tokens_total", model=model, direction="input") == input_tokens
    assert metric(router, "infermesh_router_tokens_total", model=model, direction="output") == output_tokens
    assert metric(router, "infermesh_router_cost_total", model=model, currency="USD") == pytest.approx(cost)
    genai = {"gen_ai_response_model": model, "gen_ai_provider_name": "gemini"}
    assert metric(router, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) == input_tokens
    assert metric(router, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **genai) == output_tokens
    assert metric(router, "gen_ai_server_time_to_first_token_seconds_count", **genai) == 2
    assert metric(router, "gen_ai_server_request_duration_seconds_count", gen_ai_request_model=model) == 7


def test_fallbacks_and_errors_are_counted_for_the_model_asked_for(base_url, mesh, gemini_stand_in):
    model = f"shaky-{uuid.uuid4().hex[:6]}"
    register_model(base_url, model, "gemini", "gemini-test", fallbacks=[GEMMA], pricing=PRICE)
    assert generate(base_url, {"model": model, "prompt": "warm up", "config": {"max_tokens": 2}}).status_code == 200
    gemini_stand_in.script.extend([gemini_error(503, "UNAVAILABLE", "overloaded")] * 3)  # the adapter's 3 tries
    fell_back = generate(base_url, {"model": model, "prompt": "the sea is", "config": {"max_tokens": 3}})
    assert fell_back.json()["model"] == GEMMA and fell_back.headers["x-infermesh-fallback"] == "true"
    gemini_stand_in.script.extend([gemini_error(503, "UNAVAILABLE", "overloaded")] * 3)
    failed = generate(
        base_url,
        {"model": model, "prompt": "the sea is", "config": {"max_tokens": 3}, "routing": {"use_fallbacks": False}},
    )
    assert failed.status_code == 503

    total = model_metrics(base_url, model)["total"]
    assert (total["requests"], total["fallbacks"], total["errors"]) == ("3", "1", "1")
    assert total["fallback_rate"] == pytest.approx(1 / 3) and total["error_rate"] == pytest.approx(1 / 3)
    # Tokens and cost are the answering model's: only the warm-up was this model's own.
    assert int(total["output_tokens"]) == 2


def test_a_prompt_too_long_for_the_context_window_falls_to_a_larger_window(base_url, gemini_stand_in):
    suffix = uuid.uuid4().hex[:6]
    small, mid, large = f"ctx-small-{suffix}", f"ctx-mid-{suffix}", f"ctx-large-{suffix}"
    # The local model's real window here is 8,192 tokens (the inference server's cap).
    register_model(base_url, small, "local", GEMMA, fallbacks=[mid, large], parameters={"context_window_tokens": 8192})
    register_model(base_url, mid, "gemini", "gemini-mid", parameters={"context_window_tokens": 4096})
    register_model(base_url, large, "gemini", "gemini-large", parameters={"context_window_tokens": 1_000_000})
    long_prompt = "word " * 9000

    refused = generate(
        base_url,
        {"model": small, "prompt": long_prompt, "config": {"max_tokens": 4}, "routing": {"use_fallbacks": False}},
    )
    assert refused.status_code == 400
    assert "exceeds the context length of 8192 tokens" in refused.json()["message"]

    seen = len(gemini_stand_in.seen)
    answered = generate(base_url, {"model": small, "prompt": long_prompt, "config": {"max_tokens": 4}})
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"] == large and answered.headers["x-infermesh-fallback"] == "true"
    # The 4,096-token fallback was skipped: it could not have fitted what 8,192 did not.
    assert [s.path.split("/models/")[1].split(":")[0] for s in gemini_stand_in.seen[seen:]] == ["gemini-large"]

    # Known before any backend is asked: max_tokens alone fills the window.
    no_room = generate(
        base_url, {"model": small, "prompt": "hi", "config": {"max_tokens": 8192}, "routing": {"use_fallbacks": False}}
    )
    assert no_room.status_code == 400 and "context window of 8192 tokens" in no_room.json()["message"]
