"""The compose deployment cannot run here (no Docker engine, no Consul or Jaeger binary),
so this checks what can drift without anyone noticing: every variable compose sets is a
setting the service reads, every module it runs exists, Envoy's config renders from the
compose catalog with DNS-resolved clusters, and Consul checks each service's gRPC health."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import yaml

from conftest import BIN, ROOT
from infermesh_gateway import envoy_config
from infermesh_inference.settings import InferenceSettings
from infermesh_providers.settings import ProviderSettings
from infermesh_registry.settings import RegistrySettings
from infermesh_router.settings import RouterSettings
from infermesh_runtime.catalog import EmbeddedCatalog

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTINGS = {
    "inference": InferenceSettings,
    "router": RouterSettings,
    "registry": RegistrySettings,
    "openai": ProviderSettings,
    "gemini": ProviderSettings,
}
TRACING = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}  # read by OpenTelemetry itself


def test_compose_sets_only_variables_the_services_read():
    for name, settings in SETTINGS.items():
        service = COMPOSE["services"][name]
        fields = {field.upper() for field in settings.model_fields}
        unknown = set(service["environment"]) - fields - TRACING
        assert not unknown, f"{name} ignores {unknown}"
        module = service["command"][-1]
        assert importlib.util.find_spec(module) is not None


def test_envoy_renders_from_the_compose_catalog_with_dns_clusters(tmp_path):
    catalog = EmbeddedCatalog.load(ROOT / "envoy" / "compose_catalog.yaml")
    assert {s.host for s in catalog.instances()} <= set(COMPOSE["services"])
    out = tmp_path / "envoy.yaml"
    subprocess.run(
        [
            str(BIN / "python"),
            "-m",
            "infermesh_gateway.envoy_config",
            "--catalog",
            str(ROOT / "envoy" / "compose_catalog.yaml"),
            "--descriptor-set",
            str(ROOT / "build" / "infermesh.binpb"),
            "--out",
            str(out),
            "--listen-host",
            "0.0.0.0",
        ],
        check=True,
        timeout=60,
    )
    config = yaml.safe_load(out.read_text())
    assert {c["type"] for c in config["static_resources"]["clusters"]} == {"STRICT_DNS"}
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert envoy_config.EnvoyPorts().front_door == 8080


def test_consul_checks_each_service_on_its_grpc_health_service():
    catalog = {s.name: s for s in EmbeddedCatalog.load(ROOT / "envoy" / "compose_catalog.yaml").instances()}
    for path in (ROOT / "consul").glob("*.json"):
        service = json.loads(path.read_text())["service"]
        instance = catalog[service.get("id", service["name"])]
        health_service = envoy_config.HEALTH_SERVICES[instance.kind]
        assert service["check"]["grpc"] == f"{instance.host}:{instance.port}/{health_service}"
