"""Model lifecycle over REST through the front door (AIP-style custom methods and
google.longrunning operations), next to the OpenAI model paths it must not clash with."""

from __future__ import annotations

import httpx

from support.polling import eventually


def wait_done(base_url: str, operation: dict) -> dict:
    if operation.get("done"):
        return operation
    url = f"{base_url}/v1/{operation['name']}"
    return eventually(
        lambda: httpx.get(url, timeout=30).json(), until=lambda o: o.get("done"), timeout=300, interval=0.2
    )


def test_unload_then_load_a_model_over_rest(base_url):
    started = httpx.post(f"{base_url}/v1/backend/models/all-minilm-l6-v2:unload", json={}, timeout=60)
    assert started.status_code == 200, started.text
    done = wait_done(base_url, started.json())
    assert done["response"]["state"] == "MODEL_STATE_UNLOADED"
    assert done["metadata"]["verb"] == "unload"

    status = httpx.get(f"{base_url}/v1/backend/models/all-minilm-l6-v2", timeout=30).json()
    assert status["state"] == "MODEL_STATE_UNLOADED"

    # The OpenAI path for the same id still answers with the OpenAI shape.
    assert httpx.get(f"{base_url}/v1/models/all-minilm-l6-v2", timeout=30).json()["object"] == "model"

    done = wait_done(
        base_url, httpx.post(f"{base_url}/v1/backend/models/all-minilm-l6-v2:load", json={}, timeout=60).json()
    )
    assert done["response"]["state"] == "MODEL_STATE_READY"
    assert int(done["response"]["memory_bytes"]) > 0


def test_lifecycle_errors_are_json_with_the_right_status(base_url):
    reply = httpx.post(f"{base_url}/v1/backend/models/no-such-model:load", json={}, timeout=30)
    assert reply.status_code == 404 and reply.json()["details"][0]["reason"] == "MODEL_NOT_FOUND"
    reply = httpx.get(f"{base_url}/v1/operations/does-not-exist", timeout=30)
    assert reply.status_code == 404


def test_the_backend_model_list_is_reachable_over_rest(base_url):
    reply = httpx.get(f"{base_url}/v1/backend/models", timeout=30)
    assert reply.status_code == 200, reply.text
    states = {m["model_id"]: m["state"] for m in reply.json()["models"]}
    assert states["gemma-3-270m"] == "MODEL_STATE_READY"
    assert "gemma-3-270m-llamacpp" in states and "all-minilm-l6-v2-onnx" in states  # loadable on demand
