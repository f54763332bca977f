"""Fixtures every tier may use; what tests share besides fixtures is in tests/support/.

`mesh` is one real mesh (Envoy, the gateway, router, registry, vector service, inference
server with real models, both provider adapters) started by the same launcher `make run`
uses, once per session, for every test that does not need settings of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from launcher.mesh import Mesh
from support.meshes import mesh_running, mesh_settings
from support.provider_stand_ins import StandIn, gemini_default


@pytest.fixture(scope="session")
def gemini_stand_in() -> Iterator[StandIn]:
    """The Gemini adapter's server for the mesh's tests (no internet here): a stand-in
    speaking Gemini's documented wire format (support.provider_stand_ins)."""
    with StandIn(gemini_default).running() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, gemini_stand_in: StandIn) -> Iterator[Mesh]:
    # A registry of its own, so test runs never see each other's (or `make run`'s) changes.
    registry = tmp_path_factory.mktemp("registry")
    settings = mesh_settings(registry_database_url=f"sqlite:///{registry / 'registry.db'}")
    env = {
        "ARTIFACT_DIR": str(registry / "artifacts"),
        # The OpenAI adapter's OpenAI-compatible server is this mesh's own front door.
        "OPENAI_API_KEY": "sk-test-mesh-key",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{settings.front_door_port}/v1",
        "OPENAI_TEXT_MODEL": "gemma-3-270m",
        "OPENAI_VISION_MODEL": "gemma-3-270m",
        "OPENAI_EMBEDDING_MODEL": "all-minilm-l6-v2",
        "OPENAI_TRANSCRIPTION_MODEL": "whisper-base",
        "OPENAI_SPEECH_MODEL": "piper-en-us-joe",
        "OPENAI_SPEECH_VOICE": "joe",
        "GEMINI_API_KEY": "AIza-test-mesh-key-0000",
        "GEMINI_BASE_URL": gemini_stand_in.url,
        "GEMINI_TEXT_MODEL": "gemini-test",
        "GEMINI_VISION_MODEL": "gemini-test",
        "GEMINI_EMBEDDING_MODEL": "gemini-embedding-test",
        "GEMINI_TRANSCRIPTION_MODEL": "gemini-transcribe-test",
        "GEMINI_SPEECH_MODEL": "gemini-tts-test",
        # The router avoids a failing backend for a short while in tests.
        "COOLDOWN_SECONDS": "3",
    }
    with mesh_running(settings, tmp_path_factory.mktemp("mesh-logs"), env) as running:
        yield running


@pytest.fixture(scope="session")
def front_door(mesh: Mesh) -> str:
    return f"127.0.0.1:{mesh.settings.front_door_port}"


@pytest.fixture(scope="session")
def base_url(front_door: str) -> str:
    return f"http://{front_door}"
