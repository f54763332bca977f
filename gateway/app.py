"""The control plane as an Application of the runtime kit: an ADS server for Envoy,
fed by the catalog."""

from __future__ import annotations

from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from grpc_health.v1._async import HealthServicer

from infermesh_gateway.control_plane import ControlPlane
from infermesh_gateway.envoy_config import Limits
from infermesh_gateway.settings import ControlPlaneSettings
from infermesh_runtime.server import Registration, mark_serving, open_catalog_from

ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name


class ControlPlaneApp:
    name = "control-plane"

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.catalog = open_catalog_from(settings)
        if self.catalog is None:
            raise ValueError("the control plane needs a catalog: set CONSUL_HTTP_ADDR, CATALOG_DIR or CATALOG_FILE")
        limits = Limits(settings.max_requests_per_backend, settings.max_pending_per_backend)
        self.control_plane = ControlPlane(self.catalog, limits)

    def registrations(self) -> list[Registration]:
        return [
            Registration(ADS_SERVICE, ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server, self.control_plane)
        ]

    async def start(self, health: HealthServicer) -> None:
        await self.catalog.start()
        await self.control_plane.start()
        await mark_serving(health, [ADS_SERVICE])

    async def close(self) -> None:
        await self.control_plane.close()
        await self.catalog.close()
