"""The gateway, Envoy's side of the mesh, as one Application of the runtime kit: the xDS
control plane (an ADS server fed by the catalog), the external authorization service
Envoy asks about every front-door request (API keys checked with the registry, found in
the catalog) and the rate limit service it asks next (counters in Redis when
configured)."""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.authz.servicer import AuthorizationServicer
from gateway.envoy_config import Limits
from gateway.ratelimit.servicer import RateLimitServicer
from gateway.settings import GatewaySettings
from gateway.xds.server import XdsServer
from services.limits.limiter import open_limiter
from services.runtime.registry_client import RegistryClient
from services.runtime.server import Application, Registration, mark_serving, open_catalog_from

ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
RATELIMIT_SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name


class GatewayApp(Application):
    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        self.catalog = open_catalog_from(settings)
        if self.catalog is None:
            raise ValueError("the gateway needs a catalog: set CONSUL_HTTP_ADDR, CATALOG_DIR or CATALOG_FILE")
        limits = Limits(settings.max_requests_per_backend, settings.max_pending_per_backend)
        rate_limits = settings.limit_config()
        # Envoy asks the rate limit service only about limits some caller has: none
        # configured (make run's default), no call at all.
        self.xds = XdsServer(self.catalog, limits, rate_limits.requests_per_caller)
        # API keys are checked with a registry from the catalog, directly: Envoy's routes come from us.
        self.registry = RegistryClient(self.catalog)
        self.authorizer, self.oidc = settings.authorizer(self.registry.authenticate)
        self.limiter = open_limiter(rate_limits, settings.rate_limit_redis_url or None)

    def registrations(self) -> list[Registration]:
        return [
            Registration(ADS_SERVICE, ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server, self.xds),
            Registration(
                AUTHZ_SERVICE,
                external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
                AuthorizationServicer(self.authorizer),
            ),
            Registration(
                RATELIMIT_SERVICE,
                rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
                RateLimitServicer(self.limiter),
            ),
        ]

    async def start(self, health: HealthServicer) -> None:
        await self.catalog.start()
        await self.xds.start()
        await mark_serving(health, [ADS_SERVICE, AUTHZ_SERVICE, RATELIMIT_SERVICE])

    async def close(self) -> None:
        await self.limiter.close()
        if self.oidc is not None:
            await self.oidc.aclose()
        await self.registry.close()
        await self.xds.close()
        await self.catalog.close()
