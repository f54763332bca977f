"""The official OpenAI Python SDK, unchanged, against the front door."""

from __future__ import annotations

import time

import httpx
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
    with pytest.raises(openai.BadRequestError, match="n") as many:
        client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, n=17)
    assert many.value.param == "n"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, max_tokens=100000)


def test_several_choices_are_decoded_side_by_side(client):
    reply = client.chat.completions.create(
        model="gemma-3-270m", messages=MESSAGES, max_tokens=8, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in reply.choices] == [0, 1] and all(c.message.content for c in reply.choices)
    assert 2 <= reply.usage.completion_tokens <= 16
    stream = client.chat.completions.create(
        model="gemma-3-270m", messages=MESSAGES, max_tokens=8, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1} and chunks[-1].usage.completion_tokens >= 2


def test_a_list_of_prompts_gets_a_choice_per_prompt_in_order(client):
    prompts = ["The capital of France is", "One, two, three,"]
    reply = client.completions.create(model="gemma-3-270m", prompt=prompts, max_tokens=4, n=2, echo=True)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    # Choice i continues prompt i // n, as OpenAI orders them.
    assert [c.text.startswith(prompts[c.index // 2]) for c in reply.choices] == [True] * 4


# Errors on the OpenAI paths are OpenAI's `{"error": {"message", "type", "param", "code"}}`
# (services.runtime.openai_errors), whoever answers; the native REST API keeps
# google.rpc.Status JSON.


def test_envoys_own_replies_on_the_openai_paths_are_openai_shaped(client, base_url):
    too_big = "a" * (33 * 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as error:
        client.embeddings.create(model="all-minilm-l6-v2", input=too_big)
    assert error.value.status_code == 413
    assert error.value.type == "invalid_request_error" and error.value.code == "request_too_large"
    assert error.value.message == "Error code: 413 - the request body is larger than the 32 MiB this mesh accepts"
    # A path the SDK knows with a verb this API does not serve.
    wrong = httpx.get(f"{base_url}/v1/chat/completions", timeout=30)
    assert wrong.status_code == 404 and wrong.headers["content-type"] == "application/json"
    assert wrong.json() == {
        "error": {
            "message": "Invalid URL (GET /v1/chat/completions)",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }
    # The native REST API is answered as before.
    native = httpx.post(f"{base_url}/v1/embed", content=too_big, timeout=60)
    assert native.status_code == 413 and native.text == "Payload Too Large"
    assert httpx.get(f"{base_url}/v1/generate-text", timeout=30).text.startswith("Could not resolve")


def test_the_routers_errors_on_the_openai_paths_are_openai_shaped(client):
    """The servicer answers an OK call with the error body and x-infermesh-http-status,
    which Envoy's Lua filter on these routes makes the response's status."""
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert error.value.type == "invalid_request_error" and error.value.code == "model_not_found"
    assert error.value.param == "model" and "no-such-model" in error.value.body["message"]
    assert error.value.message == f"Error code: 404 - {error.value.body['message']}"
    with pytest.raises(openai.NotFoundError) as streamed:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert streamed.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, extra_body={"bogus": 1})
    assert bad.value.type == "invalid_request_error" and bad.value.param == "bogus"
    assert bad.value.code == "unknown_parameter"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"


def test_the_native_rest_api_keeps_google_rpc_status_errors(base_url):
    reply = httpx.post(
        f"{base_url}/v1/generate-text",
        json={"model": "no-such-model", "prompt": "x", "config": {"max_tokens": 2}},
        timeout=30,
    )
    assert reply.status_code == 404
    error = reply.json()
    assert error["code"] == 5 and "no-such-model" in error["message"]
    assert error["details"][0]["reason"] == "MODEL_NOT_FOUND"


def image_message(text: str) -> list[dict]:
    import base64
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    return [
        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


def test_an_image_in_a_chat_goes_to_a_model_that_describes_images(client):
    """gemini-test sees images (here: the Gemini adapter's stand-in, which says what it got)."""
    reply = client.chat.completions.create(model="gemini-test", messages=image_message("What is it?"), max_tokens=16)
    assert (
        reply.choices[0].message.content.startswith("an image of") and "image/png" in reply.choices[0].message.content
    )
    streamed = client.chat.completions.create(
        model="gemini-test", messages=image_message("What is it?"), max_tokens=16, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content


def test_an_image_for_a_text_model_or_with_what_description_cannot_do_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="image-description"):
        client.chat.completions.create(model="gemma-3-270m", messages=image_message("What is it?"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gemini-test", messages=image_message("What is it?"), temperature=0.5)
    assert caught.value.param == "temperature"
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    with pytest.raises(openai.BadRequestError, match="data: URLs"):
        client.chat.completions.create(model="gemini-test", messages=remote)


def test_an_openai_endpoint_this_mesh_does_not_serve_is_openais_invalid_url(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gemma-3-270m", input="Hello")
    assert caught.value.body["message"] == "Invalid URL (POST /v1/responses)"
    assert caught.value.code == "unknown_url"
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        client.images.generate(model="gemma-3-270m", prompt="a cat")
