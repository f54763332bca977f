"""The OpenAI-compatible surface, served as google.api.HttpBody through Envoy's transcoder.

One path serves streaming and non-streaming requests: the `stream` field decides.
A stream's first frame is sent only after the backend's first chunk arrives, so any
error before then (unknown model, context too long) is a real HTTP error status;
an error after that is an in-band `data: {"error": ...}` event.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import protovalidate
from google.api import httpbody_pb2
from google.rpc import code_pb2

from infermesh.openai.v1 import openai_service_pb2_grpc as pb_grpc
from infermesh_router import failover
from infermesh_router import openai_schema as oa
from infermesh_router.backends import Backends
from infermesh_runtime.errors import DomainError, InvalidArgument, NotFound, status_of

log = logging.getLogger(__name__)


def json_body(payload: dict[str, Any]) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(payload).encode())


def sse(payload: dict[str, Any] | str) -> httpbody_pb2.HttpBody:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return httpbody_pb2.HttpBody(content_type="text/event-stream", data=f"data: {data}\n\n".encode())


class OpenAIServicer(pb_grpc.OpenAIServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.created = int(time.time())
        stub = backends.stub
        self._generate = lambda request, options: stub.GenerateText(request, **options)
        self._stream_generate = lambda request, options: stub.StreamGenerateText(request, **options)
        self._chat = lambda request, options: stub.Chat(request, **options)
        self._stream_chat = lambda request, options: stub.StreamChat(request, **options)

    @staticmethod
    def _parse(schema: type, request: Any) -> tuple[Any, Any]:
        """Parse the JSON body and check it against the typed request's rules."""
        body = oa.parse(schema, request.body.data)
        proto = body.to_proto()
        protovalidate.validate(proto)
        return body, proto

    async def CreateChatCompletion(self, request, context):
        body, proto = self._parse(oa.ChatCompletionRequest, request)
        ident, created = oa.completion_id("chatcmpl"), oa.now()
        if not body.stream:
            reply = (await failover.unary(self.backends, "Chat", self._chat, proto, context)).reply
            yield json_body(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": reply.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.message.content},
                            "finish_reason": oa.finish_reason(reply.finish_reason),
                            "logprobs": None,
                        }
                    ],
                    "usage": oa.usage_dict(reply.usage),
                }
            )
            return

        def chunk(delta: dict[str, Any], finish: str | None, model: str) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        first = True
        async for item in _guarded(
            failover.stream(self.backends, "Chat", self._stream_chat, proto, context, in_band_errors=False)
        ):
            if isinstance(item, httpbody_pb2.HttpBody):
                yield item
                return
            delta: dict[str, Any] = {"content": item.message.content} if item.message.content else {}
            if first:
                delta["role"] = "assistant"
                delta.setdefault("content", "")
                first = False
            finish = oa.finish_reason(item.finish_reason)
            if delta or finish:
                yield sse(chunk(delta, finish, item.model))
            if finish and body.stream_options and body.stream_options.include_usage:
                yield sse({**chunk({}, None, item.model), "choices": [], "usage": oa.usage_dict(item.usage)})
        yield sse("[DONE]")

    async def CreateCompletion(self, request, context):
        body, proto = self._parse(oa.CompletionRequest, request)
        ident, created = oa.completion_id("cmpl"), oa.now()

        def completion(text: str, finish: str | None, model: str) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }

        if not body.stream:
            reply = (await failover.unary(self.backends, "GenerateText", self._generate, proto, context)).reply
            payload = completion(reply.text, oa.finish_reason(reply.finish_reason), reply.model)
            yield json_body({**payload, "usage": oa.usage_dict(reply.usage)})
            return
        async for item in _guarded(
            failover.stream(self.backends, "GenerateText", self._stream_generate, proto, context, in_band_errors=False)
        ):
            if isinstance(item, httpbody_pb2.HttpBody):
                yield item
                return
            finish = oa.finish_reason(item.finish_reason)
            if item.text or finish:
                yield sse(completion(item.text, finish, item.model))
            if finish and body.stream_options and body.stream_options.include_usage:
                yield sse({**completion("", None, item.model), "choices": [], "usage": oa.usage_dict(item.usage)})
        yield sse("[DONE]")

    async def CreateEmbedding(self, request, context):
        body, proto = self._parse(oa.EmbeddingRequest, request)
        reply = (await failover.unary(self.backends, "Embed", self.backends.embed, proto, context)).reply
        width = len(reply.embeddings[0].values) if reply.embeddings else 0
        if body.dimensions is not None and body.dimensions != width:
            raise InvalidArgument(
                f"model {body.model!r} makes {width}-dimensional embeddings; dimensions={body.dimensions} "
                "cannot be honoured",
                reason="UNSUPPORTED_DIMENSIONS",
                model=body.model,
                dimensions=body.dimensions,
            )
        data = [
            {"object": "embedding", "index": e.index, "embedding": oa.encode_embedding(e.values, body.encoding_format)}
            for e in reply.embeddings
        ]
        usage = {"prompt_tokens": reply.usage.input_tokens, "total_tokens": reply.usage.input_tokens}
        return json_body({"object": "list", "data": data, "model": reply.model, "usage": usage})

    async def ListModels(self, request, context):
        models = [oa.model_dict(m, self.created) for m in self.backends.models()]
        return json_body({"object": "list", "data": models})

    async def GetModel(self, request, context):
        if request.model not in self.backends.models():
            raise NotFound(f"model {request.model!r} does not exist", reason="MODEL_NOT_FOUND", model=request.model)
        return json_body(oa.model_dict(request.model, self.created))


async def _guarded(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Yield a stream's chunks; once one has been sent, turn a failure into an in-band SSE
    error event (an HttpBody) instead of cutting the stream silently."""
    started = False
    try:
        async for item in chunks:
            started = True
            yield item
    except (grpc.aio.AioRpcError, DomainError) as exc:
        if not started:
            raise
        status = status_of(exc)
        code = code_pb2.Code.Name(status.code)
        log.warning("stream failed after it started", extra={"code": code, "error": status.message})
        yield sse(oa.error_event(code, status.message or "stream failed"))
