"""The inference contract served by a hosted provider."""

from __future__ import annotations

from collections.abc import AsyncIterator

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from services.backend.contract import (
    ContractServicer,
    speech_params_from,
    speech_proto,
    transcript_proto,
    transcription_params_from,
    usage_proto,
)
from services.backend.types import Embeddings, GenerationParams, TextChunk, Usage
from services.runtime.errors import FailedPrecondition, Unavailable

CAPABILITIES = {
    "text": [types.CAPABILITY_TEXT_GENERATION, types.CAPABILITY_CHAT],
    "vision": [types.CAPABILITY_IMAGE_DESCRIPTION],
    "embedding": [types.CAPABILITY_EMBEDDING],
    "transcription": [types.CAPABILITY_TRANSCRIPTION],
    "speech": [types.CAPABILITY_SPEECH_SYNTHESIS],
}
DEFAULT_PROMPT = "Describe this image."


class Unconfigured:
    """A provider without credentials: every call says so (and names no secret)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _refuse(self) -> Unavailable:
        return Unavailable(self.reason, reason="PROVIDER_NOT_CONFIGURED")

    def generate(self, model_id: str, prompt: str, sampling: GenerationParams) -> AsyncIterator[TextChunk]:
        raise self._refuse()

    def chat(self, model_id, turns, sampling) -> AsyncIterator[TextChunk]:
        raise self._refuse()

    async def embed(self, model_id: str, texts: list[str]) -> Embeddings:
        raise self._refuse()

    async def describe_image(self, model_id, image, mime_type, prompt, max_tokens) -> tuple[str, Usage]:
        raise self._refuse()

    async def transcribe(self, model_id, audio, mime_type, params):
        raise self._refuse()

    async def speak(self, model_id, text, params):
        raise self._refuse()
        yield  # a stream

    async def close(self) -> None:
        pass


class ProviderServicer(ContractServicer):
    def __init__(self, backend, models: dict[str, str], problem: str = "") -> None:
        super().__init__(backend)
        self._models = models  # capability → model id
        self._problem = problem

    async def DescribeImage(self, request, context):
        max_tokens = request.max_tokens if request.HasField("max_tokens") else None
        text, usage = await self.backend.describe_image(
            request.model, request.image, request.mime_type, request.prompt or DEFAULT_PROMPT, max_tokens
        )
        return pb.DescribeImageResponse(description=text, usage=usage_proto(usage), model=request.model)

    def _unsupported(self, request, capability: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"model {request.model!r} does not support {capability} through this provider adapter",
            reason="CAPABILITY_NOT_SUPPORTED",
            model=request.model,
            capability=capability,
        )

    # Not offered by the adapters yet: a clear refusal, not gRPC's UNIMPLEMENTED (which
    # says the route is broken).
    async def Transcribe(self, request, context):
        if not hasattr(self.backend, "transcribe"):
            raise self._unsupported(request, "transcription")
        params = transcription_params_from(request)
        transcript = await self.backend.transcribe(request.model, request.audio, request.mime_type, params)
        return transcript_proto(transcript, request.model)

    async def StreamTranscribe(self, request, context):
        """The providers' transcripts arrive whole: one piece with every segment, then
        the usage (a stream's last piece carries it, as the inference server's does)."""
        transcript = await self.Transcribe(request, context)
        usage = pb.TranscribeResponse(model=request.model, usage=transcript.usage, language=transcript.language,
                                      duration_seconds=transcript.duration_seconds)  # fmt: skip
        transcript.ClearField("usage")
        yield transcript
        yield usage

    async def Synthesize(self, request, context):
        if not hasattr(self.backend, "speak"):
            raise self._unsupported(request, "speech-synthesis")
        async for chunk in self.backend.speak(request.model, request.input, speech_params_from(request)):
            yield speech_proto(chunk, request.model)

    async def ExtractText(self, request, context):
        raise self._unsupported(request, "ocr")

    async def ClassifyImage(self, request, context):
        raise self._unsupported(request, "image-classification")

    def _listing(self) -> list[types.Model]:
        by_model: dict[str, list[int]] = {}
        for capability, model_id in self._models.items():
            by_model.setdefault(model_id, []).extend(CAPABILITIES[capability])
        state = types.MODEL_STATE_FAILED if self._problem else types.MODEL_STATE_READY
        return [
            types.Model(
                name=f"models/{model_id}",
                model_id=model_id,
                capabilities=sorted(set(capabilities)),
                state=state,
                error=self._problem,
            )
            for model_id, capabilities in sorted(by_model.items())
        ]

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=self._listing())

    async def Warmup(self, request, context):
        return pb.WarmupResponse(models=self._listing())
