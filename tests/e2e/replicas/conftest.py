"""The replica mesh this package's tests share (each module had one of its own): two
inference replicas of all-minilm-l6-v2 in the embedded catalog, Envoy fed by the gateway,
Envoy's circuit breakers small enough for a test to trip (8 requests per backend), and
no embedding coalescing in the router, so client concurrency reaches the backends as it
is. Each module's fixture puts the replicas in the state its tests start from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from launcher.mesh import Mesh
from support.load import MINILM
from support.meshes import mesh_running, mesh_settings


@pytest.fixture(scope="package")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    settings = mesh_settings(models=[MINILM], providers=[], inference_replicas=2)
    env = {
        # Envoy's circuit breaker per backend cluster, small enough for a test to trip.
        "MAX_REQUESTS_PER_BACKEND": "8",
        "MAX_PENDING_PER_BACKEND": "8",
        # Every embedding request goes to Envoy alone (no coalescing in the router), so
        # client concurrency reaches the backends as it is.
        "EMBED_COALESCE_IN_FLIGHT": "0",
    }
    with mesh_running(settings, tmp_path_factory.mktemp("replica-logs"), env) as mesh:
        yield mesh
