"""The gateway's xDS control plane with a real Envoy: Envoy starts with only the ADS
bootstrap, gets its routes and clusters from the xDS server, and follows the catalog — a
replica registering, a model becoming ready, a replica leaving — within seconds, without
a restart. (The instances here are catalog entries, not running servers: Envoy's health
checks mark them unhealthy, which does not matter for what is checked.)"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from gateway import envoy_config
from gateway.xds.server import NACKS, XdsServer
from services.runtime.catalog import EmbeddedCatalog, ServiceInstance
from support.paths import BIN, DESCRIPTOR_SET
from support.polling import eventually_async
from support.ports import free_port
from support.serving import serving

ROUTER = ServiceInstance("router", "router", "127.0.0.1", 1)
REGISTRY = ServiceInstance("registry", "registry", "127.0.0.1", 2)
REPLICA_0 = ServiceInstance("inference-0", "inference", "127.0.0.1", 3, ("gemma-3-270m",))
REPLICA_1 = ServiceInstance("inference-1", "inference", "127.0.0.1", 4)


def envoy_clusters(admin: int) -> dict[str, set[str]]:
    """Envoy's clusters and the host:port of each one's members, from its admin API."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2).read().decode()
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) >= 3 and parts[2] == "cx_active":
            members.setdefault(parts[0], set()).add(parts[1])
        elif len(parts) >= 2 and parts[1] in ("default_priority", "added_via_api"):
            members.setdefault(parts[0], set())
    return members


@pytest.fixture
async def mesh(tmp_path: Path):
    """An xDS server on an embedded catalog, and a real Envoy bootstrapped from it."""
    catalog = EmbeddedCatalog(tmp_path / "catalog")
    for instance in (ROUTER, REGISTRY, REPLICA_0):
        await catalog.register(instance)
    await catalog.start()
    plane = XdsServer(catalog)
    await plane.start()
    try:
        async with serving([(ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server, plane)]) as xds:
            ports = envoy_config.EnvoyPorts(front_door=free_port(), mesh=free_port(), admin=free_port())
            bootstrap = tmp_path / "envoy.yaml"
            envoy_config.write(envoy_config.render_ads(DESCRIPTOR_SET, ports, ("127.0.0.1", xds.port)), bootstrap)
            envoy = subprocess.Popen(
                [str(BIN / "envoy"), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warn"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                yield catalog, plane, ports
            finally:
                envoy.terminate()
                envoy.wait(10)
    finally:
        await plane.close()
        await catalog.close()


async def test_envoy_gets_its_clusters_and_routes_from_the_xds_server_and_follows_the_catalog(mesh):
    catalog, plane, ports = mesh
    await eventually_async(
        lambda: {"router", "registry", "inference-0", "inference/gemma-3-270m"} <= set(envoy_clusters(ports.admin)),
        ignoring=OSError,  # Envoy's admin port is not open yet
    )
    assert envoy_clusters(ports.admin)["inference/gemma-3-270m"] == {"127.0.0.1:3"}
    nacks = NACKS.labels("Cluster")._value.get()

    # A second replica registers: its own cluster appears, without a restart.
    await catalog.register(REPLICA_1)
    started = time.monotonic()
    await eventually_async(lambda: "inference-1" in envoy_clusters(ports.admin), ignoring=OSError)
    assert time.monotonic() - started < 3
    # It finishes loading the model: the model's pool now has both replicas.
    await catalog.register(REPLICA_1.with_models(["gemma-3-270m"]))
    await eventually_async(
        lambda: envoy_clusters(ports.admin).get("inference/gemma-3-270m") == {"127.0.0.1:3", "127.0.0.1:4"},
        ignoring=OSError,
    )
    # The first leaves: gone from its cluster and from the pool.
    await catalog.deregister(REPLICA_0)
    await eventually_async(
        lambda: "inference-0" not in envoy_clusters(ports.admin)
        and envoy_clusters(ports.admin).get("inference/gemma-3-270m") == {"127.0.0.1:4"},
        ignoring=OSError,
    )
    # The mesh listener routes the pool by header (the route came over RDS).
    routes = urllib.request.urlopen(
        f"http://127.0.0.1:{ports.admin}/config_dump?resource=dynamic_route_configs", timeout=2
    )
    assert '"inference/gemma-3-270m"' in routes.read().decode()
    assert NACKS.labels("Cluster")._value.get() == nacks  # Envoy accepted every version
    assert int(plane.current.version) >= 4
