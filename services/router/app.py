"""The router as an Application of the runtime kit."""

from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1._async import HealthServicer

from infermesh.inference.v1 import model_service_pb2 as model_pb
from infermesh.openai.v1 import openai_service_pb2 as openai_pb
from infermesh.openai.v1 import openai_service_pb2_grpc as openai_grpc
from infermesh.registry.v1 import registry_service_pb2 as registry_pb
from infermesh.router.v1 import router_service_pb2 as router_pb
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from infermesh.router.v1 import usage_service_pb2 as usage_pb
from infermesh.router.v1 import usage_service_pb2_grpc as usage_grpc
from infermesh_gateway.ratelimit import open_limiter
from infermesh_router.backends import Backends
from infermesh_router.budget import RetryBudget
from infermesh_router.cache import ResponseCache
from infermesh_router.cooldown import Cooldown
from infermesh_router.metering import Metering
from infermesh_router.openai_servicer import OpenAIServicer
from infermesh_router.quota import Quotas
from infermesh_router.readiness import RoutableHealth
from infermesh_router.servicer import RouterServicer
from infermesh_router.settings import RouterSettings
from infermesh_router.usage_servicer import UsageServicer
from infermesh_runtime.server import Registration, mark_serving, open_catalog_from

ROUTER_SERVICE = router_pb.DESCRIPTOR.services_by_name["RouterService"].full_name
OPENAI_SERVICE = openai_pb.DESCRIPTOR.services_by_name["OpenAIService"].full_name
USAGE_SERVICE = usage_pb.DESCRIPTOR.services_by_name["UsageService"].full_name


class RouterApp:
    name = "router"
    # Served by inference servers and the registry behind the same front door.
    front_door_services = (
        model_pb.DESCRIPTOR.services_by_name["ModelService"].full_name,
        registry_pb.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    )

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.catalog = open_catalog_from(settings)
        if self.catalog is None:
            raise ValueError("the router needs a catalog: set CONSUL_HTTP_ADDR, CATALOG_DIR or CATALOG_FILE")
        limits = settings.limit_config()
        self.backends = Backends(
            self.catalog,
            settings.mesh_address,
            settings.backend_timeout_seconds,
            settings.embed_coalesce_in_flight,
            Cooldown(settings.cooldown_failures, settings.cooldown_seconds),
            ResponseCache(settings.cache_max_entries, settings.cache_ttl_seconds, settings.cache_redis_url),
            RetryBudget(settings.retry_budget_tokens, settings.retry_budget_token_ratio),
            Metering(settings.usage_retention_hours * 3600),
            settings.fallback_after_seconds,
            Quotas(open_limiter(limits, settings.rate_limit_redis_url or None) if limits.limited else None),
        )
        self._readiness: asyncio.Task | None = None

    def registrations(self) -> list[Registration]:
        return [
            Registration(
                ROUTER_SERVICE, router_grpc.add_RouterServiceServicer_to_server, RouterServicer(self.backends)
            ),
            Registration(
                OPENAI_SERVICE, openai_grpc.add_OpenAIServiceServicer_to_server, OpenAIServicer(self.backends)
            ),
            Registration(
                USAGE_SERVICE, usage_grpc.add_UsageServiceServicer_to_server, UsageServicer(self.backends.metering)
            ),
        ]

    async def start(self, health: HealthServicer) -> None:
        await self.catalog.start()
        # Serve only once the registry's models are known (the feed's backlog replayed).
        await self.backends.start(self.settings.registry_timeout_seconds)
        # The router holds no models: it serves as soon as it is up. Backend readiness is
        # Envoy's concern (active health checks), so a request for a loading model gets
        # UNAVAILABLE from the mesh rather than hanging here.
        await mark_serving(health, [ROUTER_SERVICE, OPENAI_SERVICE, USAGE_SERVICE])
        # Per model: whether its requests can be routed now (readiness.py).
        routable = RoutableHealth(health, ROUTER_SERVICE, self.backends.models, self.backends.routable)
        await routable.refresh()
        self._readiness = asyncio.create_task(routable.run(), name="routable-health")

    async def close(self) -> None:
        if self._readiness is not None:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
        await self.backends.close()
        await self.catalog.close()
