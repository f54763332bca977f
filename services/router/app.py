"""The router as an Application of the runtime kit."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1._async import HealthServicer

from infermesh.inference.v1 import model_service_pb2 as model_pb
from infermesh.jobs.v1 import batch_service_pb2 as batch_pb
from infermesh.openai.v1 import openai_service_pb2 as openai_pb
from infermesh.openai.v1 import openai_service_pb2_grpc as openai_grpc
from infermesh.registry.v1 import registry_service_pb2 as registry_pb
from infermesh.router.v1 import router_service_pb2 as router_pb
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from infermesh.router.v1 import usage_service_pb2 as usage_pb
from infermesh.router.v1 import usage_service_pb2_grpc as usage_grpc
from infermesh.vector.v1 import vector_service_pb2 as vector_pb
from services.authz.callers import CallerCheck
from services.authz.oidc import OidcVerifier
from services.limits.limiter import open_limiter
from services.router.authorization import Authorization
from services.router.backend_client import EnvoyBackendClient
from services.router.core.budget import RetryBudget
from services.router.core.cache import ResponseCache
from services.router.core.cooldown import Cooldown
from services.router.core.metering import Metering
from services.router.core.quota import Quotas
from services.router.core.resolvers import CatalogResolver, RegistryResolver
from services.router.core.router import RouterCore
from services.router.openai_servicer import OpenAIServicer
from services.router.readiness import RoutableHealth
from services.router.registry_feed import RegistryFeed
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.usage_servicer import UsageServicer
from services.runtime.registry_client import RegistryClient
from services.runtime.server import Application, Registration, mark_serving, open_catalog_from

log = logging.getLogger(__name__)
# How long the router waits at start for a registry to appear in the catalog.
REGISTRY_WAIT_SECONDS = 10.0
ROUTER_SERVICE = router_pb.DESCRIPTOR.services_by_name["RouterService"].full_name
OPENAI_SERVICE = openai_pb.DESCRIPTOR.services_by_name["OpenAIService"].full_name
USAGE_SERVICE = usage_pb.DESCRIPTOR.services_by_name["UsageService"].full_name


class RouterApp(Application):
    name = "router"
    # Served by inference servers, the registry, the vector and jobs services behind the
    # same front door.
    front_door_services = (
        model_pb.DESCRIPTOR.services_by_name["ModelService"].full_name,
        registry_pb.DESCRIPTOR.services_by_name["RegistryService"].full_name,
        vector_pb.DESCRIPTOR.services_by_name["VectorService"].full_name,
        batch_pb.DESCRIPTOR.services_by_name["BatchService"].full_name,
    )

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.catalog = open_catalog_from(settings)
        if self.catalog is None:
            raise ValueError("the router needs a catalog: set CONSUL_HTTP_ADDR, CATALOG_DIR or CATALOG_FILE")
        limits = settings.limit_config()
        limiter = open_limiter(limits, settings.rate_limit_redis_url or None) if limits.limited else None
        self.client = EnvoyBackendClient(settings.mesh_address)
        self.cooldown = Cooldown(settings.cooldown_failures, settings.cooldown_seconds)
        # Until a registry shows up in the catalog, the catalog's model lists route.
        self.core = RouterCore(
            CatalogResolver(self.catalog),
            self.client,
            default_timeout=settings.backend_timeout_seconds,
            cooldown=self.cooldown,
            cache=ResponseCache(settings.cache_max_entries, settings.cache_ttl_seconds, settings.cache_redis_url),
            budget=RetryBudget(settings.retry_budget_tokens, settings.retry_budget_token_ratio),
            metering=Metering(settings.usage_retention_hours * 3600),
            quotas=Quotas(limiter),
            fallback_after_seconds=settings.fallback_after_seconds,
            embed_coalesce_in_flight=settings.embed_coalesce_in_flight,
            replicas=self._replicas,
        )
        self._feed: RegistryFeed | None = None
        self._readiness: asyncio.Task | None = None
        # With AUTHORIZE_CALLS the router checks its own calls' credentials (authorization.py);
        # API keys with a registry from the catalog, directly, as the gateway does.
        self.registry: RegistryClient | None = None
        self.oidc: OidcVerifier | None = None
        if settings.authorize_calls:
            self.registry = RegistryClient(self.catalog)
            authorizer, self.oidc = settings.authorizer(self.registry.authenticate)
            self.interceptors = (Authorization(CallerCheck(authorizer, limiter)),)

    def _replicas(self, model: str) -> int:
        return sum(1 for s in self.catalog.instances() if s.kind != "router" and model in s.models)

    async def _follow_registry(self, timeout: float) -> None:
        """Follow the registry, once the catalog shows one (it registers as it starts); a
        mesh whose catalog has no registry within REGISTRY_WAIT_SECONDS routes by the
        models the catalog lists."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, REGISTRY_WAIT_SECONDS)
        while not (registries := self.catalog.instances("registry")):
            if loop.time() > deadline:
                log.warning("no registry in the catalog; routing by the catalog's model lists")
                return
            await asyncio.sleep(0.1)
        resolver = RegistryResolver(self.catalog, self.cooldown.available)
        self._feed = RegistryFeed(self.client.channel, registries[0].name, resolver)
        await self._feed.start(timeout)
        self.core.resolver = resolver

    def registrations(self) -> list[Registration]:
        return [
            Registration(ROUTER_SERVICE, router_grpc.add_RouterServiceServicer_to_server, RouterServicer(self.core)),
            Registration(OPENAI_SERVICE, openai_grpc.add_OpenAIServiceServicer_to_server, OpenAIServicer(self.core)),
            Registration(
                USAGE_SERVICE, usage_grpc.add_UsageServiceServicer_to_server, UsageServicer(self.core.metering)
            ),
        ]

    async def start(self, health: HealthServicer) -> None:
        await self.catalog.start()
        # Serve only once the registry's models are known (the feed's backlog replayed).
        await self._follow_registry(self.settings.registry_timeout_seconds)
        # The router holds no models: it serves as soon as it is up. Backend readiness is
        # Envoy's concern (active health checks), so a request for a loading model gets
        # UNAVAILABLE from the mesh rather than hanging here.
        await mark_serving(health, [ROUTER_SERVICE, OPENAI_SERVICE, USAGE_SERVICE])
        # Per model: whether its requests can be routed now (readiness.py).
        routable = RoutableHealth(health, ROUTER_SERVICE, self.core.models, self.core.routable)
        await routable.refresh()
        self._readiness = asyncio.create_task(routable.run(), name="routable-health")

    async def close(self) -> None:
        if self._readiness is not None:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
        if self._feed is not None:
            await self._feed.close()
        await self.core.close()
        if self.oidc is not None:
            await self.oidc.aclose()
        if self.registry is not None:
            await self.registry.close()
        await self.catalog.close()
