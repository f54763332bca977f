"""An inference server's resource use over REST through the front door, beside the
backend model paths it must not clash with, and on the server's own /metrics."""

from __future__ import annotations

import httpx
import torch

from support.metrics import metric

MB = 2**20


def test_server_resources_are_json_over_rest(base_url):
    reply = httpx.get(f"{base_url}/v1/backend/resources", timeout=30)
    assert reply.status_code == 200, reply.text
    resources = reply.json()
    assert int(resources["resident_memory_bytes"]) > 50 * MB  # int64: a JSON string
    assert int(resources["memory_total_bytes"]) > int(resources["resident_memory_bytes"])
    assert int(resources["model_memory_bytes"]) > 0
    assert resources["cpu_count"] >= 1 and resources["thread_count"] >= 1
    assert resources["cpu_cores_used"] >= 0 and resources["cpu_window_seconds"] > 0
    assert resources["device"] and resources["read_time"]
    if not torch.cuda.is_available():
        assert resources.get("accelerators", []) == []
    # The model paths beside it still answer as before.
    assert httpx.get(f"{base_url}/v1/backend/models", timeout=30).json()["models"]


def test_the_inference_server_exports_its_process_figures(mesh):
    port = mesh.settings.inference_metrics_port
    assert metric(port, "process_resident_memory_bytes") > 50 * MB
    assert metric(port, "process_cpu_seconds_total") > 0
    if not torch.cuda.is_available():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "infermesh_accelerator_" not in text
