"""Prometheus metrics (issue 9): every service serves the series the README documents, with
the labels it documents, and after a few requests their values are plausible."""

from __future__ import annotations

import re
import urllib.request

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.paths import ROOT

GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


def documented() -> list[tuple[list[str], list[str], list[str]]]:
    """The README's metrics table: (series names, labels, services) per row."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| series | type | labels | service |", 1)[1].split("\n\n", 1)[0]
    rows: list[tuple[list[str], list[str], list[str]]] = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([a-z_]+)`", cells[0])
        labels = [x.strip() for x in re.sub(r"\([^)]*\)", "", cells[2]).split(",") if x.strip()]
        if "as above" in labels:  # the previous row's labels, and any named after
            labels = rows[-1][1] + [x for x in labels if x != "as above"]
        rows.append((names, labels, [x.strip() for x in cells[3].split(",")]))
    return rows


def scrape(port: int) -> dict[str, object]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def family(families: dict[str, object], name: str):
    """A documented series' family (the parser names counters without `_total`)."""
    return families.get(name) or families.get(name.removesuffix("_total"))


def total(families: dict[str, object], name: str, sample: str | None = None, **labels: str) -> float:
    found = family(families, name)
    assert found is not None, f"{name} is not served"
    wanted = sample or name
    return sum(
        s.value for s in found.samples if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_every_documented_series_is_served_with_its_labels_and_plausible_values(mesh, base_url):
    generate = {"model": GEMMA, "prompt": "The sky is", "config": {"max_tokens": 4, "temperature": 0}}
    assert httpx.post(f"{base_url}/v1/generate-text", json=generate, timeout=120).status_code == 200
    with httpx.stream("POST", f"{base_url}/v1/generate-text:stream", json=generate, timeout=120) as stream:
        assert stream.status_code == 200 and list(stream.iter_lines())
    assert httpx.post(f"{base_url}/v1/embed", json={"model": MINILM, "inputs": ["a", "b"]}, timeout=60).is_success
    assert (
        httpx.post(f"{base_url}/v1/embed", json={"model": "no-such-model", "inputs": ["x"]}, timeout=60).status_code
        == 404
    )

    s = mesh.settings
    ports = {
        "router": s.router_metrics_port,
        "inference": s.inference_metrics_port,
        "registry": s.registry_metrics_port,
        "gateway": s.gateway_metrics_port,
        "openai": s.openai_metrics_port,
        "gemini": s.gemini_metrics_port,
        "vector": s.vector_metrics_port,
        "jobs": s.jobs_metrics_port,
    }
    served = {service: scrape(port) for service, port in ports.items()}
    rows = documented()
    assert len(rows) >= 25
    for names, labels, services in rows:
        if "GPU hosts only" in services:
            continue  # this machine has none (tests/integration/test_server_resources.py: absent here)
        where = list(served) if services == ["every service"] else services
        for service in where:
            for name in names:
                found = family(served[service], name)
                assert found is not None, f"{name} is documented for {service} but not served"
                for sample in found.samples:
                    missing = set(labels) - set(sample.labels) - {"le"}
                    assert not missing, f"{sample.name} on {service} lacks documented labels {missing}"

    router, inference = served["router"], served["inference"]
    # Calls by method and code, on each side of the mesh.
    embed = "/infermesh.router.v1.RouterService/Embed"
    assert total(router, "infermesh_grpc_requests_total", method=embed, code="OK") >= 1
    assert total(router, "infermesh_grpc_requests_total", method=embed, code="NOT_FOUND") >= 1
    assert (
        total(inference, "infermesh_grpc_requests_total", method="/infermesh.inference.v1.InferenceService/Embed") >= 1
    )
    # GenAI series: the generation and the stream were timed and their tokens counted.
    duration = "gen_ai_server_request_duration_seconds"
    assert total(router, duration, f"{duration}_count", gen_ai_request_model=GEMMA) >= 2
    ttft = "gen_ai_server_time_to_first_token_seconds"
    assert 0 < total(router, ttft, f"{ttft}_sum", gen_ai_request_model=GEMMA) < 120
    assert total(router, "infermesh_router_tokens_total", model=GEMMA, direction="output") >= 8
    assert total(router, "infermesh_router_model_requests_total", model=GEMMA, outcome="answered") >= 2
    # The inference server: tokens, batches, memory and load time of its models.
    assert total(inference, "infermesh_inference_tokens_total", model=GEMMA, direction="output") >= 8
    batch = "infermesh_inference_batch_size"
    assert total(inference, batch, f"{batch}_count", model=MINILM) >= 1
    assert total(inference, "infermesh_inference_model_memory_bytes", model=GEMMA) > 100e6
    assert 0 < total(inference, "infermesh_inference_model_load_seconds", model=GEMMA) < 600
    assert total(inference, "infermesh_inference_queue_depth", model=MINILM) >= 0
    # Resources of each process; the gateway has pushed Envoy a configuration.
    for service, families in served.items():
        rss = total(families, "process_resident_memory_bytes")
        assert 10e6 < rss < 16e9, f"{service}: RSS {rss}"
        assert total(families, "process_cpu_seconds_total") > 0
    assert total(served["gateway"], "infermesh_xds_version") >= 1
    assert total(served["gateway"], "infermesh_xds_responses_total") >= 1


def test_envoy_serves_its_own_stats_for_prometheus(mesh, base_url):
    assert httpx.get(f"{base_url}/v1/backend/models", timeout=30).status_code == 200
    text = httpx.get(f"http://127.0.0.1:{mesh.settings.admin_port}/stats/prometheus", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    upstream = families["envoy_cluster_upstream_rq"]
    assert any(s.labels.get("envoy_cluster_name") == "router" and s.value > 0 for s in upstream.samples)
