"""An inference server in this test process on port 0, with its clients; always cleaned up."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from conftest import ROOT
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import model_service_pb2_grpc as model_grpc
from services.inference.app import InferenceApp
from services.inference.settings import InferenceSettings
from services.runtime.operations import OperationsStub
from services.runtime.server import BoundServer, create_server


@dataclass
class RunningServer:
    app: InferenceApp
    bound: BoundServer
    channel: grpc.aio.Channel
    health_before_start: int

    @property
    def inference(self) -> pb_grpc.InferenceServiceStub:
        return pb_grpc.InferenceServiceStub(self.channel)

    @property
    def models(self) -> model_grpc.ModelServiceStub:
        return model_grpc.ModelServiceStub(self.channel)

    @property
    def operations(self) -> OperationsStub:
        return OperationsStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


@asynccontextmanager
async def inference_server(**overrides: object) -> AsyncIterator[RunningServer]:
    """Bind, start serving (NOT_SERVING), load the models, yield; stop and release on exit."""
    from grpc_health.v1 import health_pb2

    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data"))
    settings = InferenceSettings(**{"grpc_port": 0, "data_dir": data_dir, **overrides})
    app = InferenceApp(settings)
    bound = await create_server(settings, app)
    await bound.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{bound.port}")
    try:
        before = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        await app.start(bound.health)
        yield RunningServer(app, bound, channel, before.status)
    finally:
        await channel.close()
        await bound.server.stop(1)
        await app.close()
