"""Envoy's configuration from the templates in envoy/ and the catalog, with pyyaml: the
clusters and routes for a catalog's instances, and two bootstraps — a static one with
them inline, and one that gets them from the control plane over ADS."""

from __future__ import annotations

import argparse
import copy
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.limits.config import OPENAI_SURFACE, REQUESTS_PER_MINUTE, SURFACE_KEY, TOKENS_PER_MINUTE
from services.runtime.catalog import (
    BACKEND_HEADER,
    POOL_KINDS,
    Catalog,
    ServiceInstance,
    model_health_service,
    pool_name,
)
from services.runtime.identity import PRINCIPAL_HEADER
from services.runtime.openai_errors import (
    OPENAI_SERVICE_PREFIX,
    SHAPED_METADATA_KEY,
    TRANSCODED_PATH_HEADER,
    error_type,
)

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
# The health service an instance reports SERVING on once it can take traffic.
HEALTH_SERVICES = {
    "router": "infermesh.router.v1.RouterService",
    "inference": "infermesh.inference.v1.InferenceService",
    "provider": "infermesh.inference.v1.InferenceService",
    "registry": "infermesh.registry.v1.RegistryService",
    "vector": "infermesh.vector.v1.VectorService",
}
REGISTRY_PREFIX = "/infermesh.registry.v1.RegistryService/"
VECTOR_PREFIX = "/infermesh.vector.v1.VectorService/"


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


def _http_filter(manager: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in manager["http_filters"] if f["name"] == name)


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


