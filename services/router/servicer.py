"""The router's typed public API over gRPC: each call read into a CallContext, handed to
the core (failover.py: the model, then its fallbacks; orchestration.py: calls made of
several), and answered with who answered in the response headers."""

from __future__ import annotations

from infermesh.router.v1 import router_service_pb2_grpc as pb_grpc
from services.backend.images import check_image
from services.router.calls import announcer, call_context
from services.router.core import failover, orchestration
from services.router.core.router import RouterCore
from services.router.core.rpcs import Rpc


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def _unary(self, rpc: Rpc, request, context):
        return (await failover.unary(self.core, rpc, request, call_context(context), announcer(context))).reply

    def _stream(self, rpc: Rpc, request, context):
        return failover.stream(self.core, rpc, request, call_context(context), announcer(context))

    async def GenerateText(self, request, context):
        return await self._unary(Rpc.GENERATE_TEXT, request, context)

    async def StreamGenerateText(self, request, context):
        async for chunk in self._stream(Rpc.GENERATE_TEXT, request, context):
            yield chunk

    async def Chat(self, request, context):
        return await self._unary(Rpc.CHAT, request, context)

    async def StreamChat(self, request, context):
        async for chunk in self._stream(Rpc.CHAT, request, context):
            yield chunk

    async def Embed(self, request, context):
        return await self._unary(Rpc.EMBED, request, context)

    async def DescribeImage(self, request, context):
        check_image(request.image, request.mime_type)
        return await self._unary(Rpc.DESCRIBE_IMAGE, request, context)

    async def Transcribe(self, request, context):
        return await self._unary(Rpc.TRANSCRIBE, request, context)

    async def StreamTranscribe(self, request, context):
        async for piece in self._stream(Rpc.TRANSCRIBE, request, context):
            yield piece

    async def ExtractText(self, request, context):
        check_image(request.image, request.mime_type)
        return await self._unary(Rpc.EXTRACT_TEXT, request, context)

    async def ClassifyImage(self, request, context):
        check_image(request.image, request.mime_type)
        return await self._unary(Rpc.CLASSIFY_IMAGE, request, context)

    async def Synthesize(self, request, context):
        async for chunk in self._stream(Rpc.SYNTHESIZE, request, context):
            yield chunk

    async def BatchGenerateText(self, request, context):
        async for result in orchestration.batch(self.core, request, call_context(context)):
            yield result

    async def ParallelGenerateText(self, request, context):
        return await orchestration.parallel(self.core, request, call_context(context))

    async def EnsembleGenerateText(self, request, context):
        return await orchestration.ensemble(self.core, request, call_context(context))
