"""The mesh's own services in this test process, each on `support.serving`, with the
stubs a test calls them through: the inference server, the registry, a provider adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.inference.v1 import inference_service_pb2_grpc as inference_grpc
from infermesh.inference.v1 import model_service_pb2_grpc as model_grpc
from infermesh.registry.v1 import registry_service_pb2_grpc as registry_grpc
from services.inference.app import InferenceApp
from services.inference.settings import InferenceSettings
from services.providers.app import ProviderApp
from services.providers.settings import ProviderSettings
from services.registry.app import RegistryApp
from services.registry.settings import RegistrySettings
from services.runtime.operations import OperationsStub
from support.paths import data_dir
from support.serving import Served, serving


@dataclass
class RunningServer:
    """An inference server, and the health it reported before its models loaded."""

    app: InferenceApp
    served: Served
    health_before_start: int

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.served.channel

    @property
    def inference(self) -> inference_grpc.InferenceServiceStub:
        return inference_grpc.InferenceServiceStub(self.served.channel)

    @property
    def models(self) -> model_grpc.ModelServiceStub:
        return model_grpc.ModelServiceStub(self.served.channel)

    @property
    def operations(self) -> OperationsStub:
        return OperationsStub(self.served.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.served.channel)


@asynccontextmanager
async def inference_server(**overrides: object) -> AsyncIterator[RunningServer]:
    """Bind, start serving (NOT_SERVING), load the models, yield; stop and release on exit."""
    settings = InferenceSettings(**{"grpc_port": 0, "data_dir": data_dir(), **overrides})
    app = InferenceApp(settings)
    async with serving(app, settings, start=False) as served:
        before = await health_pb2_grpc.HealthStub(served.channel).Check(health_pb2.HealthCheckRequest())
        await app.start(served.health)
        yield RunningServer(app, served, before.status)


@dataclass
class RunningRegistry:
    app: RegistryApp
    port: int
    served: Served

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.served.channel

    @property
    def registry(self) -> registry_grpc.RegistryServiceStub:
        return registry_grpc.RegistryServiceStub(self.served.channel)


@asynccontextmanager
async def registry_server(url: str, data_dir: Path, **overrides: object) -> AsyncIterator[RunningRegistry]:
    """A registry on the database at `url` ("" for SQLite in `data_dir`; see
    support.databases.registry_database)."""
    settings = RegistrySettings(
        **{"grpc_port": 0, "registry_database_url": url, "data_dir": data_dir, "watch_poll_seconds": 0.2, **overrides}
    )
    app = RegistryApp(settings)
    async with serving(app, settings) as served:
        yield RunningRegistry(app, served.port, served)


@asynccontextmanager
async def provider_server(
    **settings: object,
) -> AsyncIterator[tuple[ProviderApp, inference_grpc.InferenceServiceStub, health_pb2_grpc.HealthStub]]:
    """A provider adapter (PROVIDER and its API settings as given): the app, its
    inference stub and its health stub."""
    config = ProviderSettings(**{"grpc_port": 0, "max_retry_wait_seconds": 2.0, **settings})
    app = ProviderApp(config)
    async with serving(app, config) as served:
        yield app, inference_grpc.InferenceServiceStub(served.channel), health_pb2_grpc.HealthStub(served.channel)