def _backend_route(cluster: str, kind: str) -> dict[str, Any]:
    # Envoy retries only before any response byte reached the router, so a stream is
    # never retried after its first chunk. On an inference server it retries, on another
    # replica (previous_hosts): a refused or failed connection, UNAVAILABLE, and a reset
    # before the response began (a replica killed mid-request: the request did no work a
    # client saw). A provider adapter answers UNAVAILABLE only after its own retries
    # against the provider (honouring Retry-After), and a reset call may already have
    # been billed: Envoy retries only what never reached the adapter.
    retry_on = (
        "connect-failure,refused-stream" if kind == "provider" else "connect-failure,refused-stream,unavailable,reset"
    )
    return {
        "match": {"prefix": "/", "headers": [{"name": BACKEND_HEADER, "string_match": {"exact": cluster}}]},
        "route": {
            "cluster": cluster,
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


# An embedding call is short and idempotent: one that has had no answer for this long is
# stuck on a replica that hangs (its port open, nothing answering; health checks take a
# few seconds to eject it) and is retried on another. Generations get no such limit:
# they can rightly run for minutes.
EMBED_PER_TRY_TIMEOUT = "5s"
EMBED_PATH = "/infermesh.inference.v1.InferenceService/Embed"


def _embed_route(cluster: str) -> dict[str, Any]:
    route = _backend_route(cluster, "inference")
    route["match"]["prefix"] = EMBED_PATH
    route["route"]["retry_policy"]["per_try_timeout"] = EMBED_PER_TRY_TIMEOUT
    return route


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


def _vector_routes(instances: list[ServiceInstance]) -> list[dict[str, Any]]:
    """The vector service is reached directly too (it calls the router itself to embed)."""
    if not instances:
        return []
    return [{"match": {"prefix": VECTOR_PREFIX}, "route": {"cluster": instances[0].name, "timeout": "0s"}}]


def _registry_routes(registries: list[ServiceInstance]) -> list[dict[str, Any]]:
    """Operators reach the registry directly (it is not behind the router). Unary calls
    carry their own deadlines; a watch is a stream that lasts as long as its client."""
    if not registries:
        return []
    return [{"match": {"prefix": REGISTRY_PREFIX}, "route": {"cluster": registries[0].name, "timeout": "0s"}}]


# A pool's replicas are health-checked on the model's own health service, so a replica
# still loading it (or that unloaded it) gets none of its traffic.
def _pools(catalog: Catalog) -> dict[str, list[ServiceInstance]]:
    pools: dict[str, list[ServiceInstance]] = {}
    for instance in catalog.instances():
        if instance.kind in POOL_KINDS:
            for model in instance.models:
                pools.setdefault(pool_name(instance.kind, model), []).append(instance)
    return pools


def _pool_cluster(template: dict[str, Any], name: str, members: list[ServiceInstance]) -> dict[str, Any]:
    cluster = _cluster(template, members[0])
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
    cluster["type"] = "STATIC" if all(_is_ip(m.host) for m in members) else "STRICT_DNS"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": m.host, "port_value": m.port}}}} for m in members
    ]
    model = name.split("/", 1)[1]
    health = model_health_service(HEALTH_SERVICES[members[0].kind], model)
    cluster["health_checks"][0]["grpc_health_check"]["service_name"] = health
    return cluster


def _backends(catalog: Catalog) -> list[ServiceInstance]:
    """Instances the mesh listener routes to (not the routers, nor the control plane)."""
    return [i for i in catalog.instances() if i.kind in HEALTH_SERVICES and i.kind != "router"]


@dataclass(frozen=True)
class Limits:
    """Envoy's circuit breaker per backend cluster (see envoy/cluster.yaml)."""

    max_requests: int = 256
    max_pending_requests: int = 256


def clusters(catalog: Catalog, limits: Limits | None = None) -> list[dict[str, Any]]:
    """Every cluster the mesh needs: the routers (one cluster, every replica), one per
    backend instance, and one per pool of replicas with a model ready."""
    template = _load("cluster.yaml")
    if limits is not None:
        thresholds = template["circuit_breakers"]["thresholds"][0]
        thresholds["max_requests"] = limits.max_requests
        thresholds["max_pending_requests"] = limits.max_pending_requests
    # The router cluster exists even with no router yet (no endpoints: the front door
    # answers 503): a router starting up reaches the registry through the mesh listener,
    # whose routes must not wait for the router itself to be healthy.
    routers = catalog.instances("router")
    placeholder = ServiceInstance("router", "router", "127.0.0.1", 0)
    router = _pool_cluster(template, "router/-", routers or [placeholder])
    router["name"] = router["load_assignment"]["cluster_name"] = "router"
    router["health_checks"][0]["grpc_health_check"]["service_name"] = HEALTH_SERVICES["router"]
    if not routers:
        router["load_assignment"]["endpoints"][0]["lb_endpoints"] = []
    backends = _backends(catalog)
    pools = [_pool_cluster(template, name, members) for name, members in sorted(_pools(catalog).items())]
    return [router, *(_cluster(template, i) for i in backends), *pools]


REFLECTION_PREFIX = "/grpc.reflection."

# The OpenAI-compatible REST paths (the OpenAI SDK's, services/router/openai_servicer.py):
# `/v1/models/{id}` but not the lifecycle verbs `/v1/models/{id}:load`. Errors there are
# in OpenAI's shape (DESIGN decision 9), whoever answers: the router's OpenAI servicer,
# the gateway's authorization and rate limit services, or Envoy itself.
OPENAI_REST_PATH = r"/v1/(chat/completions|completions|embeddings|models(/[^:?]*)?)"
# OpenAI's other endpoints, which this mesh does not serve: a client calling one (the SDK's
# `responses.create`, `images.generate`...) gets OpenAI's own "Invalid URL" 404, in its
# shape. Matched by prefix (one regex of them all is past Envoy's RE2 program size limit).
OPENAI_UNSERVED_PREFIXES = tuple(
    f"/v1/{resource}"
    for resource in (
        "responses", "audio/", "images/", "files", "uploads", "batches", "fine_tuning/", "moderations",
        "assistants", "threads", "vector_stores", "realtime", "conversations", "containers", "evals", "videos",
    )
)  # fmt: skip
OPENAI_ROUTE, OPENAI_REST_ROUTE = "openai", "openai-rest"
_OPENAI_STATUS = {
    "envoy.filters.http.lua": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
        "name": "openai_status",
    }
}


