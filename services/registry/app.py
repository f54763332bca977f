"""The registry as an Application of the runtime kit."""

from __future__ import annotations

import logging

from grpc_health.v1._async import HealthServicer

from infermesh.registry.v1 import registry_service_pb2 as pb
from infermesh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.registry.api_keys import ApiKeyStore
from services.registry.artifacts import ArtifactStore
from services.registry.audit import AuditLog
from services.registry.database import Database, database_url
from services.registry.seed import seed_defaults
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore
from services.runtime.operations import SERVICE as OPERATIONS_SERVICE
from services.runtime.operations import OperationsServicer, OperationStore, add_operations_servicer_to_server
from services.runtime.server import Application, Registration, mark_serving

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
log = logging.getLogger(__name__)


class RegistryApp(Application):
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
