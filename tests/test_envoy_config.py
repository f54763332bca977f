"""The Envoy bootstrap rendered from the templates and a catalog: checked by the real
Envoy binary (--mode validate) and against a golden file, so config changes are reviewed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from conftest import BIN, ROOT
from infermesh_gateway import envoy_config
from infermesh_runtime.catalog import EmbeddedCatalog, ServiceInstance
from infermesh_runtime.telemetry import otlp_endpoint

GOLDEN = ROOT / "tests" / "golden" / "envoy.yaml"
DESCRIPTOR = ROOT / "build" / "infermesh.binpb"


def catalog() -> EmbeddedCatalog:
    return EmbeddedCatalog.of(
        [
            ServiceInstance("router", "router", "127.0.0.1", 50051),
            ServiceInstance("inference-0", "inference", "127.0.0.1", 50052, ("gemma-3-270m", "all-minilm-l6-v2")),
            ServiceInstance("registry", "registry", "127.0.0.1", 50053),
            ServiceInstance("openai", "provider", "127.0.0.1", 50061, ("gpt-4o-mini",)),
        ]
    )


def rendered() -> dict:
    return envoy_config.render(catalog(), Path("/infermesh/build/infermesh.binpb"), envoy_config.EnvoyPorts())


def test_rendered_config_matches_golden_file():
    text = yaml.safe_dump(rendered(), sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "Envoy config changed: review it, then rerun with UPDATE_GOLDEN=1"


def envoy_validates(config: dict, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    envoy_config.write(config, path)
    result = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration" in (result.stdout + result.stderr) and "OK" in (result.stdout + result.stderr)


def test_real_envoy_accepts_the_static_config_with_every_route_and_cluster(tmp_path):
    envoy_validates(envoy_config.render(catalog(), DESCRIPTOR, envoy_config.EnvoyPorts()), tmp_path)


def test_real_envoy_accepts_the_bootstrap_that_takes_routes_and_clusters_over_ads(tmp_path):
    config = envoy_config.render_ads(DESCRIPTOR, envoy_config.EnvoyPorts(), ("127.0.0.1", 18000))
    envoy_validates(config, tmp_path)
    assert [c["name"] for c in config["static_resources"]["clusters"]] == ["xds_control_plane"]
    assert config["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    for listener in config["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert manager["rds"]["route_config_name"] == listener["name"] and "route_config" not in manager


def test_every_backend_gets_a_cluster_health_checked_on_its_service_and_a_header_route():
    config = rendered()
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    pools = {"inference/gemma-3-270m", "inference/all-minilm-l6-v2"}
    assert set(clusters) == {"router", "inference-0", "registry", "openai", *pools}
    # A pool is the replicas with the model ready, each checked on that model's health.
    gemma = clusters["inference/gemma-3-270m"]
    assert gemma["health_checks"][0]["grpc_health_check"]["service_name"] == (
        "infermesh.inference.v1.InferenceService/gemma-3-270m"
    )
    assert len(gemma["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 1
    registry = clusters["registry"]["health_checks"][0]["grpc_health_check"]["service_name"]
    assert registry == "infermesh.registry.v1.RegistryService"
    inference = clusters["inference-0"]
    assert (
        inference["health_checks"][0]["grpc_health_check"]["service_name"] == "infermesh.inference.v1.InferenceService"
    )
    assert inference["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
    assert "http2_protocol_options" in str(inference["typed_extension_protocol_options"])
    mesh = next(x for x in config["static_resources"]["listeners"] if x["name"] == "mesh")
    routes = mesh["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["headers"][0] == {"name": "x-infermesh-backend", "string_match": {"exact": "inference-0"}}
    assert routes[0]["route"]["cluster"] == "inference-0"
    retries = {r["route"]["cluster"]: r["route"]["retry_policy"]["retry_on"] for r in routes}
    # Envoy retries UNAVAILABLE from an inference server, but not from a provider adapter,
    # which has already retried the provider itself.
    assert "unavailable" in retries["inference-0"] and "unavailable" not in retries["openai"]


def test_front_door_transcodes_the_public_services_with_json_errors_and_sse():
    front = next(x for x in rendered()["static_resources"]["listeners"] if x["name"] == "front_door")
    manager = front["filter_chains"][0]["filters"][0]["typed_config"]
    transcoder = manager["http_filters"][1]["typed_config"]
    assert manager["http_filters"][0]["typed_config"]["max_request_bytes"] == 32 * 1024 * 1024
    assert transcoder["services"] == [
        "infermesh.router.v1.RouterService",
        "infermesh.router.v1.UsageService",
        "infermesh.openai.v1.OpenAIService",
        "infermesh.inference.v1.ModelService",
        "infermesh.registry.v1.RegistryService",
        "infermesh.vector.v1.VectorService",
        "google.longrunning.Operations",
    ]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    # Model lifecycle goes to the inference server, the registry API to the registry
    # (with no route timeout: a watch lasts as long as its client); everything else to the router.
    assert routes[0]["match"]["prefix"] == "/infermesh.inference.v1.ModelService/"
    assert {r["route"]["cluster"] for r in routes[:-3]} == {"inference-0"}
    assert routes[-3]["match"] == {"prefix": "/infermesh.registry.v1.RegistryService/"}
    assert routes[-3]["route"]["cluster"] == "registry" and routes[-3]["route"]["timeout"] == "0s"
    # Reflection (a bidirectional stream) skips the whole-body buffer, which would wait forever.
    assert routes[-2]["match"] == {"prefix": "/grpc.reflection."} and routes[-2]["route"]["cluster"] == "router"
    assert routes[-2]["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] is True
    assert routes[-1]["match"] == {"prefix": "/"} and routes[-1]["route"]["cluster"] == "router"
    # Streams outlive Envoy's 15 s default route timeout.
    assert routes[-1]["route"]["timeout"] == "0s"

    # Rate limits: the caller's requests per minute on every route but reflection, and on
    # the router's (where tokens are spent) whether the caller has tokens left.
    def limited(route: dict) -> list[str]:
        return [
            policy["actions"][0]["generic_key"]["descriptor_value"] for policy in route["route"].get("rate_limits", [])
        ]

    assert limited(routes[-3]) == ["requests_per_minute"] and limited(routes[0]) == ["requests_per_minute"]
    assert limited(routes[-2]) == []
    assert limited(routes[-1]) == ["requests_per_minute", "tokens_per_minute"]
    caller = routes[-1]["route"]["rate_limits"][0]["actions"][1]["request_headers"]
    assert caller == {"header_name": "x-infermesh-principal", "descriptor_key": "api_key"}


def test_with_authorization_every_front_door_request_is_checked_after_transcoding(tmp_path):
    config = envoy_config.render_ads(DESCRIPTOR, envoy_config.EnvoyPorts(), ("127.0.0.1", 18000), authorization=True)
    envoy_validates(config, tmp_path)
    front = next(x for x in config["static_resources"]["listeners"] if x["name"] == "front_door")
    filters = [f["name"] for f in front["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]]
    assert filters == [
        "envoy.filters.http.buffer",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.router",
    ]
    authz = front["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][2]["typed_config"]
    assert authz["failure_mode_allow"] is False  # fail closed
    limits = front["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][3]["typed_config"]
    assert limits["domain"] == "infermesh" and limits["failure_mode_deny"] is False  # fail open


def test_with_an_otlp_collector_both_listeners_trace_into_it(tmp_path):
    collector = otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"})
    assert collector == ("jaeger", 4317)
    assert otlp_endpoint({}) is None
    assert otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "x:1", "OTEL_SDK_DISABLED": "true"}) is None
    config = envoy_config.render_ads(DESCRIPTOR, envoy_config.EnvoyPorts(), ("127.0.0.1", 18000), collector=collector)
    envoy_validates(config, tmp_path)
    for listener in config["static_resources"]["listeners"]:
        tracing = listener["filter_chains"][0]["filters"][0]["typed_config"]["tracing"]
        assert tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "otlp_collector"
    otlp = next(c for c in config["static_resources"]["clusters"] if c["name"] == "otlp_collector")
    assert otlp["type"] == "STRICT_DNS"  # a host name, as in compose
    assert "tracing" not in str(envoy_config.render_ads(DESCRIPTOR, envoy_config.EnvoyPorts(), ("127.0.0.1", 18000)))
