"""The router's typed public API: resolve the model to a backend (falling back along the
registry's chain when it cannot answer), forward the request, and answer saying which
model did; batches, parallel calls and ensembles are made of such calls (orchestration.py)."""

from __future__ import annotations

from infermesh.router.v1 import router_service_pb2_grpc as pb_grpc
from infermesh_router import failover, orchestration
from infermesh_router.backends import Backends
from infermesh_router.images import check_image


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        stub = backends.stub
        self._generate = lambda request, options: stub.GenerateText(request, **options)
        self._stream_generate = lambda request, options: stub.StreamGenerateText(request, **options)
        self._chat = lambda request, options: stub.Chat(request, **options)
        self._stream_chat = lambda request, options: stub.StreamChat(request, **options)
        self._describe = lambda request, options: stub.DescribeImage(request, **options)

    async def GenerateText(self, request, context):
        return (await failover.unary(self.backends, "GenerateText", self._generate, request, context)).reply

    async def StreamGenerateText(self, request, context):
        async for chunk in failover.stream(self.backends, "GenerateText", self._stream_generate, request, context):
            yield chunk

    async def Chat(self, request, context):
        return (await failover.unary(self.backends, "Chat", self._chat, request, context)).reply

    async def StreamChat(self, request, context):
        async for chunk in failover.stream(self.backends, "Chat", self._stream_chat, request, context):
            yield chunk

    async def Embed(self, request, context):
        return (await failover.unary(self.backends, "Embed", self.backends.embed, request, context)).reply

    async def DescribeImage(self, request, context):
        check_image(request.image, request.mime_type)
        return (await failover.unary(self.backends, "DescribeImage", self._describe, request, context)).reply

    async def BatchGenerateText(self, request, context):
        async for result in orchestration.batch(self.backends, self._generate, request, context):
            yield result

    async def ParallelGenerateText(self, request, context):
        return await orchestration.parallel(self.backends, self._generate, request, context)

    async def EnsembleGenerateText(self, request, context):
        return await orchestration.ensemble(self.backends, self._generate, request, context)
