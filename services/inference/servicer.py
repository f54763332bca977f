"""The gRPC face of the inference core: protos in, plain calls, protos out."""

from __future__ import annotations

import time

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from services.backend.contract import (
    ContractServicer,
    extracted_text_proto,
    labels_proto,
    speech_params_from,
    speech_proto,
    transcript_proto,
    transcription_params_from,
)
from services.backend.types import Capability
from services.inference.core import InferenceCore
from services.inference.repository import ModelEntry, ModelState
from services.runtime.errors import InvalidArgument, Unimplemented

CAPABILITIES = {
    Capability.TEXT_GENERATION: types.CAPABILITY_TEXT_GENERATION,
    Capability.CHAT: types.CAPABILITY_CHAT,
    Capability.EMBEDDING: types.CAPABILITY_EMBEDDING,
    Capability.IMAGE_DESCRIPTION: types.CAPABILITY_IMAGE_DESCRIPTION,
    Capability.TRANSCRIPTION: types.CAPABILITY_TRANSCRIPTION,
    Capability.SPEECH_SYNTHESIS: types.CAPABILITY_SPEECH_SYNTHESIS,
    Capability.OCR: types.CAPABILITY_OCR,
    Capability.IMAGE_CLASSIFICATION: types.CAPABILITY_IMAGE_CLASSIFICATION,
}
STATES = {
    ModelState.UNLOADED: types.MODEL_STATE_UNLOADED,
    ModelState.LOADING: types.MODEL_STATE_LOADING,
    ModelState.READY: types.MODEL_STATE_READY,
    ModelState.DRAINING: types.MODEL_STATE_DRAINING,
    ModelState.FAILED: types.MODEL_STATE_FAILED,
}
DEFAULT_PAGE_SIZE = 100


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


def list_models(repository, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
    entries = repository.entries()
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


class InferenceServicer(ContractServicer):
    def __init__(self, core: InferenceCore) -> None:
        super().__init__(core)
        self.core = core

    async def DescribeImage(self, request, context):
        async with self.core.repository.use(request.model, Capability.IMAGE_DESCRIPTION):
            pass
        raise Unimplemented("no local image model is implemented yet", reason="NOT_IMPLEMENTED", model=request.model)

    async def Transcribe(self, request, context):
        params = transcription_params_from(request)
        transcript = await self.core.transcribe(request.model, request.audio, request.mime_type, params)
        return transcript_proto(transcript, request.model)

    async def StreamTranscribe(self, request, context):
        params = transcription_params_from(request)
        async for piece in self.core.stream_transcribe(request.model, request.audio, request.mime_type, params):
            yield transcript_proto(piece, request.model)

    async def Synthesize(self, request, context):
        async for chunk in self.core.synthesize(request.model, request.input, speech_params_from(request)):
            yield speech_proto(chunk, request.model)

    async def ExtractText(self, request, context):
        found = await self.core.extract_text(request.model, request.image, request.mime_type)
        return extracted_text_proto(found, request.model)

    async def ClassifyImage(self, request, context):
        top_k = request.top_k if request.HasField("top_k") else 5
        found = await self.core.classify_image(request.model, request.image, request.mime_type, top_k)
        return labels_proto(found, request.model)

    async def ListModels(self, request, context):
        return list_models(self.core.repository, request)

    async def Warmup(self, request, context):
        started = time.perf_counter()
        entries = await self.core.warmup(list(request.models))
        return pb.WarmupResponse(
            models=[model_proto(e) for e in entries], duration_seconds=time.perf_counter() - started
        )
