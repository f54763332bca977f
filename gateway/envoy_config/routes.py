"""Envoy's routes for a catalog's instances: the front door's (operators' direct routes,
the OpenAI surface, everything else to the router, each with its rate limits) and the
mesh listener's (the router's calls to each backend and pool, by header, with retries)."""

from __future__ import annotations

import copy
from typing import Any

from gateway.envoy_config.clusters import backends, pools
from gateway.envoy_config.openai import openai_routes
from gateway.envoy_config.templates import connection_manager, listener, load
from services.limits.config import REQUESTS_PER_MINUTE
from services.runtime.catalog import BACKEND_HEADER, POOL_KINDS, Catalog, ServiceInstance
from services.runtime.identity import HEADERS as IDENTITY_HEADERS
from services.runtime.identity import PRINCIPAL_HEADER

REGISTRY_PREFIX = "/infermesh.registry.v1.RegistryService/"
VECTOR_PREFIX = "/infermesh.vector.v1.VectorService/"
JOBS_PREFIX = "/infermesh.jobs.v1.BatchService/"
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _backend_route(cluster: str, kind: str) -> dict[str, Any]:
    # Envoy retries only before any response byte reached the router, so a stream is
    # never retried after its first chunk. On an inference server it retries, on another
    # replica (previous_hosts): a refused or failed connection, UNAVAILABLE, and a reset
    # before the response began (a replica killed mid-request: the request did no work a
    # client saw). A provider adapter answers UNAVAILABLE only after its own retries
    # against the provider (honouring Retry-After), and a reset call may already have
    # been billed: Envoy retries only what never reached the adapter.
    # previous_hosts re-draws a host only once by default and then takes whatever it
    # drew, which can be the replica that just failed (until health checks eject it):
    # a few more draws make that vanishingly rare.
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
                "host_selection_retry_max_attempts": 5,
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


def _jobs_routes(cluster: str) -> list[dict[str, Any]]:
    """gRPC clients reach the jobs service directly (REST callers through the OpenAI
    surface's routes, openai.py)."""
    return [{"match": {"prefix": JOBS_PREFIX}, "route": {"cluster": cluster, "timeout": "0s"}}]


def _registry_routes(registries: list[ServiceInstance]) -> list[dict[str, Any]]:
    """Operators reach the registry directly (it is not behind the router). Unary calls
    carry their own deadlines; a watch is a stream that lasts as long as its client."""
    if not registries:
        return []
    return [{"match": {"prefix": REGISTRY_PREFIX}, "route": {"cluster": registries[0].name, "timeout": "0s"}}]


def _rate_limits(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The descriptors Envoy's rate limit filter sends for a front-door route whose calls
    ext_authz checks (the registry's, the vector service's, model lifecycle): the
    caller's requests per minute. The router counts its
    own callers' requests, and per-model limits, concurrency and tokens: Envoy cannot
    read a model from a request body, nor see when a request ends."""
    prefix = route["match"].get("prefix", "")
    if prefix.startswith((REFLECTION_PREFIX, HEALTH_PREFIX)):
        return []
    return [
        {
            "actions": [
                {"generic_key": {"descriptor_key": "kind", "descriptor_value": REQUESTS_PER_MINUTE}},
                # No principal (auth off, or a public route): no descriptor, no limit.
                {"request_headers": {"header_name": PRINCIPAL_HEADER, "descriptor_key": "api_key"}},
            ]
        }
    ]


def _checked_by_the_router(route: dict[str, Any]) -> bool:
    """Whether the router checks this route's calls itself (services/router/authorization.py):
    every route to it but health checks and reflection, which ext_authz keeps (their being
    public is the gateway's setting, and Envoy's own health checks reach the router directly)."""
    prefix = route["match"].get("prefix", "")
    return route["route"]["cluster"] == "router" and not prefix.startswith((REFLECTION_PREFIX, HEALTH_PREFIX))


def _skip_ext_authz(route: dict[str, Any]) -> None:
    """No ext_authz call and no rate limit call on a route whose service checks its own
    calls (and counts its callers' requests): a Python round trip less per call. The
    identity headers go, as ext_authz would remove them: a client cannot claim to be
    someone (the router trusts them only on calls without credentials, from inside the mesh)."""
    route.setdefault("typed_per_filter_config", {})["envoy.filters.http.ext_authz"] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    }
    route["request_headers_to_remove"] = list(IDENTITY_HEADERS)


def route_configs(catalog: Catalog, count_requests: bool = True) -> dict[str, dict[str, Any]]:
    """The two listeners' routes: the front door's (lifecycle and registry routes, the
    OpenAI surface's, then everything else to the router) and the mesh listener's (each
    backend and pool by header). `count_requests`: whether the front door asks the rate
    limit service to count callers' requests (the gateway says no when no caller has a
    requests-per-minute limit, so Envoy makes no call to it at all)."""
    config = load("front_door.yaml")
    front = copy.deepcopy(connection_manager(listener(config, "front_door"))["route_config"])
    front["virtual_hosts"][0]["routes"][:0] = [
        *_lifecycle_routes(catalog.instances("inference")),
        *_registry_routes(catalog.instances("registry")),
        *_vector_routes(catalog.instances("vector")),
    ]
    routes = front["virtual_hosts"][0]["routes"]
    # The jobs cluster exists even while no jobs service does (clusters.ALWAYS_ROUTED).
    jobs = next((i.name for i in catalog.instances("jobs")), "jobs")
    routes[-1:-1] = [*openai_routes(routes[-1], jobs), *_jobs_routes(jobs)]
    for route in routes:
        if _checked_by_the_router(route):
            _skip_ext_authz(route)
        elif count_requests and (limits := _rate_limits(route)):
            route["route"]["rate_limits"] = limits
    mesh = copy.deepcopy(connection_manager(listener(config, "mesh"))["route_config"])
    pooled = sorted(pools(catalog).items())
    targets = [*((i.name, i.kind) for i in backends(catalog)), *((name, members[0].kind) for name, members in pooled)]
    mesh["virtual_hosts"][0]["routes"] = [
        *(_embed_route(name) for name, kind in targets if kind in POOL_KINDS),
        *(_backend_route(name, kind) for name, kind in targets),
    ]
    return {"front_door": front, "mesh": mesh}
