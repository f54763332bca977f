"""What the gateway serves Envoy over xDS: the clusters and routes `envoy_config` renders
for the catalog's instances (exactly those a static bootstrap puts inline, which is how
a real Envoy validates them in the tests), packed as protos, with a digest that says
whether anything changed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Extension types that appear in typed_config fields, imported so json_format knows them.
import envoy.extensions.filters.http.buffer.v3.buffer_pb2  # noqa: F401
import envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2  # noqa: F401
import envoy.extensions.filters.http.lua.v3.lua_pb2  # noqa: F401
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, json_format

from gateway import envoy_config
from services.runtime.catalog import EmbeddedCatalog, ServiceInstance

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

Resources = dict[str, dict[str, any_pb2.Any]]  # type URL → name → resource


@dataclass(frozen=True)
class Snapshot:
    version: str
    resources: Resources


def resources(
    instances: list[ServiceInstance],
    limits: envoy_config.Limits | None = None,
    count_requests: bool = True,
) -> Resources:
    """Envoy's clusters and routes for these instances, by type URL and name (see
    route_configs for `count_requests`)."""
    catalog = EmbeddedCatalog.of(instances)
    packed: Resources = {CLUSTER: {}, ROUTE: {}}
    for spec in envoy_config.clusters(catalog, limits):
        packed[CLUSTER][spec["name"]] = _pack(json_format.ParseDict(spec, cluster_pb2.Cluster()))
    for name, spec in envoy_config.route_configs(catalog, count_requests).items():
        packed[ROUTE][name] = _pack(json_format.ParseDict(spec, route_pb2.RouteConfiguration()))
    return packed


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def digest(packed: Resources) -> str:
    hashed = hashlib.sha256()
    for type_url in sorted(packed):
        for name, resource in sorted(packed[type_url].items()):
            hashed.update(type_url.encode() + name.encode() + resource.SerializeToString(deterministic=True))
    return hashed.hexdigest()
