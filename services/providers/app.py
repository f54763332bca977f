"""A provider adapter as an Application of the runtime kit: one process per provider,
registered, health-checked and routed like an inference server."""

from __future__ import annotations

import logging

from grpc_health.v1._async import HealthServicer

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.providers.servicer import ProviderServicer, Unconfigured
from services.providers.settings import ProviderSettings
from services.runtime.server import Application, Registration, mark_serving

SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
log = logging.getLogger(__name__)


def make_backend(settings: ProviderSettings):
    if settings.provider == "openai":
        from services.providers.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    from services.providers.gemini_backend import GeminiBackend

    return GeminiBackend(settings)


class ProviderApp(Application):
    kind = "provider"

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = f"provider-{settings.provider}"
        self.problem = "" if settings.api_key() else f"{settings.provider.upper()}_API_KEY is not set"
        self.backend = Unconfigured(self.problem) if self.problem else make_backend(settings)

    def registrations(self) -> list[Registration]:
        servicer = ProviderServicer(self.backend, self.settings.default_models(), self.problem)
        return [Registration(SERVICE, pb_grpc.add_InferenceServiceServicer_to_server, servicer)]

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The tasks it has a model for (none without a key)."""
        tasks = {
            "text": ("text-generation", "chat"),
            "vision": ("image-description",),
            "embedding": ("embedding",),
            "transcription": ("transcription",),
            "speech": ("speech-synthesis",),
        }
        return () if self.problem else tuple(c for task in self.settings.default_models() for c in tasks[task])

    def ready_models(self) -> tuple[str, ...]:
        """The provider's models, once it has a key (the catalog's view of readiness)."""
        return () if self.problem else tuple(dict.fromkeys(self.settings.default_models().values()))

    async def start(self, health: HealthServicer) -> None:
        if self.problem:
            # Up but NOT_SERVING: Envoy and the router route around it, and ListModels says why.
            log.warning("provider not configured; reporting NOT_SERVING", extra={"reason": self.problem})
            return
        await mark_serving(health, [SERVICE])

    async def close(self) -> None:
        await self.backend.close()
