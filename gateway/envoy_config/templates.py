"""The templates in envoy/ and the few ways the renderers reach into them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

ENVOY_DIR = Path(__file__).resolve().parents[2] / "envoy"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ENVOY_DIR / name).read_text())


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(listener for listener in config["static_resources"]["listeners"] if listener["name"] == name)


def connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def http_filter(manager: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in manager["http_filters"] if f["name"] == name)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def point_at(cluster: dict[str, Any], host: str, port: int) -> None:
    """Aim a template's single-endpoint cluster at host:port: an IP literal is static, a
    host name (compose, Kubernetes) is resolved by DNS."""
    cluster["type"] = "STATIC" if is_ip(host) else "STRICT_DNS"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
        "address": host,
        "port_value": port,
    }
