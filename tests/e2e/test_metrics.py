"""Prometheus metrics: each service counts its calls by method and status code."""

from __future__ import annotations

import httpx


def test_calls_are_counted_by_method_and_code(mesh, base_url):
    httpx.post(f"{base_url}/v1/embed", json={"model": "all-minilm-l6-v2", "inputs": ["count me"]}, timeout=60)
    httpx.post(f"{base_url}/v1/embed", json={"model": "no-such-model", "inputs": ["x"]}, timeout=60)
    router = httpx.get(f"http://127.0.0.1:{mesh.settings.router_metrics_port}/metrics", timeout=10).text
    inference = httpx.get(f"http://127.0.0.1:{mesh.settings.inference_metrics_port}/metrics", timeout=10).text
    assert 'infermesh_grpc_requests_total{code="OK",method="/infermesh.router.v1.RouterService/Embed"}' in router
    assert 'infermesh_grpc_requests_total{code="NOT_FOUND",method="/infermesh.router.v1.RouterService/Embed"}' in router
    assert (
        'infermesh_grpc_requests_total{code="OK",method="/infermesh.inference.v1.InferenceService/Embed"}' in inference
    )
    assert "infermesh_grpc_request_duration_seconds_bucket" in inference