def _openai_routes(router: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI surface's two routes, each like the router's catch-all `router` route
    plus the Lua filter that sets the status of the servicer's error answers
    (envoy/openai_status.lua). The filter chain is made for the route a request first
    matches, its REST path: that route turns the filter on. Once transcoded, the request
    is matched again, on its gRPC method and the REST path the transcoder kept in
    x-envoy-original-path: that route runs the script on the response, and carries the
    rate limits, which say they are for the OpenAI surface. A gRPC client calling the
    service itself matches neither and is answered as before."""
    rest = {
        "name": OPENAI_REST_ROUTE,
        "match": {"safe_regex": {"regex": OPENAI_REST_PATH}},
        "route": copy.deepcopy(router["route"]),
        "typed_per_filter_config": copy.deepcopy(_OPENAI_STATUS),
    }
    transcoded = {
        "name": OPENAI_ROUTE,
        "match": {
            "prefix": OPENAI_SERVICE_PREFIX,
            "headers": [{"name": TRANSCODED_PATH_HEADER, "present_match": True}],
        },
        "route": copy.deepcopy(router["route"]),
        "typed_per_filter_config": copy.deepcopy(_OPENAI_STATUS),
    }
    return [rest, transcoded]


def _rate_limits(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The descriptors Envoy's rate limit filter sends for a front-door route: the
    caller's requests per minute everywhere but reflection, and, on the router's routes
    (where tokens are spent), whether the caller has tokens left this minute. Per-model
    limits, concurrency and the tokens themselves are the router's to count: Envoy
    cannot read a model from a request body, nor see when a request ends. On the OpenAI
    routes each descriptor also says so (`surface: openai`, counted by nothing), and the
    rate limit service answers a refusal in OpenAI's shape."""
    prefix = route["match"].get("prefix", "")
    if prefix.startswith(REFLECTION_PREFIX):
        return []
    kinds = [REQUESTS_PER_MINUTE]
    if route["route"]["cluster"] == "router":
        kinds.append(TOKENS_PER_MINUTE)
    openai = route.get("name") in (OPENAI_ROUTE, OPENAI_REST_ROUTE)
    surface = {"generic_key": {"descriptor_key": SURFACE_KEY, "descriptor_value": OPENAI_SURFACE}}
    return [
        {
            "actions": [
                {"generic_key": {"descriptor_key": "kind", "descriptor_value": kind}},
                # No principal (auth off, or a public route): no descriptor, no limit.
                {"request_headers": {"header_name": PRINCIPAL_HEADER, "descriptor_key": "api_key"}},
                *([copy.deepcopy(surface)] if openai else []),
            ]
        }
        for kind in kinds
    ]


def _status_is(op: str, code: int) -> dict[str, Any]:
    runtime_key = f"front_door.openai_local_reply.{op.lower()}_{code}"  # required; nothing sets it
    return {
        "status_code_filter": {"comparison": {"op": op, "value": {"default_value": code, "runtime_key": runtime_key}}}
    }


def _openai_local_replies(max_request_bytes: int) -> dict[str, Any]:
    """The front door's local_reply_config: what Envoy itself answers on the OpenAI paths
    (413 too large, 404 no such method or an OpenAI endpoint not served here, 503 no router or no authorization service, 504,
    any other 4xx or 5xx) in OpenAI's error shape; everything else, the native REST API
    and gRPC callers included, as before. A request is on the OpenAI paths by its REST
    path: in :path before the transcoder, in x-envoy-original-path after it (a gRPC
    client has neither). Refusals the gateway already shaped are left alone: the rate
    limiter's (response flag RL) and the authorization service's (its dynamic metadata
    says so)."""
    # A header's value is matched whole, query string and all.
    path = OPENAI_REST_PATH + r"(\?.*)?"
    on_openai_path = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": name, "string_match": {"safe_regex": {"regex": path}}}}}
                for name in (":path", TRANSCODED_PATH_HEADER)
            ]
        }
    }
    on_unserved_path = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}}
                for prefix in OPENAI_UNSERVED_PREFIXES
            ]
        }
    }
    shaped = {
        "or_filter": {
            "filters": [
                {"response_flag_filter": {"flags": ["RL"]}},
                {
                    "metadata_filter": {
                        "matcher": {
                            "filter": "envoy.filters.http.ext_authz",
                            "path": [{"key": SHAPED_METADATA_KEY}],
                            "value": {"bool_match": True},
                        },
                        "match_if_key_not_found": False,
                    }
                },
            ]
        }
    }
    failed = "the mesh could not serve this request: %RESPONSE_CODE_DETAILS%"
    replies = [  # (comparison, status, code, message), first match wins
        ("EQ", 404, "unknown_url", "Invalid URL (%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%)"),
        (
            "EQ",
            413,
            "request_too_large",
            f"the request body is larger than the {max_request_bytes / 2**20:g} MiB this mesh accepts",
        ),
        ("EQ", 503, "service_unavailable", failed),
        ("EQ", 504, "timeout", failed),
        ("GE", 500, "server_error", failed),
        ("GE", 400, "invalid_request", "%LOCAL_REPLY_BODY%"),
    ]
    mappers: list[dict[str, Any]] = [{"filter": {"and_filter": {"filters": [copy.deepcopy(on_openai_path), shaped]}}}]
    for op, status, code, message in replies:
        error = {"message": message, "type": error_type(status), "param": None, "code": code}
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [copy.deepcopy(on_openai_path), _status_is(op, status)]}},
                "body_format_override": {"json_format": {"error": error}, "content_type": "application/json"},
            }
        )
    not_served = {"message": replies[0][3], "type": error_type(404), "param": None, "code": replies[0][2]}
    mappers.append(
        {
            "filter": {"and_filter": {"filters": [on_unserved_path, _status_is("EQ", 404)]}},
            "body_format_override": {"json_format": {"error": not_served}, "content_type": "application/json"},
        }
    )
    return {"mappers": mappers}


