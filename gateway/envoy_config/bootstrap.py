"""Envoy's bootstraps (envoy/front_door.yaml filled in): a static one with every route and
cluster inline, and one that gets them from the gateway over ADS, with authorization,
rate limits and tracing when asked."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.envoy_config.clusters import clusters
from gateway.envoy_config.openai import openai_local_replies
from gateway.envoy_config.routes import route_configs
from gateway.envoy_config.templates import ENVOY_DIR, connection_manager, http_filter, listener, load, point_at
from services.runtime.catalog import Catalog


@dataclass(frozen=True)
class EnvoyPorts:
    front_door: int = 8080
    mesh: int = 15001
    admin: int = 9901
    host: str = "127.0.0.1"


def _bootstrap(descriptor_set: Path, ports: EnvoyPorts) -> dict[str, Any]:
    config = load("front_door.yaml")
    config["admin"]["address"]["socket_address"] = {"address": ports.host, "port_value": ports.admin}
    front = listener(config, "front_door")
    front["address"]["socket_address"] = {"address": ports.host, "port_value": ports.front_door}
    manager = connection_manager(front)
    transcoder = http_filter(manager, "envoy.filters.http.grpc_json_transcoder")
    transcoder["typed_config"]["proto_descriptor"] = str(descriptor_set)
    lua = http_filter(manager, "envoy.filters.http.lua")["typed_config"]["source_codes"]["openai_status"]
    lua["inline_string"] = (ENVOY_DIR / "openai_status.lua").read_text()
    max_request_bytes = http_filter(manager, "envoy.filters.http.buffer")["typed_config"]["max_request_bytes"]
    manager["local_reply_config"] = openai_local_replies(max_request_bytes)
    mesh = listener(config, "mesh")
    mesh["address"]["socket_address"] = {"address": ports.host, "port_value": ports.mesh}
    return config


def render(catalog: Catalog, descriptor_set: Path, ports: EnvoyPorts) -> dict[str, Any]:
    """A static bootstrap: every route and cluster inline (a fixed deployment; also how
    the resources the gateway serves over xDS are validated by a real Envoy)."""
    config = _bootstrap(descriptor_set, ports)
    routes = route_configs(catalog)
    for name in ("front_door", "mesh"):
        connection_manager(listener(config, name))["route_config"] = routes[name]
    config["static_resources"]["clusters"] = clusters(catalog)
    return config


def _trace(config: dict[str, Any], collector: tuple[str, int]) -> None:
    """Trace both listeners' requests into the collector (envoy/tracing.yaml)."""
    template = load("tracing.yaml")
    for name in ("front_door", "mesh"):
        tracing = copy.deepcopy(template["tracing"])
        tracing["provider"]["typed_config"]["service_name"] = f"envoy-{name.replace('_', '-')}"
        connection_manager(listener(config, name))["tracing"] = tracing
    cluster = template["cluster"]
    point_at(cluster, *collector)
    config["static_resources"]["clusters"].append(cluster)


def render_ads(
    descriptor_set: Path,
    ports: EnvoyPorts,
    gateway: tuple[str, int],
    node: str = "front-door",
    authorization: bool = False,
    collector: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """A bootstrap whose routes and clusters come from the gateway at `gateway` (host,
    port) over ADS (gateway/xds/), so replicas and models come and go without a restart;
    with `authorization`, every front-door request is first checked by the gateway's
    authorization service (gateway/authz/), then by its rate limit service
    (gateway/ratelimit/), both in the same process; with a `collector` (host, port),
    requests are traced into that OTLP/gRPC collector."""
    config = _bootstrap(descriptor_set, ports)
    if authorization:
        manager = connection_manager(listener(config, "front_door"))
        # After the transcoder, so a REST call is checked under its gRPC method; rate
        # limits after authorization, which names the caller they count against.
        after = manager["http_filters"].index(http_filter(manager, "envoy.filters.http.grpc_json_transcoder"))
        manager["http_filters"][after + 1 : after + 1] = [load("ext_authz.yaml"), load("ratelimit.yaml")]
    config["node"] = {"id": node, "cluster": "infermesh"}
    ads = {"ads": {}, "resource_api_version": "V3"}
    for name in ("front_door", "mesh"):
        manager = connection_manager(listener(config, name))
        del manager["route_config"]
        manager["rds"] = {"route_config_name": name, "config_source": ads}
    upstream = load("gateway_cluster.yaml")
    point_at(upstream, *gateway)
    config["static_resources"]["clusters"] = [upstream]
    if collector is not None:
        _trace(config, collector)
    config["dynamic_resources"] = {
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": upstream["name"]}}],
        },
        "cds_config": ads,
    }
    return config


def write(config: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
