"""Registry settings, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from infermesh_runtime.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    registry_database_url: str = Field(
        "",
        description="Database URL: postgresql://user:password@host/db for PostgreSQL; empty means SQLite in "
        "DATA_DIR/registry.db.",
    )
    data_dir: Path = Field(Path(".data"), description="Where the SQLite database lives.")
    artifact_dir: Path | None = Field(None, description="Where imported artifacts go; default DATA_DIR/artifacts.")
    seed_defaults: bool = Field(True, description="Register the mesh's default models at start (idempotent).")
    watch_poll_seconds: float = Field(
        1.0, gt=0, description="How often a watch looks for changes made by other registry replicas."
    )
