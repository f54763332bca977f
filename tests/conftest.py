"""Shared fixtures: free ports, and one real mesh (Envoy + router + inference server with
real models) started by the same launcher `make run` uses."""

from __future__ import annotations

import os
import random
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.mesh import Mesh
from launcher.settings import MeshSettings

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel
    picked (bind to 0) can be taken again by an outgoing connection before the service
    that was meant to have it binds (seen: the registry failing to start)."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(1000):
        port = random.randrange(10000, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


# Every test mesh gets a registry database of its own: one left in .data by `make run`
# holds whatever an operator did there (seen: a canary deployment took a test's traffic).
_REGISTRIES = tempfile.TemporaryDirectory(prefix="infermesh-test-registries-")


def metric(port: int, name: str, host: str = "127.0.0.1", **labels: str) -> float:
    """A Prometheus sample from a service's /metrics, summed over the series that carry
    `labels` (0 when there is none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def register_model(
    base_url: str, model_id: str, provider: str, backend_model: str, fallbacks=(), **model_fields: object
) -> None:
    """Register a text model over REST: the model (`fallbacks` are model ids; extra
    fields such as pricing or parameters as given), a version `v1` and a deployment with
    all the traffic on the provider's backend (`local` for this mesh's inference server)."""
    import httpx

    backend = "inference" if provider == "local" else provider
    model = {
        "provider": provider,
        "capabilities": ["text-generation", "chat"],
        "fallbacks": [f"models/{f}" for f in fallbacks],
        **model_fields,
    }
    steps = [
        ("/v1/registry/models", {"model_id": model_id}, model),
        (
            f"/v1/registry/models/{model_id}/versions",
            {"model_version_id": "v1"},
            {
                "runtime": {
                    "runtime": "transformers" if provider == "local" else provider,
                    "backend_model": backend_model,
                }
            },
        ),
        (
            f"/v1/registry/models/{model_id}/deployments",
            {"deployment_id": backend},
            {"backend": backend, "traffic_weight": 100},
        ),
    ]
    for path, params, body in steps:
        reply = httpx.post(f"{base_url}{path}", params=params, json=body, timeout=30)
        assert reply.status_code == 200, reply.text


def mesh_settings(**overrides: object) -> MeshSettings:
    ports = {
        "front_door_port": free_port(),
        "admin_port": free_port(),
        "mesh_port": free_port(),
        "router_port": free_port(),
        "inference_port": free_port(),
        "gateway_port": free_port(),
        "registry_port": free_port(),
        "vector_port": free_port(),
        "vector_metrics_port": free_port(),
        "openai_port": free_port(),
        "gemini_port": free_port(),
        "registry_metrics_port": free_port(),
        "router_metrics_port": free_port(),
        "inference_metrics_port": free_port(),
        "openai_metrics_port": free_port(),
        "gemini_metrics_port": free_port(),
        "gateway_metrics_port": free_port(),
    }
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data"))
    registry = Path(tempfile.mkdtemp(dir=_REGISTRIES.name)) / "registry.db"
    # The API's tests call without credentials; authorization has meshes of its own
    # (tests/e2e/test_gateway_auth.py, test_rate_limits.py).
    defaults = {
        "data_dir": data_dir,
        "ready_timeout_seconds": 600,
        "registry_database_url": f"sqlite:///{registry}",
        "vector_dir": registry.parent / "vector",  # collections of this mesh's own
        "auth": False,
    }
    return MeshSettings(**{**ports, **defaults, **overrides})


@pytest.fixture(scope="session")
def gemini_stand_in() -> Iterator[object]:
    """The Gemini adapter's server for the mesh's tests (no internet here): a stand-in
    speaking Gemini's documented wire format (tests/provider_servers.py)."""
    from provider_servers import StandIn, gemini_default

    with StandIn(gemini_default).running() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, gemini_stand_in) -> Iterator[Mesh]:
    logs = tmp_path_factory.mktemp("mesh-logs")
    # A registry of its own, so test runs never see each other's (or `make run`'s) changes.
    registry = tmp_path_factory.mktemp("registry")
    settings = mesh_settings(registry_database_url=f"sqlite:///{registry / 'registry.db'}")
    providers = {
        # The OpenAI adapter's OpenAI-compatible server is this mesh's own front door.
        "OPENAI_API_KEY": "sk-test-mesh-key",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{settings.front_door_port}/v1",
        "OPENAI_TEXT_MODEL": "gemma-3-270m",
        "OPENAI_VISION_MODEL": "gemma-3-270m",
        "OPENAI_EMBEDDING_MODEL": "all-minilm-l6-v2",
        "GEMINI_API_KEY": "AIza-test-mesh-key-0000",
        "GEMINI_BASE_URL": gemini_stand_in.url,
        "GEMINI_TEXT_MODEL": "gemini-test",
        "GEMINI_VISION_MODEL": "gemini-test",
        "GEMINI_EMBEDDING_MODEL": "gemini-embedding-test",
        # The router avoids a failing backend for a short while in tests.
        "COOLDOWN_SECONDS": "3",
    }
    running = Mesh(settings, log_dir=logs, env={"ARTIFACT_DIR": str(registry / "artifacts"), **providers})
    running.start()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def front_door(mesh: Mesh) -> str:
    return f"127.0.0.1:{mesh.settings.front_door_port}"


@pytest.fixture(scope="session")
def base_url(front_door: str) -> str:
    return f"http://{front_door}"
