"""The router's client of backends: a caller that goes away stops the backend's work, with
tracing on too (its client interceptors once kept a cancelled unary call running, so a
cancelled batch went on generating for nobody)."""

from __future__ import annotations

import asyncio

import pytest

from infermesh.inference.v1 import inference_service_pb2_grpc as inference_grpc
from infermesh.router.v1 import router_messages_pb2 as pb
from services.router.backend_client import EnvoyBackendClient
from services.router.core.rpcs import Rpc
from support.serving import serving

pytestmark = pytest.mark.asyncio


class SlowBackend(inference_grpc.InferenceServiceServicer):
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def GenerateText(self, request, context):
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.GenerateTextResponse(text="too late")


@pytest.mark.parametrize("tracing", [False, True], ids=["plain", "traced"])
async def test_a_cancelled_unary_call_stops_the_backend(monkeypatch, tracing):
    if tracing:  # the client then carries OpenTelemetry's interceptors (nothing is exported)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    backend = SlowBackend()
    async with serving([(inference_grpc.add_InferenceServiceServicer_to_server, backend)]) as served:
        client = EnvoyBackendClient(served.address)
        try:
            request = pb.GenerateTextRequest(model="m", prompt="a long story")
            call = asyncio.create_task(client.call(Rpc.GENERATE_TEXT, request, "inference/m", 30))
            await asyncio.wait_for(backend.started.wait(), 10)
            call.cancel()
            await asyncio.wait_for(backend.cancelled.wait(), 5)
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await client.close()
