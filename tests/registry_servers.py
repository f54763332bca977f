"""A registry server in this test process on port 0, and the databases it runs on: SQLite
in a temporary directory, or a real PostgreSQL server (tests/databases.py)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from databases import postgres_server
from infermesh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.registry.app import RegistryApp
from services.registry.settings import RegistrySettings
from services.runtime.server import create_server

DATABASES = ["sqlite", "postgresql"]


@contextmanager
def database(kind: str) -> Iterator[tuple[str, Path]]:
    """(REGISTRY_DATABASE_URL, data directory) for a fresh database of `kind`."""
    with tempfile.TemporaryDirectory(prefix="registry-") as data_dir:
        if kind == "sqlite":
            yield "", Path(data_dir)
        else:
            with postgres_server() as url:
                yield url, Path(data_dir)


@dataclass
class RunningRegistry:
    app: RegistryApp
    port: int
    channel: grpc.aio.Channel

    @property
    def registry(self) -> pb_grpc.RegistryServiceStub:
        return pb_grpc.RegistryServiceStub(self.channel)


@asynccontextmanager
async def registry_server(url: str, data_dir: Path, **overrides: object) -> AsyncIterator[RunningRegistry]:
    settings = RegistrySettings(
        **{"grpc_port": 0, "registry_database_url": url, "data_dir": data_dir, "watch_poll_seconds": 0.2, **overrides}
    )
    app = RegistryApp(settings)
    bound = await create_server(settings, app)
    await bound.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{bound.port}")
    try:
        await app.start(bound.health)
        yield RunningRegistry(app, bound.port, channel)
    finally:
        await channel.close()
        await bound.server.stop(1)
        await app.close()
