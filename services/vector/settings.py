"""Vector service settings, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from services.runtime.settings import ServiceSettings


class VectorSettings(ServiceSettings):
    data_dir: Path = Field(Path(".data"), description="Collections live in DATA_DIR/vector unless VECTOR_DIR is set.")
    vector_dir: Path | None = Field(None, description="Where collections live, one SQLite file each.")
    router_address: str = Field(
        "", description="The router to embed texts with (host:port); empty: the router the catalog lists."
    )
    embed_timeout_seconds: float = Field(60.0, gt=0, description="Deadline of one embedding call.")
    # The Qdrant backend (qdrant.py): a server for deployments that outgrow one machine,
    # or Qdrant's local mode for tests and development. Neither: only `embedded`.
    qdrant_url: str = Field(
        "", description="The Qdrant server (http://host:6333); empty: no Qdrant (unless QDRANT_PATH)."
    )
    qdrant_path: str = Field(
        "", description="Qdrant's local mode instead of a server: a directory, or `:memory:` (tests, development)."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="The Qdrant server's API key, if it requires one.")

    @model_validator(mode="after")
    def _one_qdrant(self) -> VectorSettings:
        if self.qdrant_url and self.qdrant_path:
            raise ValueError("QDRANT_URL and QDRANT_PATH are exclusive: a server, or local mode")
        return self
