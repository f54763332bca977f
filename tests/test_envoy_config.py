"""The Envoy bootstrap rendered from the templates and a catalog: checked by the real
Envoy binary (--mode validate) and against a golden file, so config changes are reviewed."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from gateway import envoy_config
from services.limits.config import LimitConfig, parse_limits
from services.runtime.catalog import EmbeddedCatalog, ServiceInstance
from services.runtime.telemetry import otlp_endpoint
from support.paths import BIN, ROOT

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
    assert [c["name"] for c in config["static_resources"]["clusters"]] == ["gateway"]
    assert config["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    for listener in config["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert manager["rds"]["route_config_name"] == listener["name"] and "route_config" not in manager


def test_every_backend_gets_a_cluster_health_checked_on_its_service_and_a_header_route():
    config = rendered()
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    pools = {"inference/gemma-3-270m", "inference/all-minilm-l6-v2"}
    # The jobs service's cluster is there, empty, while no jobs service is (its calls get a 503).
    assert set(clusters) == {"router", "inference-0", "registry", "openai", "jobs", *pools}
    assert clusters["jobs"]["load_assignment"]["endpoints"][0]["lb_endpoints"] == []
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
    transcoder = manager["http_filters"][2]["typed_config"]
    assert manager["http_filters"][1]["typed_config"]["max_request_bytes"] == 32 * 1024 * 1024
    assert transcoder["services"] == [
        "infermesh.router.v1.RouterService",
        "infermesh.router.v1.UsageService",
        "infermesh.openai.v1.OpenAIService",
        "infermesh.inference.v1.ModelService",
        "infermesh.registry.v1.RegistryService",
        "infermesh.vector.v1.VectorService",
        "infermesh.jobs.v1.BatchService",
        "google.longrunning.Operations",
    ]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    # Model lifecycle goes to the inference server, the registry API to the registry
    # (with no route timeout: a watch lasts as long as its client); everything else to the router.
    assert routes[0]["match"]["prefix"] == "/infermesh.inference.v1.ModelService/"
    assert {r["route"]["cluster"] for r in routes[:-9]} == {"inference-0"}
    assert routes[-9]["match"] == {"prefix": "/infermesh.registry.v1.RegistryService/"}
    assert routes[-9]["route"]["cluster"] == "registry" and routes[-9]["route"]["timeout"] == "0s"
    # Reflection (a bidirectional stream) skips the whole-body buffer, which would wait forever.
    assert routes[-8]["match"] == {"prefix": "/grpc.reflection."} and routes[-8]["route"]["cluster"] == "router"
    assert routes[-8]["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] is True
    assert routes[-7]["match"] == {"prefix": "/grpc.health.v1.Health/"} and routes[-7]["route"]["cluster"] == "router"
    # The OpenAI surface's routes go where everything else does (see the OpenAI test below),
    # but for the Files and Batch APIs, which go to the jobs service, as its gRPC calls do.
    assert [r["name"] for r in routes[-6:-2]] == ["openai-rest", "openai-rest-1", "openai", "openai-batch"]
    assert all(r["route"] == routes[-1]["route"] for r in routes[-6:-3])
    assert [r["route"]["cluster"] for r in routes[-3:-1]] == ["jobs", "jobs"]
    assert routes[-2]["match"] == {"prefix": "/infermesh.jobs.v1.BatchService/"}
    assert routes[-1]["match"] == {"prefix": "/"} and routes[-1]["route"]["cluster"] == "router"
    # Streams outlive Envoy's 15 s default route timeout.
    assert routes[-1]["route"]["timeout"] == "0s"

    # Who checks a call: the router its own (services/router/authorization.py), so Envoy
    # skips ext_authz there and removes the identity headers a client might send; ext_authz
    # everything else, health checks, reflection and the jobs service included.
    def ext_authz_off(route: dict) -> bool:
        config = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {})
        return config.get("disabled") is True

    checked_by_router = [False, False, False, True, True, True, False, False, True]
    assert [ext_authz_off(r) for r in routes[-9:]] == checked_by_router
    assert not any(ext_authz_off(r) for r in routes[:-9])
    identity = ["x-infermesh-principal", "x-infermesh-role", "x-infermesh-models"]
    assert all(r["request_headers_to_remove"] == identity for r in routes[-9:] if ext_authz_off(r))

    # Rate limits: the caller's requests per minute where ext_authz names the caller (the
    # router counts its own callers'), none on health checks and reflection.
    def limited(route: dict) -> list[str]:
        return [
            policy["actions"][0]["generic_key"]["descriptor_value"] for policy in route["route"].get("rate_limits", [])
        ]

    assert limited(routes[-9]) == ["requests_per_minute"] and limited(routes[0]) == ["requests_per_minute"]
    rpm = ["requests_per_minute"]
    assert [limited(r) for r in routes[-8:]] == [[], [], [], [], [], rpm, rpm, []]
    caller = routes[-9]["route"]["rate_limits"][0]["actions"][1]["request_headers"]
    assert caller == {"header_name": "x-infermesh-principal", "descriptor_key": "api_key"}


def test_the_front_door_asks_the_rate_limit_service_only_about_limits_some_caller_has():
    """Each descriptor is a call from Envoy to the gateway on every request: with no
    per-caller requests-per-minute limit configured (make run's default) no route sends
    any, so Envoy never calls the rate limit service."""

    def kinds(config: LimitConfig) -> set[str]:
        routes = envoy_config.route_configs(catalog(), config.requests_per_caller)["front_door"]
        return {
            action["generic_key"]["descriptor_value"]
            for route in routes["virtual_hosts"][0]["routes"]
            for policy in route["route"].get("rate_limits", [])
            for action in policy["actions"][:1]
        }

    assert kinds(parse_limits({})) == set()
    # Limits on models and concurrency are the router's to count: nothing for Envoy to ask.
    assert (
        kinds(parse_limits({"models": {"gemma-3-270m": {"tokens_per_minute": 10}}, "default": {"concurrent": 2}}))
        == set()
    )
    assert kinds(parse_limits({"default": {"tokens_per_minute": 100}})) == set()  # the router's to count
    assert kinds(parse_limits({"keys": {"batch": {"requests_per_minute": 5}}})) == {"requests_per_minute"}


OPENAI_PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/gemma-3-270m",
    "/v1/files",
    "/v1/files/file-abc/content",
    "/v1/batches",
    "/v1/batches/batch_abc/cancel",
]
NATIVE_PATHS = [
    "/v1/chat",
    "/v1/chat:stream",
    "/v1/embed",
    "/v1/backend/models/gemma-3-270m:load",
    "/v1/registry/models",
]


def test_the_openai_paths_answer_errors_in_openais_shape_and_other_routes_are_untouched():
    front = next(x for x in rendered()["static_resources"]["listeners"] if x["name"] == "front_door")
    manager = front["filter_chains"][0]["filters"][0]["typed_config"]
    # The Lua filter that moves the servicer's x-infermesh-http-status into :status is
    # first (it sees a response last, after the transcoder) and off by default...
    lua = manager["http_filters"][0]
    assert lua["name"] == "envoy.filters.http.lua" and lua["disabled"] is True
    script = lua["typed_config"]["source_codes"]["openai_status"]["inline_string"]
    assert script == (ROOT / "envoy" / "openai_status.lua").read_text() and "x-infermesh-http-status" in script
    assert "envoy_on_request" not in script  # responses only: requests pay nothing
    # ...on only on the two OpenAI routes: the REST paths (where the filter chain is made)
    # and, once transcoded, the service's methods with x-envoy-original-path (not gRPC callers).
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    on = [r for r in routes if "envoy.filters.http.lua" in r.get("typed_per_filter_config", {})]
    assert [r["name"] for r in on] == ["openai-rest", "openai-rest-1", "openai", "openai-batch"]
    rest = [re.compile(r["match"]["safe_regex"]["regex"]) for r in on[:2]]
    assert all(any(r.fullmatch(p) for r in rest) for p in OPENAI_PATHS)
    assert not any(r.fullmatch(p) for r in rest for p in NATIVE_PATHS)
    assert on[2]["match"] == {
        "prefix": "/infermesh.openai.v1.OpenAIService/",
        "headers": [{"name": "x-envoy-original-path", "present_match": True}],
    }
    # The router checks their calls and counts their callers' requests (and answers its
    # refusals there in OpenAI's shape): no rate limit descriptors, no ext_authz. The jobs
    # service's (the last) are ext_authz's.
    assert all("rate_limits" not in route["route"] for route in on[:3])
    assert on[3]["match"]["prefix"] == "/infermesh.jobs.v1.BatchService/" and on[3]["route"]["cluster"] == "jobs"
    # Envoy's own replies there are OpenAI-shaped, except refusals the gateway shaped already.
    mappers = manager["local_reply_config"]["mappers"]
    assert "body_format_override" not in mappers[0]
    assert "RL" in str(mappers[0]) and "openai_error" in str(mappers[0])
    # OpenAI's endpoints this mesh does not serve answer OpenAI's "Invalid URL" 404.
    *mappers, unserved = mappers
    prefixes = [
        f["header_filter"]["header"]["string_match"]["prefix"]
        for f in unserved["filter"]["and_filter"]["filters"][0]["or_filter"]["filters"]
    ]
    assert "/v1/responses" in prefixes and "/v1/images/" in prefixes
    assert not any(p.startswith(prefix) for p in NATIVE_PATHS + OPENAI_PATHS for prefix in prefixes)
    assert unserved["body_format_override"]["json_format"]["error"]["code"] == "unknown_url"
    shapes = {}
    for mapper in mappers[1:]:
        path, status = mapper["filter"]["and_filter"]["filters"]
        headers = [f["header_filter"]["header"] for f in path["or_filter"]["filters"]]
        assert [h["name"] for h in headers] == [":path", "x-envoy-original-path"] * 2
        regexes = [re.compile(h["string_match"]["safe_regex"]["regex"]) for h in headers[::2]]

        def matches(path: str, regexes: list[re.Pattern] = regexes) -> bool:
            return any(regex.fullmatch(path) for regex in regexes)

        assert all(matches(p) and matches(p + "?x=1") for p in OPENAI_PATHS)
        assert not any(matches(p) for p in NATIVE_PATHS)
        comparison = status["status_code_filter"]["comparison"]
        error = mapper["body_format_override"]["json_format"]["error"]
        assert set(error) == {"message", "type", "param", "code"}
        shapes[(comparison["op"], comparison["value"]["default_value"])] = (error["type"], error["code"])
    assert shapes == {
        ("EQ", 404): ("invalid_request_error", "unknown_url"),
        ("EQ", 413): ("invalid_request_error", "request_too_large"),
        ("EQ", 503): ("server_error", "service_unavailable"),
        ("EQ", 504): ("server_error", "timeout"),
        ("GE", 500): ("server_error", "server_error"),
        ("GE", 400): ("invalid_request_error", "invalid_request"),
    }


def test_with_authorization_every_front_door_request_is_checked_after_transcoding(tmp_path):
    config = envoy_config.render_ads(DESCRIPTOR, envoy_config.EnvoyPorts(), ("127.0.0.1", 18000), authorization=True)
    envoy_validates(config, tmp_path)
    front = next(x for x in config["static_resources"]["listeners"] if x["name"] == "front_door")
    filters = [f["name"] for f in front["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]]
    assert filters == [
        "envoy.filters.http.lua",  # off but on the OpenAI routes
        "envoy.filters.http.buffer",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.router",
    ]
    authz = front["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][3]["typed_config"]
    assert authz["failure_mode_allow"] is False  # fail closed
    limits = front["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][4]["typed_config"]
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


def test_files_and_batches_go_to_the_jobs_service_checked_by_ext_authz_with_openai_errors(tmp_path):
    jobs = ServiceInstance("jobs", "jobs", "127.0.0.1", 50055)
    with_jobs = EmbeddedCatalog.of([*catalog().instances(), jobs])
    config = envoy_config.render(with_jobs, DESCRIPTOR, envoy_config.EnvoyPorts())
    envoy_validates(config, tmp_path)
    front = next(x for x in config["static_resources"]["listeners"] if x["name"] == "front_door")
    routes = front["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    to_jobs = [r for r in routes if r["route"]["cluster"] == "jobs"]
    # Transcoded REST calls (with the Lua filter that sets OpenAI's statuses), then gRPC callers.
    assert [r["match"] for r in to_jobs] == [
        {
            "prefix": "/infermesh.jobs.v1.BatchService/",
            "headers": [{"name": "x-envoy-original-path", "present_match": True}],
        },
        {"prefix": "/infermesh.jobs.v1.BatchService/"},
    ]
    assert "envoy.filters.http.lua" in to_jobs[0]["typed_per_filter_config"]
    # The jobs service does not check callers itself: ext_authz does, and strips no headers it sets.
    for route in to_jobs:
        assert "envoy.filters.http.ext_authz" not in route.get("typed_per_filter_config", {})
        assert "request_headers_to_remove" not in route
    assert any(c["name"] == "jobs" for c in config["static_resources"]["clusters"])
