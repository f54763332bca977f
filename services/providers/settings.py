"""Provider adapter settings, from the environment. One process adapts one provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from services.runtime.settings import ServiceSettings


class ProviderSettings(ServiceSettings):
    provider: Literal["openai", "gemini"] = Field(description="Which provider this process adapts.")
    request_timeout_seconds: float = Field(60.0, gt=0, description="Per attempt, when the caller set no deadline.")
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts for retryable failures (429, 5xx, timeouts).")
    max_retry_wait_seconds: float = Field(20.0, ge=0, description="Longest wait before a retry, Retry-After included.")

    openai_api_key: SecretStr | None = Field(None, description="Without it the adapter reports NOT_SERVING.")
    openai_base_url: str | None = Field(None, description="Any OpenAI-compatible endpoint; OpenAI's when unset.")
    openai_text_model: str = Field("gpt-4o-mini", description="Text and chat, when a request names no model.")
    openai_vision_model: str = Field("gpt-4o-mini", description="Image description.")
    openai_embedding_model: str = Field("text-embedding-3-small", description="Embeddings.")
    openai_transcription_model: str = Field("whisper-1", description="Speech to text.")
    openai_speech_model: str = Field("tts-1", description="Text to speech.")
    openai_speech_voice: str = Field("alloy", description="The voice, when a speech request names none.")

    gemini_api_key: SecretStr | None = Field(None, description="Without it the adapter reports NOT_SERVING.")
    gemini_base_url: str | None = Field(None, description="Override of Google's endpoint.")
    gemini_text_model: str = Field("gemini-2.0-flash", description="Text and chat, when a request names no model.")
    gemini_vision_model: str = Field("gemini-2.0-flash", description="Image description.")
    gemini_embedding_model: str = Field("text-embedding-004", description="Embeddings.")
    gemini_transcription_model: str = Field("gemini-2.5-flash", description="Speech to text (asked of the model).")
    gemini_speech_model: str = Field("gemini-2.5-flash-preview-tts", description="Text to speech.")
    gemini_speech_voice: str = Field("Kore", description="The voice, when a speech request names none.")

    def api_key(self) -> SecretStr | None:
        """The provider's key; an empty one (`OPENAI_API_KEY=` in compose) counts as none."""
        key = self.openai_api_key if self.provider == "openai" else self.gemini_api_key
        return key if key is not None and key.get_secret_value() else None

    def default_models(self) -> dict[str, str]:
        """Task → model, for requests that name none and for ListModels."""
        prefix = self.provider
        models = {
            "text": getattr(self, f"{prefix}_text_model"),
            "vision": getattr(self, f"{prefix}_vision_model"),
            "embedding": getattr(self, f"{prefix}_embedding_model"),
        }
        models |= {
            "transcription": getattr(self, f"{prefix}_transcription_model"),
            "speech": getattr(self, f"{prefix}_speech_model"),
        }
        return models
