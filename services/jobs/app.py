"""The jobs service as an Application of the runtime kit: the Files and Batch APIs
(servicer.py) and the runner (runner.py) that sends batches' requests through the
router (found in the catalog, or ROUTER_ADDRESS)."""

from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1._async import HealthServicer
from prometheus_client import Counter

from infermesh.jobs.v1 import batch_service_pb2 as pb
from infermesh.jobs.v1 import batch_service_pb2_grpc as pb_grpc
from services.jobs.runner import BatchRunner
from services.jobs.sender import ENDPOINTS, RouterSender
from services.jobs.servicer import BatchServicer
from services.jobs.settings import JobsSettings
from services.jobs.store import BatchStore
from services.registry.database import Database, database_url
from services.runtime.channels import InstanceChannels
from services.runtime.server import Application, Registration, mark_serving, open_catalog_from

SERVICE = pb.DESCRIPTOR.services_by_name["BatchService"].full_name
REQUESTS = Counter(
    "infermesh_jobs_requests_total", "Batch requests answered and recorded, by endpoint and HTTP status.",
    ["endpoint", "status_code"],
)  # fmt: skip


class JobsApp(Application):
    name = "jobs"

    def __init__(self, settings: JobsSettings) -> None:
        self.settings = settings
        self.catalog = open_catalog_from(settings)
        self.database = Database(database_url(settings.registry_database_url, settings.data_dir))
        self.store = BatchStore(self.database)
        self._channels = InstanceChannels(self.catalog)
        sender = RouterSender(
            lambda: self._channels.to("router", settings.router_address), settings.request_timeout_seconds
        )
        self.runner = BatchRunner(
            self.store,
            sender,
            concurrency=settings.batch_concurrency,
            poll_seconds=settings.batch_poll_seconds,
            observe=lambda endpoint, status: REQUESTS.labels(endpoint, str(status)).inc(),
        )
        self._running: asyncio.Task | None = None

    def registrations(self) -> list[Registration]:
        servicer = BatchServicer(self.store, ENDPOINTS)
        return [Registration(SERVICE, pb_grpc.add_BatchServiceServicer_to_server, servicer)]

    async def start(self, health: HealthServicer) -> None:
        if self.catalog is not None:
            await self.catalog.start()
        await self.database.migrate()
        # Batches left in progress by a process that died resume here.
        self._running = asyncio.create_task(self.runner.run(), name="batch-runner")
        await mark_serving(health, [SERVICE])

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
        await self._channels.close()
        await self.database.close()
        if self.catalog is not None:
            await self.catalog.close()
