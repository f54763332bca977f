"""Registry settings, from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from services.runtime.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    registry_database_url: str = Field(
        "",
        description="Database URL: postgresql://user:password@host/db for PostgreSQL; empty means SQLite in "
        "DATA_DIR/registry.db.",
    )
    data_dir: Path = Field(Path(".data"), description="Where the SQLite database lives.")
    artifact_dir: Path | None = Field(None, description="Where imported artifacts go; default DATA_DIR/artifacts.")
    seed_defaults: bool = Field(True, description="Register the mesh's default models at start (idempotent).")
    watch_poll_seconds: float = Field(
        1.0, gt=0, description="How often a watch looks for changes made by other registry replicas."
    )
    # Hosted providers: their models are registered when a key is configured (the registry
    # only checks that a key is there; it never stores or logs it).
    openai_api_key: SecretStr | None = Field(None, description="Registers OpenAI's models when set.")
    openai_text_model: str = Field("gpt-4o-mini", description="OpenAI model for text and chat.")
    openai_embedding_model: str = Field("text-embedding-3-small", description="OpenAI embedding model.")
    openai_transcription_model: str = Field("whisper-1", description="OpenAI speech-to-text model.")
    openai_speech_model: str = Field("tts-1", description="OpenAI text-to-speech model.")
    gemini_api_key: SecretStr | None = Field(None, description="Registers Gemini's models when set.")
    gemini_text_model: str = Field("gemini-2.0-flash", description="Gemini model for text and chat.")
    gemini_embedding_model: str = Field("text-embedding-004", description="Gemini embedding model.")
    gemini_transcription_model: str = Field("gemini-2.5-flash", description="Gemini model asked for transcripts.")
    gemini_speech_model: str = Field("gemini-2.5-flash-preview-tts", description="Gemini text-to-speech model.")
