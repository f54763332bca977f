"""No field a caller sends is silently dropped: every parameter of the installed OpenAI
SDK's request types is honoured (its behaviour is tested in this folder), accepted as a
hint that cannot change an answer, or refused with a 400 naming it. A parameter a new
SDK adds is in none of the tables below, and the first test fails until someone decides
what the mesh does with it."""

from __future__ import annotations

import typing

import openai
import pytest
from openai.types import completion_create_params, embedding_create_params
from openai.types.audio import transcription_create_params
from openai.types.chat import completion_create_params as chat_create_params

from openai_conformance import BASE_MODEL, EMBEDDING_MODEL, sdk_client
from services.router.openai_schema import HINTS, REFUSED, REFUSED_TRANSCRIPTION

# Honoured, each with tests of its effect (test_sdk_*.py, test_langchain.py, ...,
# tests/integration/test_structured_outputs.py).
HONOURED = {
    "chat": {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
        "n", "stream", "stream_options", "response_format", "tools", "tool_choice", "parallel_tool_calls",
        "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    },
    "completions": {
        "model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
        "echo", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    },
    "embeddings": {"model", "input", "encoding_format", "dimensions"},
    # tests/e2e/test_transcription.py, tests/unit/test_transcription_form.py
    "transcriptions": {
        "model", "file", "language", "prompt", "response_format", "temperature", "timestamp_granularities", "stream",
    },
}  # fmt: skip
PARAMS = {
    "chat": chat_create_params.CompletionCreateParamsBase,
    "completions": completion_create_params.CompletionCreateParamsBase,
    "embeddings": embedding_create_params.EmbeddingCreateParams,
    "transcriptions": transcription_create_params.TranscriptionCreateParamsBase,
}
# A value for each refused parameter that asks for something the mesh cannot do.
REFUSED_VALUES = {
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "prediction": {"type": "content", "content": "Paris"},
    "reasoning_effort": "low",
    "verbosity": "low",
    "web_search_options": {},
    "moderation": {"model": "omni-moderation-latest"},
    "service_tier": "flex",
    "store": True,
    "metadata": {"purpose": "test"},
    "suffix": " in France.",
    "best_of": 3,
}
MESSAGES = [{"role": "user", "content": "Name a French city."}]


def sdk_fields(kind: str) -> set[str]:
    fields = set(typing.get_type_hints(PARAMS[kind]))
    return fields | ({"stream"} if kind != "embeddings" else set())


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_every_sdk_parameter_is_honoured_accepted_as_a_hint_or_refused(kind):
    refused = REFUSED_TRANSCRIPTION if kind == "transcriptions" else REFUSED
    undecided = sdk_fields(kind) - HONOURED[kind] - HINTS - set(refused)
    assert not undecided, f"the installed SDK sends {sorted(undecided)}: honour them, or refuse them by name"


@pytest.fixture(scope="module")
def client(base_url):
    return sdk_client(base_url)


def refused_cases() -> list[tuple[str, str]]:
    return [(kind, name) for kind in ("chat", "completions") for name in sorted(sdk_fields(kind) & set(REFUSED_VALUES))]


@pytest.mark.parametrize(("kind", "name"), refused_cases())
@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_parameter_is_a_400_naming_it(client, kind, name, stream):
    value = {name: REFUSED_VALUES[name]}
    with pytest.raises(openai.BadRequestError) as caught:
        if kind == "chat":
            client.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, max_tokens=2, stream=stream, **value)
        else:
            client.completions.create(model=BASE_MODEL, prompt="Paris is", max_tokens=2, stream=stream, **value)
    assert caught.value.param == name and caught.value.code == "unsupported_parameter"
    assert name in caught.value.message


# A value for each refused transcription parameter that asks for something the mesh cannot do.
REFUSED_TRANSCRIPTION_VALUES = {
    "include": ["logprobs"],
    "chunking_strategy": "auto",
    "known_speaker_names": ["agent"],
    "known_speaker_references": ["data:audio/wav;base64,AAAA"],
    "keywords": ["infermesh"],
    "languages": ["en", "fr"],
}


@pytest.mark.parametrize("name", sorted(REFUSED_TRANSCRIPTION))
def test_a_refused_transcription_parameter_is_a_400_naming_it(client, name):
    """Refused before any audio is decoded: the file need not even be sound."""
    value = {name: REFUSED_TRANSCRIPTION_VALUES[name]}
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-base", file=("a.wav", b"RIFF", "audio/wav"), **value)
    assert caught.value.param == name and caught.value.code == "unsupported_parameter"


def test_a_parameter_openai_does_not_define_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=BASE_MODEL, messages=MESSAGES, max_tokens=2, extra_body={"guided_json": {"type": "object"}}
        )
    assert caught.value.param == "guided_json" and caught.value.code == "unknown_parameter"


def test_hints_and_no_op_values_are_accepted(client):
    reply = client.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,
        max_tokens=2,
        user="end-user-42",
        safety_identifier="end-user-42",
        prompt_cache_key="french-cities",
        store=False,
        service_tier="auto",
        modalities=["text"],
    )
    assert reply.choices[0].message.content is not None
    vectors = client.embeddings.create(model=EMBEDDING_MODEL, input="hello", user="end-user-42")
    assert len(vectors.data[0].embedding) == 384
