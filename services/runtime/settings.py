"""Settings every service shares, read from the environment once in main()."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# A list setting written as `a,b,c` in the environment.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


class ServiceSettings(BaseSettings):
    """Transport, shutdown and logging settings common to all services."""

    model_config = SettingsConfigDict(extra="ignore")

    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port; unset disables it.")
    drain_seconds: float = Field(
        1.0, ge=0, description="Time between reporting NOT_SERVING and closing, so Envoy stops routing here."
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="Time in-flight calls get to finish.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(True, description="One JSON object per log line.")

    # The catalog (services/runtime/catalog.py): where this instance registers and where
    # readers find the others. CONSUL_HTTP_ADDR picks Consul; else CATALOG_DIR the
    # embedded one; neither, no registration.
    consul_http_addr: str = Field("", description="Consul's HTTP address (host:port); empty: embedded catalog.")
    catalog_dir: Path | None = Field(None, description="The embedded catalog's directory (one file per instance).")
    catalog_file: Path | None = Field(
        None, description="Fixed catalog entries (YAML `services:` list) for services that do not register."
    )
    instance_name: str = Field("", description="This instance's name in the catalog; default: kind-host-port.")
    advertise_host: str = Field(
        "", description="The address others reach this instance at; default: GRPC_HOST (or the host name for 0.0.0.0)."
    )
