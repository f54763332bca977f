"""Rate limits and token quotas (issue 8), on the production mesh (conftest.py; shared
with the authorization and tracing tests): auth on, limits in RATE_LIMITS (config.LIMITS), counters in a
real redis-server, and two gateway replicas (a gateway process and an Envoy each) in
front of one router. What a user notices: a key's requests per minute hold across both
front doors (LiteLLM's limits multiply by the replica count); a refusal is 429
(RESOURCE_EXHAUSTED over gRPC) with Retry-After and says which limit; tokens are charged
as they are produced, so a generation ends at the quota instead of running past it, and
concurrent streams are cut there; concurrency slots come back when a call ends;
per-model limits apply to that model only."""

from __future__ import annotations

import threading

import grpc
import httpx
import openai
import pytest

from infermesh.router.v1 import router_messages_pb2 as router_messages
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from support.sse import sse_events

from .config import GEMMA, LIMITS, MINILM, ProductionMesh

# Greedy gemma keeps counting far past any max_tokens used here.
COUNTING = "Count from 1 to 500, separated by commas: 1, 2, 3,"
FLUSH_TOKENS = 8  # services.router.core.quota.FLUSH_TOKENS: how far past a quota a stream may run


@pytest.fixture(scope="module")
def gateways(production_mesh: ProductionMesh) -> tuple[list[str], dict[str, str]]:
    """Both front doors' addresses and a secret for each key in LIMITS."""
    fronts = production_mesh.fronts
    secrets = {key: issue(fronts[0], production_mesh.admin, key) for key in [*LIMITS["keys"], "modeled"]}
    return fronts, secrets


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def issue(front: str, admin: str, key_id: str) -> str:
    reply = httpx.post(
        f"http://{front}/v1/registry/apiKeys",
        params={"api_key_id": key_id},
        json={"roles": ["ROLE_USER"]},
        headers=bearer(admin),
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["secret"]


def generate(front: str, secret: str, max_tokens: int) -> httpx.Response:
    body = {"model": GEMMA, "prompt": COUNTING, "config": {"max_tokens": max_tokens, "temperature": 0}}
    return httpx.post(f"http://{front}/v1/generate-text", json=body, headers=bearer(secret), timeout=120)


def assert_refused_by(reply: httpx.Response, limit: str) -> dict:
    """A 429 that says which limit refused and when to come back; its error body."""
    assert reply.status_code == 429, reply.text
    assert 1 <= int(reply.headers["retry-after"]) <= 60
    error = reply.json()
    assert limit in error["message"]
    info = next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "RATE_LIMIT_EXCEEDED" and info["metadata"]["limit"] == limit
    return info


def test_requests_per_minute_hold_across_two_gateway_replicas(gateways):
    fronts, secrets = gateways
    key = secrets["rpm"]
    replies = [
        httpx.get(f"http://{fronts[i % 2]}/v1/registry/models", headers=bearer(key), timeout=30) for i in range(200)
    ]
    allowed = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    print(f"\nrequests per minute across two gateways: {len(allowed)} of 200 allowed for a limit of 60")
    assert 57 <= len(allowed) <= 63, f"{len(allowed)} of 200 allowed with a limit of 60 a minute"
    assert {r.status_code for r in refused} == {429}
    # Each front door let some through: one count, not one per replica.
    assert {str(r.url.port) for r in allowed} == {f.split(":")[1] for f in fronts}
    assert refused[-1].headers["x-infermesh-ratelimit"] == "requests_per_minute"
    assert_refused_by(refused[-1], "requests_per_minute")
    # gRPC callers get RESOURCE_EXHAUSTED, on either front door.
    with grpc.insecure_channel(fronts[1]) as channel:
        with pytest.raises(grpc.RpcError) as error:
            router_grpc.RouterServiceStub(channel).Embed(
                router_messages.EmbedRequest(model=MINILM, inputs=["hi"]),
                metadata=list(bearer(key).items()),
                timeout=30,
            )
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_generation_ends_at_the_token_quota_and_the_next_request_is_refused(gateways):
    fronts, secrets = gateways
    key = secrets["tokens"]  # 120 tokens a minute
    first = generate(fronts[0], key, 64)
    assert first.status_code == 200, first.text
    spent = int(first.json()["usage"]["total_tokens"])
    assert 64 < spent < 120
    # Asks for 64 more, has fewer left: the answer stops at the quota, as at max_tokens.
    second = generate(fronts[1], key, 64).json()
    assert int(second["usage"]["output_tokens"]) <= 120 - spent
    assert second["finish_reason"] == "FINISH_REASON_LENGTH"
    # The quota is spent: refused at the gateway, before any model is asked.
    refused = generate(fronts[0], key, 8)
    assert refused.headers["x-infermesh-ratelimit"] == "tokens_per_minute"
    assert_refused_by(refused, "tokens_per_minute")


def test_concurrent_streams_are_cut_when_they_spend_the_quota_together(gateways):
    fronts, secrets = gateways
    key = secrets["streams"]  # 100 tokens a minute; each stream alone would take 100
    body = {"model": GEMMA, "prompt": COUNTING, "config": {"max_tokens": 200, "temperature": 0}}
    results: dict[int, list[dict]] = {}

    def stream(index: int) -> None:
        url = f"http://{fronts[index]}/v1/generate-text:stream"
        with httpx.stream("POST", url, json=body, headers=bearer(key), timeout=120) as reply:
            assert reply.status_code == 200
            results[index] = sse_events(reply)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cut = [events[-1]["error"] for events in results.values() if events and "error" in events[-1]]
    assert cut, "neither stream was cut at the quota"
    assert all(error["details"][0]["reason"] == "RATE_LIMIT_EXCEEDED" for error in cut)
    assert "incomplete" in cut[0]["message"]
    # Streamed text chunks in all: within the quota, give or take a flush per stream.
    chunks = sum(1 for events in results.values() for e in events if e.get("text"))
    print(f"\ntwo streams on a 100-token quota: {chunks} text chunks in all, {len(cut)} cut at the quota")
    assert chunks <= 100 + 2 * FLUSH_TOKENS
    assert_refused_by(generate(fronts[0], key, 8), "tokens_per_minute")


def test_a_concurrency_slot_is_held_while_a_call_runs_and_returned_when_it_ends(gateways):
    fronts, secrets = gateways
    key = secrets["single"]  # one call at a time
    body = {"model": GEMMA, "prompt": COUNTING, "config": {"max_tokens": 48, "temperature": 0}}
    url = f"http://{fronts[0]}/v1/generate-text:stream"
    with httpx.stream("POST", url, json=body, headers=bearer(key), timeout=120) as running:
        assert running.status_code == 200
        lines = running.iter_lines()
        next(line for line in lines if line.startswith("data:"))  # it is generating
        info = assert_refused_by(generate(fronts[1], key, 8), "concurrent")
        assert info["metadata"]["api_key"] == "apiKeys/single"
        for _ in lines:  # to the end
            pass
    assert generate(fronts[1], key, 8).status_code == 200


def test_a_per_model_limit_applies_to_that_model_only(gateways):
    fronts, secrets = gateways
    key = secrets["modeled"]  # no limits of its own; all-minilm-l6-v2: 3 requests a minute
    embed = {"model": MINILM, "inputs": ["hello"]}
    for i in range(3):
        reply = httpx.post(f"http://{fronts[i % 2]}/v1/embed", json=embed, headers=bearer(key), timeout=60)
        assert reply.status_code == 200, reply.text
    refused = httpx.post(f"http://{fronts[1]}/v1/embed", json=embed, headers=bearer(key), timeout=60)
    info = assert_refused_by(refused, "requests_per_minute")
    assert info["metadata"]["model"] == MINILM
    assert generate(fronts[0], key, 4).status_code == 200  # other models: unaffected


def test_a_refusal_on_the_openai_paths_is_an_openai_rate_limit_error_and_native_ones_are_not(gateways):
    fronts, secrets = gateways
    key = secrets["sdk"]  # 2 requests a minute
    client = openai.OpenAI(base_url=f"http://{fronts[0]}/v1", api_key=key, max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} >= {GEMMA, MINILM}
    client.models.retrieve(GEMMA)
    with pytest.raises(openai.RateLimitError) as error:
        client.models.list()
    assert error.value.type == "rate_limit_error" and error.value.code == "rate_limit_exceeded"
    assert "requests_per_minute" in error.value.body["message"]
    assert error.value.message == f"Error code: 429 - {error.value.body['message']}"
    assert error.value.body["details"]["metadata"]["limit"] == "requests_per_minute"
    assert 1 <= int(error.value.response.headers["retry-after"]) <= 60
    assert error.value.response.headers["x-infermesh-ratelimit"] == "requests_per_minute"
    # The same refusal on the native REST API, on the other front door: google.rpc.Status.
    native = httpx.get(f"http://{fronts[1]}/v1/registry/models", headers=bearer(key), timeout=30)
    assert_refused_by(native, "requests_per_minute")
