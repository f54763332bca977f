"""Calling backends through Envoy.

The router never dials a backend directly: every call goes to Envoy's mesh listener
with the chosen backend in a header, so retries, circuit breaking, outlier detection
and health-based routing apply to service-to-service traffic too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh_router.budget import RetryBudget
from infermesh_router.cache import ResponseCache
from infermesh_router.coalescing import EmbedCoalescer
from infermesh_router.cooldown import Cooldown
from infermesh_router.directory import ModelDirectory, Route
from infermesh_router.load import ModelLoad
from infermesh_router.metering import Metering
from infermesh_router.quota import Quotas
from infermesh_runtime.catalog import BACKEND_HEADER, Catalog
from infermesh_runtime.errors import InvalidArgument, NotFound, Unavailable
from infermesh_runtime.telemetry import client_interceptors

AUTO = "auto"
REGISTRY_WAIT_SECONDS = 10.0
log = logging.getLogger(__name__)
CONTEXT_TOO_LONG = "CONTEXT_LENGTH_EXCEEDED"


class Backends:
    def __init__(
        self,
        catalog: Catalog,
        mesh_address: str,
        default_timeout: float,
        embed_coalesce_in_flight: int = 0,
        cooldown: Cooldown | None = None,
        cache: ResponseCache | None = None,
        budget: RetryBudget | None = None,
        metering: Metering | None = None,
        fallback_after_seconds: float = 60.0,
        quotas: Quotas | None = None,
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
        # With a registry in the catalog, it says which models exist and where they run;
        # without one, the catalog's model lists do.
        self.cooldown = cooldown or Cooldown(failures=0, seconds=0)
        self.load = ModelLoad()
        self.cache = cache or ResponseCache(max_entries=0, ttl_seconds=0)
        self.budget = budget or RetryBudget(max_tokens=10, token_ratio=0.1)
        self.metering = metering or Metering()
        self.fallback_after_seconds = fallback_after_seconds
        self.quotas = quotas or Quotas(None)
        self.directory: ModelDirectory | None = None

    async def start(self, timeout: float) -> None:
        """Follow the registry, once the catalog shows one (it registers as it starts);
        a mesh whose catalog has no registry within REGISTRY_WAIT_SECONDS routes by the
        models the catalog lists."""
        deadline = asyncio.get_running_loop().time() + min(timeout, REGISTRY_WAIT_SECONDS)
        while not (registries := self._catalog.instances("registry")):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("no registry in the catalog; routing by the catalog's model lists")
                return
            await asyncio.sleep(0.1)
        self.directory = ModelDirectory(self._channel, registries[0].name, self._catalog, self.cooldown.available)
        await self.directory.start(timeout)

    async def embed(self, request: pb.EmbedRequest, options: dict) -> pb.EmbedResponse:
        """Embed on the model's backend, sharing a backend call with others when it is busy
        (the in-flight allowance is per replica that serves the model)."""
        replicas = sum(1 for s in self._catalog.instances() if s.kind != "router" and request.model in s.models)
        return await self._embeddings.embed(request, options, self._embed_in_flight * max(replicas, 1))

    def models(self) -> list[str]:
        if self.directory is not None:
            return self.directory.models()
        return sorted({m for s in self._catalog.instances() for m in s.models if s.kind not in ("router", "registry")})

    def requestable(self) -> list[str]:
        """What a request's `model` may name (with the registry: versions too, `id@version`)."""
        return self.directory.requestable() if self.directory is not None else self.models()

    def routable(self) -> list[str]:
        """Model ids whose requests can be sent somewhere now."""
        return self.directory.routable() if self.directory is not None else self.models()

    def route(self, requested: str) -> Route:
        """Which backend answers a request for `requested` (`model` or `model@version`)."""
        if self.directory is not None:
            return self.directory.route(requested)
        for instance in self._catalog.instances():
            if instance.kind not in ("router", "registry") and requested in instance.models:
                return Route(model=requested, version="", backend=instance.name, backend_model=requested)
        raise NotFound(
            f"model {requested!r} is not served by this mesh; available: {', '.join(self.models()) or 'none'}",
            reason="MODEL_NOT_FOUND",
            model=requested,
        )

    def context_window(self, model: str) -> int | None:
        """A model's context window in tokens, when the registry knows it."""
        return self.directory.context_window(model) if self.directory is not None else None

    def candidates(self, requested: str, capability: str) -> list[str]:
        """`requested`, then its fallbacks from the registry, each once. `auto` (or
        `auto:<strategy>`) means every model with the capability, best first: the first
        answers, the others are its fallbacks."""
        if requested == AUTO or requested.startswith(f"{AUTO}:"):
            if self.directory is None:
                raise InvalidArgument("`auto` needs the registry", reason="AUTO_WITHOUT_REGISTRY")
            strategy = requested.partition(":")[2] or "quality"
            ranked = self.directory.ranked(capability, strategy, self.load)
            if not ranked:
                raise Unavailable(
                    f"no registered model with {capability} has a deployment on a live backend",
                    reason="NO_MODEL_FOR_TASK",
                    capability=capability,
                )
            return ranked
        fallbacks = self.directory.fallbacks(requested) if self.directory is not None else ()
        return list(dict.fromkeys([requested, *fallbacks]))

    def prepare(self, request: Message, context: grpc.aio.ServicerContext | None) -> tuple[Message, dict, Route]:
        """The request as the chosen backend should get it (its own model id), the call's
        metadata and deadline, and the route; limits from the registry are checked here."""
        route = self.route(request.model)
        if not self.cooldown.claim(route.backend):
            raise Unavailable(
                f"{route.backend} is cooling down after repeated failures",
                reason="BACKEND_COOLING",
                backend=route.backend,
            )
        limit = route.max_output_tokens
        if limit and getattr(request, "max_tokens", 0) > limit:
            raise InvalidArgument(
                f"max_tokens {request.max_tokens} is above {route.model}'s limit of {limit} output tokens",
                reason="MAX_TOKENS_TOO_LARGE",
                model=route.model,
                max_tokens=request.max_tokens,
                limit=limit,
            )
        window = route.context_window_tokens
        if window and getattr(request, "max_tokens", 0) >= window:
            # Certain without a tokenizer: a prompt is at least one token. The backend,
            # which has the tokenizer, checks the prompt itself (CONTEXT_LENGTH_EXCEEDED).
            raise InvalidArgument(
                f"max_tokens {request.max_tokens} leaves no room for a prompt in {route.model}'s context window "
                f"of {window} tokens",
                reason=CONTEXT_TOO_LONG,
                model=route.model,
                max_tokens=request.max_tokens,
                context_length=window,
            )
        outgoing = type(request)()
        outgoing.CopyFrom(request)
        outgoing.model = route.backend_model
        remaining = context.time_remaining() if context is not None else None
        timeout = remaining if remaining is not None else self._default_timeout
        return outgoing, {"metadata": [(BACKEND_HEADER, route.backend)], "timeout": timeout}, route

    async def close(self) -> None:
        if self.directory is not None:
            await self.directory.close()
        await self._embeddings.close()
        await self.cache.close()
        await self.quotas.close()
        await self._channel.close()


async def relay(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[Any]:
    """A backend stream's messages; if our caller goes away first, the backend call is
    cancelled at once, so the backend stops generating for nobody."""
    try:
        async for message in call:
            yield message
    finally:
        call.cancel()
