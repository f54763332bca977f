"""Calling backends through Envoy (the core's BackendClient, over gRPC).

The router never dials a backend directly: every call goes to Envoy's mesh listener
with the chosen backend in a header, so retries, circuit breaking, outlier detection
and health-based routing apply to service-to-service traffic too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message

from infermesh.inference.v1 import inference_service_pb2 as inference_pb
from services.router.core.backend import BackendError
from services.router.core.rpcs import Rpc
from services.runtime.catalog import BACKEND_HEADER
from services.runtime.errors import status_of
from services.runtime.telemetry import client_interceptors

SERVICE = inference_pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
STREAMING = {
    Rpc.GENERATE_TEXT: "StreamGenerateText",
    Rpc.CHAT: "StreamChat",
    Rpc.TRANSCRIBE: "StreamTranscribe",
    Rpc.SYNTHESIZE: "Synthesize",
}


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class EnvoyBackendClient:
    def __init__(self, mesh_address: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            mesh_address,
            options=[("grpc.keepalive_time_ms", 30000), ("grpc.max_receive_message_length", 32 * 1024 * 1024)],
            interceptors=client_interceptors(),
        )
        # The router's messages go out as they are and replies parse as the router's
        # types (rpcs.py): the backend contract's wire format, without re-encoding.
        self._unary = {
            rpc: self.channel.unary_unary(f"/{SERVICE}/{rpc.method}", _serialize, rpc.reply_type.FromString)
            for rpc in Rpc
            if rpc is not Rpc.SYNTHESIZE  # a stream alone
        }
        self._streams = {
            rpc: self.channel.unary_stream(f"/{SERVICE}/{name}", _serialize, rpc.reply_type.FromString)
            for rpc, name in STREAMING.items()
        }

    async def call(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> Message:
        # A caller that goes away (a cancelled batch, a client that hung up) cancels the
        # call, so the backend stops too (telemetry.py's interceptor keeps that true).
        try:
            return await self._unary[rpc](request, metadata=[(BACKEND_HEADER, backend)], timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise BackendError(status_of(error)) from None

    async def stream(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> AsyncIterator[Message]:
        """The backend's stream; if our caller goes away first, the backend call is
        cancelled at once, so the backend stops generating for nobody."""
        call = self._streams[rpc](request, metadata=[(BACKEND_HEADER, backend)], timeout=timeout)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            raise BackendError(status_of(error)) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()