def route_configs(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """The two listeners' routes: the front door's (lifecycle and registry routes, the
    OpenAI surface's, then everything else to the router) and the mesh listener's (each
    backend and pool by header)."""
    config = _load("front_door.yaml")
    front = copy.deepcopy(_connection_manager(_listener(config, "front_door"))["route_config"])
    front["virtual_hosts"][0]["routes"][:0] = [
        *_lifecycle_routes(catalog.instances("inference")),
        *_registry_routes(catalog.instances("registry")),
        *_vector_routes(catalog.instances("vector")),
    ]
    routes = front["virtual_hosts"][0]["routes"]
    routes[-1:-1] = _openai_routes(routes[-1])
    for route in routes:
        if limits := _rate_limits(route):
            route["route"]["rate_limits"] = limits
    mesh = copy.deepcopy(_connection_manager(_listener(config, "mesh"))["route_config"])
    backends = _backends(catalog)
    pools = sorted(_pools(catalog).items())
    targets = [*((i.name, i.kind) for i in backends), *((name, members[0].kind) for name, members in pools)]
    mesh["virtual_hosts"][0]["routes"] = [
        *(_embed_route(name) for name, kind in targets if kind in POOL_KINDS),
        *(_backend_route(name, kind) for name, kind in targets),
    ]
    return {"front_door": front, "mesh": mesh}


def _bootstrap(descriptor_set: Path, ports: EnvoyPorts) -> dict[str, Any]:
    config = _load("front_door.yaml")
    config["admin"]["address"]["socket_address"] = {"address": ports.host, "port_value": ports.admin}
    front = _listener(config, "front_door")
    front["address"]["socket_address"] = {"address": ports.host, "port_value": ports.front_door}
    manager = _connection_manager(front)
    transcoder = _http_filter(manager, "envoy.filters.http.grpc_json_transcoder")
    transcoder["typed_config"]["proto_descriptor"] = str(descriptor_set)
    lua = _http_filter(manager, "envoy.filters.http.lua")["typed_config"]["source_codes"]["openai_status"]
    lua["inline_string"] = (ENVOY_DIR / "openai_status.lua").read_text()
    max_request_bytes = _http_filter(manager, "envoy.filters.http.buffer")["typed_config"]["max_request_bytes"]
    manager["local_reply_config"] = _openai_local_replies(max_request_bytes)
    mesh = _listener(config, "mesh")
    mesh["address"]["socket_address"] = {"address": ports.host, "port_value": ports.mesh}
    return config


def render(catalog: Catalog, descriptor_set: Path, ports: EnvoyPorts) -> dict[str, Any]:
    """A static bootstrap: every route and cluster inline (a fixed deployment; also how
    the control plane's resources are validated by a real Envoy)."""
    config = _bootstrap(descriptor_set, ports)
    routes = route_configs(catalog)
    for name in ("front_door", "mesh"):
        _connection_manager(_listener(config, name))["route_config"] = routes[name]
    config["static_resources"]["clusters"] = clusters(catalog)
    return config


def _trace(config: dict[str, Any], collector: tuple[str, int]) -> None:
    """Trace both listeners' requests into the collector (envoy/tracing.yaml)."""
    template = _load("tracing.yaml")
    for name in ("front_door", "mesh"):
        tracing = copy.deepcopy(template["tracing"])
        tracing["provider"]["typed_config"]["service_name"] = f"envoy-{name.replace('_', '-')}"
        _connection_manager(_listener(config, name))["tracing"] = tracing
    cluster = template["cluster"]
    host, port = collector
    cluster["type"] = "STATIC" if _is_ip(host) else "STRICT_DNS"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
        "address": host,
        "port_value": port,
    }
    config["static_resources"]["clusters"].append(cluster)


