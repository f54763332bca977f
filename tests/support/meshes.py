"""Whole meshes for tests: settings on free ports with a registry of their own, a
mesh that always stops, and registering a model through a mesh's front door.

A whole mesh takes tens of seconds to start and stop on two cores, so tests share them
where they do not disturb each other: tests/conftest.py's `mesh`, and the package-scoped
meshes of tests/e2e/production/ (authorization, OIDC, rate limits, two gateways,
tracing) and tests/e2e/replicas/ (two inference replicas under faults). A test whose
settings no shared mesh can have starts its own with `mesh_running`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from launcher.mesh import Mesh
from launcher.settings import MeshSettings
from support.paths import data_dir
from support.ports import free_port

# Every test mesh gets a registry database of its own: one left in .data by `make run`
# holds whatever an operator did there (seen: a canary deployment took a test's traffic).
_REGISTRIES = tempfile.TemporaryDirectory(prefix="infermesh-test-registries-")


def mesh_settings(**overrides: object) -> MeshSettings:
    """Settings with every port free, model weights from DATA_DIR, a fresh registry and
    vector directory, and no authorization (the API's tests call without credentials;
    authorization has a mesh of its own: tests/e2e/secured/)."""
    ports = {name: free_port() for name in MeshSettings.model_fields if name.endswith("_port")}
    registry = Path(tempfile.mkdtemp(dir=_REGISTRIES.name)) / "registry.db"
    defaults = {
        "data_dir": data_dir(),
        "ready_timeout_seconds": 600,
        "registry_database_url": f"sqlite:///{registry}",
        "vector_dir": registry.parent / "vector",  # collections of this mesh's own
        "auth": False,
    }
    return MeshSettings(**{**ports, **defaults, **overrides})


@contextmanager
def mesh_running(settings: MeshSettings, log_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[Mesh]:
    """Start the launcher's mesh (`env` added to every process's), wait until it is
    ready, yield it; stop every process on the way out, whatever happened."""
    mesh = Mesh(settings, log_dir=log_dir, env=dict(env or {}))
    mesh.start()
    try:
        mesh.wait_ready()
        yield mesh
    finally:
        mesh.stop()


def restart_exited(mesh: Mesh) -> Mesh:
    """A shared mesh as it started: processes a test stopped or killed are started
    again, and the mesh is ready (every replica's models loaded, Envoy routing to every
    service) before the next test uses it."""
    for child in mesh.exited():
        mesh.restart(child.name)
    mesh.wait_ready()
    return mesh


def register_model(
    base_url: str, model_id: str, provider: str, backend_model: str, fallbacks=(), **model_fields: object
) -> None:
    """Register a text model over REST: the model (`fallbacks` are model ids; extra
    fields such as pricing or parameters as given), a version `v1` and a deployment with
    all the traffic on the provider's backend (`local` for this mesh's inference server)."""
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
