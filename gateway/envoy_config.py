"""Render Envoy's bootstrap from the templates in envoy/ and the catalog, with pyyaml."""

from __future__ import annotations

import argparse
import copy
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infermesh_runtime.catalog import BACKEND_HEADER, Catalog, ServiceInstance

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
# The health service an instance reports SERVING on once it can take traffic.
HEALTH_SERVICES = {
    "router": "infermesh.router.v1.RouterService",
    "inference": "infermesh.inference.v1.InferenceService",
    "provider": "infermesh.inference.v1.InferenceService",
    "registry": "infermesh.registry.v1.RegistryService",
}
REGISTRY_PREFIX = "/infermesh.registry.v1.RegistryService/"


@dataclass(frozen=True)
class EnvoyPorts:
    front_door: int = 8080
    mesh: int = 15001
    admin: int = 9901
    host: str = "127.0.0.1"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ENVOY_DIR / name).read_text())


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(listener for listener in config["static_resources"]["listeners"] if listener["name"] == name)


def _connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _cluster(template: dict[str, Any], instance: ServiceInstance) -> dict[str, Any]:
    cluster = copy.deepcopy(template)
    cluster["name"] = instance.name
    # IP literals are static; host names (compose, Kubernetes) are resolved by DNS.
    cluster["type"] = "STATIC" if _is_ip(instance.host) else "STRICT_DNS"
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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _backend_route(instance: ServiceInstance) -> dict[str, Any]:
    # A provider adapter answers UNAVAILABLE only after its own retries against the
    # provider (honouring Retry-After); retrying that here would multiply them. Envoy
    # retries only what never reached the adapter.
    retry_on = (
        "connect-failure,refused-stream"
        if instance.kind == "provider"
        else "connect-failure,refused-stream,unavailable"
    )
    return {
        "match": {"prefix": "/", "headers": [{"name": BACKEND_HEADER, "string_match": {"exact": instance.name}}]},
        "route": {
            "cluster": instance.name,
            "timeout": "0s",
            "retry_policy": {
                "retry_on": retry_on,
                "num_retries": 2,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        },
                    }
                ],
            },
        },
    }


# Operators' model lifecycle calls go straight to an inference server: the one named in
# the backend header, or the first one when there is a single server to talk to.
LIFECYCLE_PREFIXES = ("/infermesh.inference.v1.ModelService/", "/google.longrunning.Operations/")


def _lifecycle_routes(servers: list[ServiceInstance]) -> list[dict[str, Any]]:
    routes = []
    for prefix in LIFECYCLE_PREFIXES:
        for server in servers:
            header = {"name": BACKEND_HEADER, "string_match": {"exact": server.name}}
            routes.append({"match": {"prefix": prefix, "headers": [header]}, "route": {"cluster": server.name}})
        if servers:
            routes.append({"match": {"prefix": prefix}, "route": {"cluster": servers[0].name}})
    return routes


def _registry_routes(registries: list[ServiceInstance]) -> list[dict[str, Any]]:
    """Operators reach the registry directly (it is not behind the router). Unary calls
    carry their own deadlines; a watch is a stream that lasts as long as its client."""
    if not registries:
        return []
    return [{"match": {"prefix": REGISTRY_PREFIX}, "route": {"cluster": registries[0].name, "timeout": "0s"}}]


def render(catalog: Catalog, descriptor_set: Path, ports: EnvoyPorts) -> dict[str, Any]:
    """The bootstrap as a dict: front door → router; mesh listener → each backend by header."""
    config = _load("front_door.yaml")
    cluster_template = _load("cluster.yaml")
    config["admin"]["address"]["socket_address"] = {"address": ports.host, "port_value": ports.admin}

    front = _listener(config, "front_door")
    front["address"]["socket_address"] = {"address": ports.host, "port_value": ports.front_door}
    transcoder = _connection_manager(front)["http_filters"][0]["typed_config"]
    transcoder["proto_descriptor"] = str(descriptor_set)
    front_routes = _connection_manager(front)["route_config"]["virtual_hosts"][0]["routes"]
    front_routes[:0] = [
        *_lifecycle_routes(catalog.instances("inference")),
        *_registry_routes(catalog.instances("registry")),
    ]

    mesh = _listener(config, "mesh")
    mesh["address"]["socket_address"] = {"address": ports.host, "port_value": ports.mesh}
    backends = [i for i in catalog.instances() if i.kind != "router"]
    _connection_manager(mesh)["route_config"]["virtual_hosts"][0]["routes"] = [_backend_route(i) for i in backends]

    routers = catalog.instances("router")
    if len(routers) != 1:
        raise ValueError(f"the front door needs exactly one router cluster, the catalog has {len(routers)}")
    router = _cluster(cluster_template, routers[0])
    router["name"] = router["load_assignment"]["cluster_name"] = "router"
    config["static_resources"]["clusters"] = [router, *(_cluster(cluster_template, i) for i in backends)]
    return config


def write(config: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> None:
    """`python -m infermesh_gateway.envoy_config`: render a bootstrap from a catalog file."""
    from infermesh_runtime.catalog import EmbeddedCatalog

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--descriptor-set", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--listen-host", default="127.0.0.1")
    args = parser.parse_args()
    ports = EnvoyPorts(host=args.listen_host)
    write(render(EmbeddedCatalog.load(args.catalog), args.descriptor_set, ports), args.out)


if __name__ == "__main__":
    main()
