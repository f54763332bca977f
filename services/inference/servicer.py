"""The gRPC face of the inference core: protos in, plain calls, protos out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh_inference.core import InferenceCore
from infermesh_inference.models.base import Capability, FinishReason, GenerationParams, TextChunk, Usage
from infermesh_inference.repository import ModelEntry, ModelState
from infermesh_runtime.errors import InvalidArgument, Unimplemented

ROLES = {types.ROLE_SYSTEM: "system", types.ROLE_USER: "user", types.ROLE_ASSISTANT: "assistant"}
FINISH = {
    None: types.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: types.FINISH_REASON_STOP,
    FinishReason.LENGTH: types.FINISH_REASON_LENGTH,
}
CAPABILITIES = {
    Capability.TEXT_GENERATION: types.CAPABILITY_TEXT_GENERATION,
    Capability.CHAT: types.CAPABILITY_CHAT,
    Capability.EMBEDDING: types.CAPABILITY_EMBEDDING,
    Capability.IMAGE_DESCRIPTION: types.CAPABILITY_IMAGE_DESCRIPTION,
}
STATES = {
    ModelState.UNLOADED: types.MODEL_STATE_UNLOADED,
    ModelState.LOADING: types.MODEL_STATE_LOADING,
    ModelState.READY: types.MODEL_STATE_READY,
    ModelState.DRAINING: types.MODEL_STATE_DRAINING,
    ModelState.FAILED: types.MODEL_STATE_FAILED,
}
DEFAULT_PAGE_SIZE = 100


def sampling_from(request: pb.GenerateTextRequest | pb.ChatRequest) -> GenerationParams:
    return GenerationParams(
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else 0.0,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        top_k=request.top_k if request.HasField("top_k") else 0,
        stop_sequences=tuple(request.stop_sequences),
        seed=request.seed if request.HasField("seed") else None,
        repetition_penalty=request.repetition_penalty if request.HasField("repetition_penalty") else 1.0,
    )


def usage_proto(usage: Usage | None) -> types.Usage | None:
    if usage is None:
        return None
    return types.Usage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens
    )


def model_proto(entry: ModelEntry) -> types.Model:
    model = entry.model
    proto = types.Model(
        name=f"models/{model.model_id}",
        model_id=model.model_id,
        capabilities=sorted(CAPABILITIES[c] for c in model.capabilities),
        state=STATES[entry.state],
        context_length=model.context_length,
        device=model.device,
        dtype=model.dtype,
        embedding_dimensions=model.embedding_dimensions,
        memory_bytes=entry.memory_bytes,
        load_seconds=entry.load_seconds,
        active_requests=entry.active,
        error=entry.error,
    )
    if entry.last_used:
        proto.last_used_time.FromNanoseconds(int(entry.last_used * 1e9))
    return proto


async def collect(chunks: AsyncIterator[TextChunk]) -> TextChunk:
    """Join a stream of chunks into one, keeping the final finish reason and usage."""
    parts: list[str] = []
    last = TextChunk("")
    async for chunk in chunks:
        parts.append(chunk.text)
        last = chunk
    return TextChunk("".join(parts), last.finish_reason, last.usage)


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def _text(self, model: str, chunk: TextChunk) -> pb.GenerateTextResponse:
        return pb.GenerateTextResponse(
            text=chunk.text, finish_reason=FINISH[chunk.finish_reason], usage=usage_proto(chunk.usage), model=model
        )

    def _chat(self, model: str, chunk: TextChunk) -> pb.ChatResponse:
        return pb.ChatResponse(
            message=pb.ChatMessage(role=types.ROLE_ASSISTANT, content=chunk.text),
            finish_reason=FINISH[chunk.finish_reason],
            usage=usage_proto(chunk.usage),
            model=model,
        )

    async def GenerateText(self, request, context):
        chunk = await collect(self.core.generate(request.model, request.prompt, sampling_from(request)))
        return self._text(request.model, chunk)

    async def StreamGenerateText(self, request, context):
        async for chunk in self.core.generate(request.model, request.prompt, sampling_from(request)):
            yield self._text(request.model, chunk)

    def _messages(self, request: pb.ChatRequest) -> list[tuple[str, str]]:
        return [(ROLES[m.role], m.content) for m in request.messages]

    async def Chat(self, request, context):
        chunk = await collect(self.core.chat(request.model, self._messages(request), sampling_from(request)))
        return self._chat(request.model, chunk)

    async def StreamChat(self, request, context):
        async for chunk in self.core.chat(request.model, self._messages(request), sampling_from(request)):
            yield self._chat(request.model, chunk)

    async def Embed(self, request, context):
        result = await self.core.embed(request.model, list(request.inputs))
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(index=i, values=v, input_tokens=n)
                for i, (v, n) in enumerate(zip(result.vectors, result.token_counts, strict=True))
            ],
            usage=usage_proto(result.usage),
            model=request.model,
        )

    async def DescribeImage(self, request, context):
        async with self.core.repository.use(request.model, Capability.IMAGE_DESCRIPTION):
            pass
        raise Unimplemented("no local image model is implemented yet", reason="NOT_IMPLEMENTED", model=request.model)

    async def ListModels(self, request, context):
        entries = self.core.repository.entries()
        start = 0
        if request.page_token:
            if not request.page_token.isdigit() or int(request.page_token) > len(entries):
                raise InvalidArgument("page_token is not one this server issued", reason="INVALID_PAGE_TOKEN")
            start = int(request.page_token)
        end = start + (request.page_size or DEFAULT_PAGE_SIZE)
        return pb.ListModelsResponse(
            models=[model_proto(e) for e in entries[start:end]],
            next_page_token=str(end) if end < len(entries) else "",
        )

    async def Warmup(self, request, context):
        started = time.perf_counter()
        entries = await self.core.warmup(list(request.models))
        return pb.WarmupResponse(
            models=[model_proto(e) for e in entries], duration_seconds=time.perf_counter() - started
        )
