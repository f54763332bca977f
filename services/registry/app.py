"""The registry as an Application of the runtime kit."""

from __future__ import annotations

import logging

from grpc_health.v1._async import HealthServicer

from infermesh.registry.v1 import registry_service_pb2 as pb
from infermesh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from infermesh_registry.api_keys import ApiKeyStore
from infermesh_registry.artifacts import ArtifactStore
from infermesh_registry.audit import AuditLog
from infermesh_registry.database import Database, database_url
from infermesh_registry.seed import seed_defaults
from infermesh_registry.servicer import RegistryServicer
from infermesh_registry.settings import RegistrySettings
from infermesh_registry.store import RegistryStore
from infermesh_runtime.operations import SERVICE as OPERATIONS_SERVICE
from infermesh_runtime.operations import OperationsServicer, OperationStore, add_operations_servicer_to_server
from infermesh_runtime.server import Registration, mark_serving

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
log = logging.getLogger(__name__)


class RegistryApp:
    name = "registry"

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.database = Database(database_url(settings.registry_database_url, settings.data_dir))
        self.store = RegistryStore(self.database)
        self.api_keys = ApiKeyStore(self.database)
        self.audit = AuditLog(self.database)
        self.artifacts = ArtifactStore(settings.artifact_dir or settings.data_dir / "artifacts")
        self.operations = OperationStore()

    def registrations(self) -> list[Registration]:
        servicer = RegistryServicer(
            self.store, self.artifacts, self.operations, self.settings.watch_poll_seconds, self.api_keys, self.audit
        )
        return [
            Registration(SERVICE, pb_grpc.add_RegistryServiceServicer_to_server, servicer),
            Registration(OPERATIONS_SERVICE, add_operations_servicer_to_server, OperationsServicer(self.operations)),
        ]

    async def start(self, health: HealthServicer) -> None:
        await self.database.migrate()
        if self.settings.seed_defaults:
            await seed_defaults(self.store, self.settings)
        log.info("registry ready", extra={"database": self.database.dialect})
        await mark_serving(health, [SERVICE, OPERATIONS_SERVICE])

    async def close(self) -> None:
        await self.database.close()
