"""The inference contract's gRPC face, shared by every backend that speaks it (the
local inference server, the provider adapters): protos in, plain calls on a backend,
protos out. Light on purpose: importing it pulls in no model runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh_inference.models.base import Embeddings, FinishReason, GenerationParams, TextChunk, Usage

ROLES = {types.ROLE_SYSTEM: "system", types.ROLE_USER: "user", types.ROLE_ASSISTANT: "assistant"}
FINISH = {
    None: types.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: types.FINISH_REASON_STOP,
    FinishReason.LENGTH: types.FINISH_REASON_LENGTH,
}


class Backend(Protocol):
    """What the contract's data-plane RPCs call."""

    def generate(self, model_id: str, prompt: str, sampling: GenerationParams) -> AsyncIterator[TextChunk]: ...

    def chat(
        self, model_id: str, messages: list[tuple[str, str]], sampling: GenerationParams
    ) -> AsyncIterator[TextChunk]: ...

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings: ...


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


async def collect(chunks: AsyncIterator[TextChunk]) -> TextChunk:
    """Join a stream of chunks into one, keeping the final finish reason and usage."""
    parts: list[str] = []
    last = TextChunk("")
    async for chunk in chunks:
        parts.append(chunk.text)
        last = chunk
    return TextChunk("".join(parts), last.finish_reason, last.usage)


class ContractServicer(pb_grpc.InferenceServiceServicer):
    """Generation, chat and embeddings over a `Backend`; subclasses add the rest."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

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
        chunk = await collect(self.backend.generate(request.model, request.prompt, sampling_from(request)))
        return self._text(request.model, chunk)

    async def StreamGenerateText(self, request, context):
        async for chunk in self.backend.generate(request.model, request.prompt, sampling_from(request)):
            yield self._text(request.model, chunk)

    @staticmethod
    def _messages(request: pb.ChatRequest) -> list[tuple[str, str]]:
        return [(ROLES[m.role], m.content) for m in request.messages]

    async def Chat(self, request, context):
        chunk = await collect(self.backend.chat(request.model, self._messages(request), sampling_from(request)))
        return self._chat(request.model, chunk)

    async def StreamChat(self, request, context):
        async for chunk in self.backend.chat(request.model, self._messages(request), sampling_from(request)):
            yield self._chat(request.model, chunk)

    async def Embed(self, request, context):
        result = await self.backend.embed(request.model, list(request.inputs))
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(index=i, values=v, input_tokens=n)
                for i, (v, n) in enumerate(zip(result.vectors, result.token_counts, strict=True))
            ],
            usage=usage_proto(result.usage),
            model=request.model,
        )
