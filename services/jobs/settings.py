"""Jobs service settings, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.runtime.settings import ServiceSettings


class JobsSettings(ServiceSettings):
    registry_database_url: str = Field(
        "", description="The registry's database (jobs keep their tables there); empty: SQLite in DATA_DIR/registry.db."
    )
    data_dir: Path = Field(Path(".data"), description="Where the registry's SQLite database lives.")
    router_address: str = Field(
        "", description="The router batch requests go through (host:port); empty: the router the catalog lists."
    )
    batch_concurrency: int = Field(
        2, ge=1, le=64, description="Requests a batch has in flight at once: low, so interactive callers come first."
    )
    batch_poll_seconds: float = Field(1.0, gt=0, description="How often the runner looks for new or cancelled batches.")
    request_timeout_seconds: float = Field(600.0, gt=0, description="Deadline of one request of a batch.")
