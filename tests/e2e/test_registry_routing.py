"""The router resolves models from the registry, end to end: an operator deploys the
llama.cpp version of Gemma with REST alone, tries it by name (`model@version`) before it
gets traffic, then shifts the traffic to it; the inference server's and the router's own
metrics show which backend model answered, at what price."""

from __future__ import annotations

import httpx

from support.metrics import metric
from support.polling import eventually

GEMMA = "gemma-3-270m"
# These tests count work done by backends: they bypass the router's response cache.
NO_CACHE = {"cache-control": "no-cache"}


def generate(base_url: str, model: str) -> dict:
    reply = httpx.post(
        f"{base_url}/v1/generate-text",
        headers=NO_CACHE,
        json={"model": model, "prompt": "Paris is", "config": {"max_tokens": 4}},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def known_to_the_router(base_url: str, body: dict) -> httpx.Response:
    """The first answer other than 404: the router learns of new models from the registry's feed."""
    return eventually(
        lambda: httpx.post(f"{base_url}/v1/generate-text", headers=NO_CACHE, json=body, timeout=120),
        until=lambda reply: reply.status_code != 404,
        interval=0.2,
    )


def set_weight(base_url: str, deployment: str, weight: int) -> None:
    reply = httpx.patch(
        f"{base_url}/v1/registry/models/{GEMMA}/deployments/{deployment}",
        params={"update_mask": "traffic_weight"},
        json={"traffic_weight": weight},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def test_an_operator_shifts_traffic_to_a_new_version_with_rest_alone(base_url, mesh):
    inference, router = mesh.settings.inference_metrics_port, mesh.settings.router_metrics_port
    created = httpx.post(
        f"{base_url}/v1/registry/models/{GEMMA}/deployments",
        params={"deployment_id": "llamacpp"},
        json={"version": f"models/{GEMMA}/versions/q4-k-m", "backend": "inference", "traffic_weight": 0},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    try:
        # By name, before it has traffic. (The router learns of the deployment from the feed.)
        llama_before = metric(
            inference, "infermesh_inference_tokens_total", model="gemma-3-270m-llamacpp", direction="output"
        )
        by_name = {"model": f"{GEMMA}@q4-k-m", "prompt": "Paris is", "config": {"max_tokens": 4}}
        reply = eventually(
            lambda: httpx.post(f"{base_url}/v1/generate-text", headers=NO_CACHE, json=by_name, timeout=120),
            until=lambda reply: reply.status_code == 200,
            interval=0.2,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == f"{GEMMA}@q4-k-m"
        assert (
            metric(inference, "infermesh_inference_tokens_total", model="gemma-3-270m-llamacpp", direction="output")
            > llama_before
        )
        assert metric(router, "infermesh_router_tokens_total", model=GEMMA, version="q4-k-m", direction="output") > 0

        # Plain requests still go to the default deployment...
        bf16_before = metric(inference, "infermesh_inference_tokens_total", model=GEMMA, direction="output")
        assert generate(base_url, GEMMA)["model"] == GEMMA
        assert metric(inference, "infermesh_inference_tokens_total", model=GEMMA, direction="output") > bf16_before

        # ...until the traffic moves.
        set_weight(base_url, "llamacpp", 100)
        set_weight(base_url, "local", 0)

        def answered_by_llamacpp() -> bool:
            llama_before = metric(
                inference, "infermesh_inference_tokens_total", model="gemma-3-270m-llamacpp", direction="output"
            )
            generate(base_url, GEMMA)
            return (
                metric(inference, "infermesh_inference_tokens_total", model="gemma-3-270m-llamacpp", direction="output")
                > llama_before
            )

        moved = eventually(answered_by_llamacpp, interval=0, what="the traffic moved to llama.cpp")
        assert moved
    finally:
        set_weight(base_url, "local", 100)
        httpx.delete(f"{base_url}/v1/registry/models/{GEMMA}/deployments/llamacpp", timeout=30)


def test_a_request_over_the_registry_output_limit_is_refused_naming_it(base_url):
    reply = httpx.post(
        f"{base_url}/v1/generate-text",
        headers=NO_CACHE,
        json={"model": GEMMA, "prompt": "x", "config": {"max_tokens": 9000}},
        timeout=30,
    )
    assert reply.status_code == 400 and "8192" in reply.json()["message"], reply.text


def test_unknown_models_and_versions_are_404_with_what_is_available(base_url):
    reply = httpx.post(
        f"{base_url}/v1/generate-text", headers=NO_CACHE, json={"model": "no-such", "prompt": "x"}, timeout=30
    )
    assert reply.status_code == 404 and GEMMA in reply.json()["message"]
    reply = httpx.post(
        f"{base_url}/v1/generate-text", headers=NO_CACHE, json={"model": f"{GEMMA}@v9", "prompt": "x"}, timeout=30
    )
    assert reply.status_code == 404 and reply.json()["details"][0]["reason"] == "VERSION_NOT_FOUND"


def test_cost_is_metered_at_the_registry_price(base_url, mesh):
    router = mesh.settings.router_metrics_port
    priced = {"pricing": {"input_per_1k_tokens": 0.5, "output_per_1k_tokens": 1.5, "currency": "EUR"}}
    reply = httpx.patch(
        f"{base_url}/v1/registry/models/{GEMMA}", params={"update_mask": "pricing"}, json=priced, timeout=30
    )
    assert reply.status_code == 200, reply.text
    try:

        def metered() -> tuple[float, dict] | None:  # once the router has the new price from the feed
            before = metric(router, "infermesh_router_cost_total", model=GEMMA, currency="EUR")
            usage = generate(base_url, GEMMA)["usage"]
            spent = metric(router, "infermesh_router_cost_total", model=GEMMA, currency="EUR") - before
            return (spent, usage) if spent > 0 else None

        spent, usage = eventually(metered, interval=0, what="a cost in EUR metered")
        expected = (usage["input_tokens"] * 0.5 + usage["output_tokens"] * 1.5) / 1000
        assert abs(spent - expected) < 1e-9, (spent, usage)
    finally:
        httpx.patch(
            f"{base_url}/v1/registry/models/{GEMMA}",
            params={"update_mask": "pricing"},
            json={"pricing": {"currency": "USD"}},
            timeout=30,
        )


def register_offline_model(base_url: str, model_id: str, fallbacks: list[str]) -> None:
    """A model whose only deployment is on a backend this mesh does not have."""
    model = {"provider": "local", "capabilities": ["text-generation"], "fallbacks": fallbacks}
    steps = [
        ("/v1/registry/models", {"model_id": model_id}, model),
        (
            f"/v1/registry/models/{model_id}/versions",
            {"model_version_id": "v1"},
            {"runtime": {"runtime": "transformers", "backend_model": GEMMA}},
        ),
        (f"/v1/registry/models/{model_id}/deployments", {"deployment_id": "away"}, {"backend": "offline-pool"}),
    ]
    for path, params, body in steps:
        reply = httpx.post(f"{base_url}{path}", params=params, json=body, timeout=30)
        assert reply.status_code == 200, reply.text


def test_a_model_that_cannot_answer_falls_back_along_its_registry_chain(base_url, mesh):
    router = mesh.settings.router_metrics_port
    register_offline_model(base_url, "primary-offline", [f"models/{GEMMA}"])
    register_offline_model(base_url, "lonely-offline", [])
    before = metric(router, "infermesh_router_fallbacks_total", model="primary-offline", fallback=GEMMA)
    body = {"model": "primary-offline", "prompt": "Paris is", "config": {"max_tokens": 4}}
    reply = known_to_the_router(base_url, body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == GEMMA  # the answer says who answered
    # Streams fail over too, before their first chunk.
    with httpx.stream(
        "POST",
        f"{base_url}/v1/generate-text:stream",
        headers=NO_CACHE,
        json={"model": "primary-offline", "prompt": "Paris is", "config": {"max_tokens": 4}},
        timeout=120,
    ) as streamed:
        assert streamed.status_code == 200
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events and all(f'"model":"{GEMMA}"' in e for e in events)
    assert metric(router, "infermesh_router_fallbacks_total", model="primary-offline", fallback=GEMMA) == before + 2
    # With nothing to fall back to, the caller learns why.
    alone = httpx.post(
        f"{base_url}/v1/generate-text",
        headers=NO_CACHE,
        json={"model": "lonely-offline", "prompt": "x", "config": {"max_tokens": 4}},
        timeout=30,
    )
    assert alone.status_code == 503 and alone.json()["details"][0]["reason"] == "MODEL_NOT_DEPLOYED"


def test_responses_say_who_answered_and_fallbacks_can_be_refused(base_url):
    register_offline_model(base_url, "picky-offline", [f"models/{GEMMA}"])
    body = {"model": "picky-offline", "prompt": "Paris is", "config": {"max_tokens": 4}}
    reply = known_to_the_router(base_url, body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-infermesh-model"] == GEMMA
    assert reply.headers["x-infermesh-version"] == "bf16"
    assert reply.headers["x-infermesh-served-by"] == f"inference/{GEMMA}"  # the pool of replicas with it ready
    assert reply.headers["x-infermesh-fallback"] == "true"
    with httpx.stream(
        "POST", f"{base_url}/v1/generate-text:stream", headers=NO_CACHE, json=body, timeout=120
    ) as streamed:
        assert streamed.headers["x-infermesh-fallback"] == "true" and streamed.headers["x-infermesh-model"] == GEMMA
    refused = httpx.post(
        f"{base_url}/v1/generate-text", headers=NO_CACHE, json={**body, "routing": {"use_fallbacks": False}}, timeout=30
    )
    assert refused.status_code == 503 and refused.json()["details"][0]["reason"] == "MODEL_NOT_DEPLOYED"
    direct = httpx.post(
        f"{base_url}/v1/generate-text",
        headers=NO_CACHE,
        json={"model": GEMMA, "prompt": "x", "config": {"max_tokens": 2}},
        timeout=60,
    )
    assert direct.headers["x-infermesh-fallback"] == "false" and direct.headers["x-infermesh-model"] == GEMMA
