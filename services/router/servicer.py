"""The router's typed public API: resolve the model, forward the request unchanged."""

from __future__ import annotations

from infermesh.router.v1 import router_service_pb2_grpc as pb_grpc
from infermesh_router.backends import Backends, relay


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def GenerateText(self, request, context):
        return await self.backends.stub.GenerateText(request, **self.backends.call_options(request.model, context))

    async def StreamGenerateText(self, request, context):
        call = self.backends.stub.StreamGenerateText(request, **self.backends.call_options(request.model, context))
        async for chunk in relay(call):
            yield chunk

    async def Chat(self, request, context):
        return await self.backends.stub.Chat(request, **self.backends.call_options(request.model, context))

    async def StreamChat(self, request, context):
        call = self.backends.stub.StreamChat(request, **self.backends.call_options(request.model, context))
        async for chunk in relay(call):
            yield chunk

    async def Embed(self, request, context):
        return await self.backends.embed(request, self.backends.call_options(request.model, context))

    async def DescribeImage(self, request, context):
        return await self.backends.stub.DescribeImage(request, **self.backends.call_options(request.model, context))
