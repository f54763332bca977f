"""Envoy's configuration, rendered with pyyaml from the templates in envoy/ and a catalog:
the clusters (clusters.py) and routes (routes.py, with the OpenAI surface's in openai.py)
for the catalog's instances — what the gateway serves Envoy over xDS — and the bootstraps
that carry them inline or point Envoy at the gateway (bootstrap.py). `python -m
gateway.envoy_config` renders a static bootstrap from a catalog file."""

from gateway.envoy_config.bootstrap import EnvoyPorts, render, render_ads, write
from gateway.envoy_config.clusters import HEALTH_SERVICES, Limits, clusters
from gateway.envoy_config.routes import route_configs

__all__ = [
    "HEALTH_SERVICES",
    "EnvoyPorts",
    "Limits",
    "clusters",
    "render",
    "render_ads",
    "route_configs",
    "write",
]
