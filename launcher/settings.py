"""Settings of the one-machine mesh, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.settings import CommaList


class MeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    host: str = "127.0.0.1"
    front_door_port: int = Field(8080, description="Envoy: REST, gRPC and the OpenAI API.")
    admin_port: int = Field(9901, description="Envoy's admin interface.")
    mesh_port: int = Field(15001, description="Envoy's service-to-service listener.")
    router_port: int = 50051
    inference_port: int = Field(50052, description="The first inference replica's port; replica N's is 100·N above.")
    inference_replicas: int = Field(1, ge=1, le=16, description="Inference servers, each with every model.")
    gateway_port: int = Field(
        18000, description="The gateway: Envoy's routes and clusters over ADS, authorization, rate limits."
    )
    auth: bool = Field(
        True,
        description="Check every front-door request's credentials (API keys, OIDC tokens); the first start "
        "issues an admin API key and prints it once. `false` for local development without credentials.",
    )
    registry_port: int = 50053
    vector_port: int = Field(50054, description="The vector search service.")
    jobs_port: int = Field(50055, description="The jobs service: OpenAI's Files and Batch APIs.")
    openai_port: int = 50061
    gemini_port: int = 50062
    router_metrics_port: int | None = 9100
    inference_metrics_port: int | None = Field(
        9101, description="The first inference replica's; replica N's 100·N above."
    )
    registry_metrics_port: int | None = 9102
    openai_metrics_port: int | None = 9103
    gemini_metrics_port: int | None = 9104
    gateway_metrics_port: int | None = 9105
    vector_metrics_port: int | None = 9106
    jobs_metrics_port: int | None = 9107
    launcher_metrics_port: int | None = Field(
        9108, description="The launcher's own metrics: its children's restarts, which are up, which were given up."
    )
    registry_database_url: str = Field("", description="The registry's database; empty: SQLite in data_dir.")
    vector_dir: Path | None = Field(None, description="The vector service's collections; empty: data_dir/vector.")
    providers: CommaList = Field(
        ["openai", "gemini"],
        description="Hosted provider adapters to start; each reports NOT_SERVING until its API key is set.",
    )
    models: CommaList = Field(["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2"])
    data_dir: Path = Field(Path(".data"), description="Prepared model weights and run files.")
    ready_timeout_seconds: float = Field(900.0, description="Give up if the mesh is not ready by then.")

    def inference_ports(self, index: int) -> tuple[int, int | None]:
        """Replica `index`'s gRPC and metrics ports (100 apart, clear of the other services')."""
        metrics = self.inference_metrics_port + 100 * index if self.inference_metrics_port else None
        return self.inference_port + 100 * index, metrics
