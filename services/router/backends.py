"""Calling backends through Envoy.

The router never dials a backend directly: every call goes to Envoy's mesh listener
with the chosen backend in a header, so retries, circuit breaking, outlier detection
and health-based routing apply to service-to-service traffic too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh_router.coalescing import EmbedCoalescer
from infermesh_runtime.catalog import BACKEND_HEADER, Catalog
from infermesh_runtime.errors import NotFound
from infermesh_runtime.telemetry import client_interceptors


class Backends:
    def __init__(
        self, catalog: Catalog, mesh_address: str, default_timeout: float, embed_coalesce_in_flight: int = 0
    ) -> None:
        self._catalog = catalog
        self._default_timeout = default_timeout
        self._channel = grpc.aio.insecure_channel(
            mesh_address,
            options=[("grpc.keepalive_time_ms", 30000), ("grpc.max_receive_message_length", 32 * 1024 * 1024)],
            interceptors=client_interceptors(),
        )
        self.stub = pb_grpc.InferenceServiceStub(self._channel)
        self._embed_in_flight = embed_coalesce_in_flight
        self._embeddings = EmbedCoalescer(lambda request, options: self.stub.Embed(request, **options))

    async def embed(self, request: pb.EmbedRequest, options: dict) -> pb.EmbedResponse:
        """Embed on the model's backend, sharing a backend call with others when it is busy
        (the in-flight allowance is per replica that serves the model)."""
        replicas = sum(1 for s in self._catalog.instances() if s.kind != "router" and request.model in s.models)
        return await self._embeddings.embed(request, options, self._embed_in_flight * max(replicas, 1))

    def models(self) -> list[str]:
        return sorted({m for s in self._catalog.instances() for m in s.models if s.kind != "router"})

    def resolve(self, model: str) -> str:
        """The backend (Envoy cluster) that serves `model`."""
        for instance in self._catalog.instances():
            if instance.kind != "router" and model in instance.models:
                return instance.name
        raise NotFound(
            f"model {model!r} is not served by this mesh; available: {', '.join(self.models()) or 'none'}",
            reason="MODEL_NOT_FOUND",
            model=model,
        )

    def call_options(self, model: str, context: grpc.aio.ServicerContext | None) -> dict:
        """Metadata naming the backend, and the caller's deadline carried on to the backend."""
        remaining = context.time_remaining() if context is not None else None
        timeout = remaining if remaining is not None else self._default_timeout
        metadata = [(BACKEND_HEADER, self.resolve(model))]
        return {"metadata": metadata, "timeout": timeout}

    async def close(self) -> None:
        await self._embeddings.close()
        await self._channel.close()


async def relay(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[Any]:
    """A backend stream's messages; if our caller goes away first, the backend call is
    cancelled at once, so the backend stops generating for nobody."""
    try:
        async for message in call:
            yield message
    finally:
        call.cancel()
