"""The router's typed public API: resolve the model to a backend, forward the request,
answer in the client's terms (its model name), and meter what it cost."""

from __future__ import annotations

from infermesh.router.v1 import router_service_pb2_grpc as pb_grpc
from infermesh_router.backends import Backends, relay
from infermesh_router.metering import meter


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def GenerateText(self, request, context):
        outgoing, options, route = self.backends.prepare(request, context)
        reply = await self.backends.stub.GenerateText(outgoing, **options)
        meter(route, reply.usage)
        reply.model = request.model
        return reply

    async def StreamGenerateText(self, request, context):
        outgoing, options, route = self.backends.prepare(request, context)
        async for chunk in relay(self.backends.stub.StreamGenerateText(outgoing, **options)):
            if chunk.HasField("usage"):
                meter(route, chunk.usage)
            chunk.model = request.model
            yield chunk

    async def Chat(self, request, context):
        outgoing, options, route = self.backends.prepare(request, context)
        reply = await self.backends.stub.Chat(outgoing, **options)
        meter(route, reply.usage)
        reply.model = request.model
        return reply

    async def StreamChat(self, request, context):
        outgoing, options, route = self.backends.prepare(request, context)
        async for chunk in relay(self.backends.stub.StreamChat(outgoing, **options)):
            if chunk.HasField("usage"):
                meter(route, chunk.usage)
            chunk.model = request.model
            yield chunk

    async def Embed(self, request, context):
        outgoing, options, route = self.backends.prepare(request, context)
        reply = await self.backends.embed(outgoing, options)
        meter(route, reply.usage)
        reply.model = request.model
        return reply

    async def DescribeImage(self, request, context):
        outgoing, options, route = self.backends.prepare(request, context)
        reply = await self.backends.stub.DescribeImage(outgoing, **options)
        meter(route, reply.usage)
        reply.model = request.model
        return reply