def render_ads(
    descriptor_set: Path,
    ports: EnvoyPorts,
    control_plane: tuple[str, int],
    node: str = "front-door",
    authorization: bool = False,
    collector: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """A bootstrap whose routes and clusters come from the control plane over ADS
    (gateway/control_plane.py), so replicas and models come and go without a restart;
    with `authorization`, every front-door request is first checked by the gateway's
    authorization service (gateway/authz.py), then by its rate limit service
    (gateway/ratelimit.py), both in the same process; with a `collector` (host, port),
    requests are traced into that OTLP/gRPC collector."""
    config = _bootstrap(descriptor_set, ports)
    if authorization:
        manager = _connection_manager(_listener(config, "front_door"))
        # After the transcoder, so a REST call is checked under its gRPC method; rate
        # limits after authorization, which names the caller they count against.
        after = manager["http_filters"].index(_http_filter(manager, "envoy.filters.http.grpc_json_transcoder"))
        manager["http_filters"][after + 1 : after + 1] = [_load("ext_authz.yaml"), _load("ratelimit.yaml")]
    config["node"] = {"id": node, "cluster": "infermesh"}
    ads = {"ads": {}, "resource_api_version": "V3"}
    for name in ("front_door", "mesh"):
        manager = _connection_manager(_listener(config, name))
        del manager["route_config"]
        manager["rds"] = {"route_config_name": name, "config_source": ads}
    host, port = control_plane
    xds = _load("control_plane_cluster.yaml")
    xds["type"] = "STATIC" if _is_ip(host) else "STRICT_DNS"
    xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
        "address": host,
        "port_value": port,
    }
    config["static_resources"]["clusters"] = [xds]
    if collector is not None:
        _trace(config, collector)
    config["dynamic_resources"] = {
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": xds["name"]}}],
        },
        "cds_config": ads,
    }
    return config


def write(config: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> None:
    """`python -m gateway.envoy_config`: render a bootstrap from a catalog file."""
    from services.runtime.catalog import EmbeddedCatalog

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
