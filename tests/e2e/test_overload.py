"""Overload through the front door: a full queue answers HTTP 429 at once, with retry
advice, while admitted requests carry on."""

from __future__ import annotations

import json

import httpx
import pytest

from launcher.mesh import Mesh
from support.meshes import mesh_settings


@pytest.fixture(scope="module")
def small_mesh(tmp_path_factory):
    settings = mesh_settings(models=["gemma-3-270m"])
    mesh = Mesh(settings, log_dir=tmp_path_factory.mktemp("small-mesh"), env={"MAX_QUEUE_SIZE": "1"})
    mesh.start()
    try:
        mesh.wait_ready()
        yield f"http://127.0.0.1:{settings.front_door_port}"
    finally:
        mesh.stop()


def test_a_full_queue_is_a_429_with_retry_info(small_mesh):
    body = {"model": "gemma-3-270m", "prompt": "Tell me everything about the sea.", "config": {"max_tokens": 2000}}
    with httpx.stream("POST", f"{small_mesh}/v1/generate-text:stream", json=body, timeout=120) as admitted:
        lines = admitted.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["model"] == "gemma-3-270m"

        refused = httpx.post(f"{small_mesh}/v1/generate-text", json={**body, "config": {"max_tokens": 4}}, timeout=30)
        assert refused.status_code == 429, refused.text
        error = refused.json()
        assert error["details"][0]["reason"] == "QUEUE_FULL"
        retry = [d for d in error["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
        assert retry and retry[0]["retry_delay"]

        following = next(line for line in lines if line.startswith("data: "))
        assert json.loads(following[6:])["model"] == "gemma-3-270m"  # the admitted stream carries on
