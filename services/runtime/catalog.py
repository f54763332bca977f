"""The service catalog: which service instances exist, where, and which models they serve.

The embedded catalog is a YAML file written by whoever starts the mesh (`make run`'s
launcher, or a test); it is what the router resolves models with and what Envoy's
config is rendered from. A Consul-backed catalog implements the same interface when
CONSUL_HTTP_ADDR is set (issue 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

# The header naming the backend (catalog instance, Envoy cluster) a mesh call is for.
BACKEND_HEADER = "x-infermesh-backend"


@dataclass(frozen=True)
class ServiceInstance:
    name: str  # unique: also the Envoy cluster name, e.g. "inference-0"
    kind: str  # "router", "inference" or "provider"
    host: str
    port: int
    models: tuple[str, ...] = field(default=())


class Catalog(Protocol):
    def instances(self, kind: str | None = None) -> list[ServiceInstance]: ...


@dataclass
class EmbeddedCatalog:
    services: list[ServiceInstance]

    def instances(self, kind: str | None = None) -> list[ServiceInstance]:
        return [s for s in self.services if kind is None or s.kind == kind]

    @classmethod
    def load(cls, path: Path) -> EmbeddedCatalog:
        data = yaml.safe_load(path.read_text()) or {}
        return cls(
            [
                ServiceInstance(
                    name=item["name"],
                    kind=item["kind"],
                    host=item["host"],
                    port=int(item["port"]),
                    models=tuple(item.get("models", ())),
                )
                for item in data.get("services", [])
            ]
        )

    def save(self, path: Path) -> None:
        services = [
            {"name": s.name, "kind": s.kind, "host": s.host, "port": s.port, "models": list(s.models)}
            for s in self.services
        ]
        path.write_text(yaml.safe_dump({"services": services}, sort_keys=False))
