"""The vector service as an Application of the runtime kit. Texts are embedded by the
router (found in the catalog, or ROUTER_ADDRESS), so the mesh's routing, fallbacks,
metrics and the caller's limits apply to them. Collections are embedded, or on Qdrant
when QDRANT_URL (or QDRANT_PATH, local mode) is set."""

from __future__ import annotations

from collections.abc import Sequence

from grpc_health.v1._async import HealthServicer

from infermesh.router.v1 import router_messages_pb2 as router_messages
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from infermesh.vector.v1 import vector_service_pb2 as pb
from infermesh.vector.v1 import vector_service_pb2_grpc as pb_grpc
from services.runtime.channels import InstanceChannels
from services.runtime.server import Application, Registration, mark_serving, open_catalog_from
from services.vector.core import VectorStore
from services.vector.qdrant import QdrantKind
from services.vector.servicer import VectorServicer
from services.vector.settings import VectorSettings

SERVICE = pb.DESCRIPTOR.services_by_name["VectorService"].full_name
# Texts per embedding call: well within the router's 2,048 inputs and 4 MiB per message.
EMBED_BATCH = 256


class VectorApp(Application):
    name = "vector"

    def __init__(self, settings: VectorSettings) -> None:
        self.settings = settings
        self.catalog = open_catalog_from(settings)
        qdrant = None
        if settings.qdrant_url or settings.qdrant_path:
            key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
            qdrant = QdrantKind.connect(settings.qdrant_url, settings.qdrant_path, key)
        self.store = VectorStore((settings.vector_dir or settings.data_dir / "vector").resolve(), self._embed, qdrant)
        self._channels = InstanceChannels(self.catalog)

    def registrations(self) -> list[Registration]:
        return [Registration(SERVICE, pb_grpc.add_VectorServiceServicer_to_server, VectorServicer(self.store))]

    def _router(self) -> router_grpc.RouterServiceStub:
        return router_grpc.RouterServiceStub(self._channels.to("router", self.settings.router_address))

    async def _embed(self, model: str, texts: list[str], metadata: Sequence[tuple[str, str]]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            request = router_messages.EmbedRequest(model=model, inputs=texts[start : start + EMBED_BATCH])
            reply = await self._router().Embed(
                request, metadata=list(metadata), timeout=self.settings.embed_timeout_seconds
            )
            vectors.extend(list(e.values) for e in reply.embeddings)
        return vectors

    async def start(self, health: HealthServicer) -> None:
        if self.catalog is not None:
            await self.catalog.start()
        await self.store.open()
        await mark_serving(health, [SERVICE])

    async def close(self) -> None:
        self.store.close()
        await self._channels.close()
        if self.catalog is not None:
            await self.catalog.close()
