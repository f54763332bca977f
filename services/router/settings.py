"""Router settings, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from infermesh_runtime.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    catalog_file: Path = Field(description="The embedded catalog (YAML) listing backends and their models.")
    mesh_address: str = Field(
        "127.0.0.1:15001", description="Envoy's service-to-service listener; every backend call goes through it."
    )
    backend_timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline for a backend call when the caller set none."
    )
