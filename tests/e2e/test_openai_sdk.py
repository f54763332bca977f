"""The official OpenAI Python SDK, unchanged, against the front door."""

from __future__ import annotations

import time

import numpy as np
import openai
import pytest


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion(client):
    reply = client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, max_tokens=16)
    assert reply.object == "chat.completion"
    assert reply.model == "gemma-3-270m"
    assert isinstance(reply.created, int) and abs(reply.created - time.time()) < 300
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_completion_stream_matches_the_unary_answer(client):
    unary = client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, max_tokens=16)
    stream = client.chat.completions.create(
        model="gemma-3-270m", messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)  # the SDK stops at `data: [DONE]`
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(content) == unary.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [unary.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_legacy_completion_with_and_without_stream(client):
    unary = client.completions.create(model="gemma-3-270m", prompt="The capital of France is", max_tokens=8)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="gemma-3-270m", prompt="The capital of France is", max_tokens=8, stream=True
        )
    )
    assert unary.choices[0].text and streamed == unary.choices[0].text


def test_embeddings_default_base64_and_float_agree(client):
    default = client.embeddings.create(model="all-minilm-l6-v2", input=["hello world", "goodbye"])
    as_float = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 384
    assert np.allclose(default.data[0].embedding, as_float.data[0].embedding, atol=1e-6)
    assert default.usage.prompt_tokens > 0


def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list()}
    assert {"gemma-3-270m", "all-minilm-l6-v2"} <= ids
    assert client.models.retrieve("gemma-3-270m").id == "gemma-3-270m"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_have_the_right_status(client):
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    with pytest.raises(openai.BadRequestError, match="n"):
        client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, max_tokens=100000)
