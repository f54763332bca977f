"""Envoy's clusters for a catalog's instances (envoy/cluster.yaml is each one's template):
the routers, every backend instance, and one pool per model a kind of backend serves."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from gateway.envoy_config.templates import is_ip, load
from services.runtime.catalog import POOL_KINDS, Catalog, ServiceInstance, model_health_service, pool_name

# The health service an instance reports SERVING on once it can take traffic.
HEALTH_SERVICES = {
    "router": "infermesh.router.v1.RouterService",
    "inference": "infermesh.inference.v1.InferenceService",
    "provider": "infermesh.inference.v1.InferenceService",
    "registry": "infermesh.registry.v1.RegistryService",
    "vector": "infermesh.vector.v1.VectorService",
    "jobs": "infermesh.jobs.v1.BatchService",
}


@dataclass(frozen=True)
class Limits:
    """Envoy's circuit breaker per backend cluster (see envoy/cluster.yaml)."""

    max_requests: int = 256
    max_pending_requests: int = 256


def _cluster(template: dict[str, Any], instance: ServiceInstance) -> dict[str, Any]:
    cluster = copy.deepcopy(template)
    cluster["name"] = instance.name
    # IP literals are static; host names (compose, Kubernetes) are resolved by DNS.
    cluster["type"] = "STATIC" if is_ip(instance.host) else "STRICT_DNS"
    cluster["load_assignment"] = {
        "cluster_name": instance.name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": instance.host, "port_value": instance.port}}
                        }
                    }
                ]
            }
        ],
    }
    cluster["health_checks"][0]["grpc_health_check"]["service_name"] = HEALTH_SERVICES[instance.kind]
    return cluster


# A pool's replicas are health-checked on the model's own health service, so a replica
# still loading it (or that unloaded it) gets none of its traffic.
def pools(catalog: Catalog) -> dict[str, list[ServiceInstance]]:
    found: dict[str, list[ServiceInstance]] = {}
    for instance in catalog.instances():
        if instance.kind in POOL_KINDS:
            for model in instance.models:
                found.setdefault(pool_name(instance.kind, model), []).append(instance)
    return found


def _pool_cluster(template: dict[str, Any], name: str, members: list[ServiceInstance]) -> dict[str, Any]:
    cluster = _cluster(template, members[0])
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
    cluster["type"] = "STATIC" if all(is_ip(m.host) for m in members) else "STRICT_DNS"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": m.host, "port_value": m.port}}}} for m in members
    ]
    model = name.split("/", 1)[1]
    health = model_health_service(HEALTH_SERVICES[members[0].kind], model)
    cluster["health_checks"][0]["grpc_health_check"]["service_name"] = health
    return cluster


def backends(catalog: Catalog) -> list[ServiceInstance]:
    """Instances the mesh listener routes to (not the routers, nor the gateway)."""
    return [i for i in catalog.instances() if i.kind in HEALTH_SERVICES and i.kind != "router"]


def clusters(catalog: Catalog, limits: Limits | None = None) -> list[dict[str, Any]]:
    """Every cluster the mesh needs: the routers (one cluster, every replica), one per
    backend instance, and one per pool of replicas with a model ready."""
    template = load("cluster.yaml")
    if limits is not None:
        thresholds = template["circuit_breakers"]["thresholds"][0]
        thresholds["max_requests"] = limits.max_requests
        thresholds["max_pending_requests"] = limits.max_pending_requests
    # The router cluster exists even with no router yet (no endpoints: the front door
    # answers 503): a router starting up reaches the registry through the mesh listener,
    # whose routes must not wait for the router itself to be healthy.
    routers = catalog.instances("router")
    if routers:
        router = _pool_cluster(template, "router/-", routers)
        router["name"] = router["load_assignment"]["cluster_name"] = "router"
        router["health_checks"][0]["grpc_health_check"]["service_name"] = HEALTH_SERVICES["router"]
    else:
        router = _empty(template, "router")
    pooled = [_pool_cluster(template, name, members) for name, members in sorted(pools(catalog).items())]
    absent = [_empty(template, kind) for kind in ALWAYS_ROUTED if not catalog.instances(kind)]
    return [router, *(_cluster(template, i) for i in backends(catalog)), *pooled, *absent]


# Services whose routes exist even while no instance is in the catalog (down, or not
# started yet): their calls get Envoy's plain 503 "no healthy upstream" (in OpenAI's
# shape on the OpenAI paths) instead of falling through to the router, which does not
# serve them. (The router's cluster is always there too, above.)
ALWAYS_ROUTED = ("jobs",)


def _empty(template: dict[str, Any], kind: str) -> dict[str, Any]:
    """The cluster of a kind of service with no instance yet: named after the kind,
    health-checked on its service, no hosts."""
    cluster = _cluster(template, ServiceInstance(kind, kind, "127.0.0.1", 0))
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = []
    return cluster
