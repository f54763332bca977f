"""Vector service settings, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from infermesh_runtime.settings import ServiceSettings


class VectorSettings(ServiceSettings):
    data_dir: Path = Field(Path(".data"), description="Collections live in DATA_DIR/vector unless VECTOR_DIR is set.")
    vector_dir: Path | None = Field(None, description="Where collections live, one SQLite file each.")
    router_address: str = Field(
        "", description="The router to embed texts with (host:port); empty: the router the catalog lists."
    )
    embed_timeout_seconds: float = Field(60.0, gt=0, description="Deadline of one embedding call.")
