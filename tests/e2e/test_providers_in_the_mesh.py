"""Hosted providers in the mesh (issue 5's "done"): with the adapters registered, the
router answers with OpenAI, Gemini or a local model by changing only the model id, and
falls back between them. No internet here: the OpenAI adapter's server is this mesh's
own front door (a real OpenAI-compatible server), Gemini's a stand-in speaking its
documented wire format (see conftest.gemini_stand_in)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from services.backend.audio import decode
from support.meshes import register_model
from support.metrics import metric
from support.polling import eventually
from support.provider_stand_ins import gemini_error
from support.speech import spoken

GEMMA = "gemma-3-270m"
# These tests count work done by backends: they bypass the router's response cache.
NO_CACHE = {"cache-control": "no-cache"}
OPENAI_CHAT = "/infermesh.openai.v1.OpenAIService/CreateChatCompletion"


def register(base_url: str, model_id: str, provider: str, backend_model: str, fallbacks=()) -> None:
    register_model(base_url, model_id, provider, backend_model, [f.removeprefix("models/") for f in fallbacks])


def generate(base_url: str, model: str, prompt: str = "alpha beta gamma delta", attempts: float = 30) -> dict:
    """Generate, waiting (a little) for the router and Envoy to see new models and adapters."""
    body = {"model": model, "prompt": prompt, "config": {"max_tokens": 6}}
    reply = eventually(
        lambda: httpx.post(f"{base_url}/v1/generate-text", headers=NO_CACHE, json=body, timeout=120),
        until=lambda reply: reply.status_code == 200,
        timeout=attempts,
        interval=0.3,
    )
    return reply.json()


def test_one_api_for_local_openai_and_gemini_models_by_model_id(base_url, mesh, gemini_stand_in):
    router = mesh.settings.router_metrics_port
    register(base_url, "remote-gemma", "openai", GEMMA)

    local = generate(base_url, GEMMA)
    assert local["model"] == GEMMA and local["text"]

    through_openai = metric(router, "infermesh_grpc_requests_total", method=OPENAI_CHAT)
    remote = generate(base_url, "remote-gemma")
    assert remote["model"] == "remote-gemma" and remote["text"] and remote["usage"]["output_tokens"] > 0
    # The adapter called the OpenAI-compatible endpoint (here: this mesh's own).
    assert metric(router, "infermesh_grpc_requests_total", method=OPENAI_CHAT) > through_openai

    seen = len(gemini_stand_in.seen)
    gemini = generate(base_url, "gemini-test", prompt="alpha beta gamma delta")
    assert gemini["model"] == "gemini-test" and gemini["text"].split() == ["alpha", "beta", "gamma", "delta"]
    assert gemini["usage"] == {"input_tokens": 4, "output_tokens": 4, "total_tokens": 8}
    assert len(gemini_stand_in.seen) > seen


def test_a_failing_provider_falls_back_to_another_provider(base_url, mesh, gemini_stand_in):
    router = mesh.settings.router_metrics_port
    register(base_url, "remote-gemma-2", "openai", GEMMA)
    register(base_url, "flaky-gemini", "gemini", "gemini-test", fallbacks=["models/remote-gemma-2"])
    generate(base_url, "flaky-gemini")  # known to the router, answered by Gemini
    before = metric(router, "infermesh_router_fallbacks_total", model="flaky-gemini", fallback="remote-gemma-2")
    # Gemini is down for longer than the adapter's retries last.
    gemini_stand_in.script.extend([gemini_error(503, "UNAVAILABLE", "overloaded")] * 3)
    seen = len(gemini_stand_in.seen)
    answer = generate(base_url, "flaky-gemini", attempts=0)
    assert answer["model"] == "remote-gemma-2" and answer["text"]
    assert (
        metric(router, "infermesh_router_fallbacks_total", model="flaky-gemini", fallback="remote-gemma-2")
        == before + 1
    )
    # The adapter tried three times (its retries), and nobody retried on top of it.
    assert len(gemini_stand_in.seen) - seen == 3 and not gemini_stand_in.script


def test_a_provider_that_keeps_failing_is_avoided_then_tried_again(base_url, mesh, gemini_stand_in):
    register(base_url, "cooling-gemini", "gemini", "gemini-test", fallbacks=[f"models/{GEMMA}"])
    generate(base_url, "cooling-gemini")  # known to the router, answered by Gemini
    gemini_stand_in.script.extend([gemini_error(503, "UNAVAILABLE", "down")] * 9)
    for _ in range(3):  # three failed requests (three attempts each) open the circuit
        assert generate(base_url, "cooling-gemini", attempts=0)["model"] == GEMMA
    assert not gemini_stand_in.script
    seen = len(gemini_stand_in.seen)
    avoided = httpx.post(
        f"{base_url}/v1/generate-text",
        headers=NO_CACHE,
        json={"model": "cooling-gemini", "prompt": "a b", "config": {"max_tokens": 4}},
        timeout=60,
    )
    assert avoided.json()["model"] == GEMMA and avoided.headers["x-infermesh-fallback"] == "true"
    assert len(gemini_stand_in.seen) == seen  # Gemini was not even asked
    time.sleep(3.2)  # the cooldown ends: one probe goes through, succeeds, and closes the circuit
    assert generate(base_url, "cooling-gemini", attempts=0)["model"] == "cooling-gemini"
    assert len(gemini_stand_in.seen) == seen + 1


def test_gemini_transcribes_and_speaks_through_the_openai_sdk(base_url, mesh, gemini_stand_in):
    """The registry seeds Gemini's transcription and speech models with its key; the SDK's
    audio calls reach them by model id (the stand-in answers what it was sent)."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    audio = spoken()
    router = mesh.settings.router_metrics_port
    seconds_before = metric(router, "infermesh_router_audio_seconds_total", model="gemini-transcribe-test")
    transcript = eventually(
        lambda: client.audio.transcriptions.create(model="gemini-transcribe-test", file=("a.wav", audio, "audio/wav")),
        timeout=30,
        interval=0.5,
        what="Gemini's transcription model routable",
        ignoring=(openai.NotFoundError, openai.InternalServerError, openai.APIStatusError),
    )
    assert transcript.text == f"a recording of {len(audio)} bytes"
    metered = metric(router, "infermesh_router_audio_seconds_total", model="gemini-transcribe-test") - seconds_before
    assert 2.0 < metered < 4.0  # the audio's length, metered like a local model's
    speech = client.audio.speech.create(
        model="gemini-tts-test", voice="Puck", input="one two three four", response_format="wav"
    )
    assert speech.response.headers["content-type"] == "audio/wav"
    assert abs(decode(speech.content, "audio/wav", max_seconds=60).seconds - 1.0) < 0.05
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(model="gemini-tts-test", voice="Puck", input="x", speed=1.5)
    assert refused.value.param == "speed"
